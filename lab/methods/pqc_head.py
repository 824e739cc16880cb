"""The hybrid PQC classification head on few-shot sentence embeddings (arXiv 2504.08732).

Few-shot data → sentence embeddings → quantum heads (:class:`qcore.models.pqc_head.PQCHead`),
early-stopped on a validation hold-out, beside logistic regression, a linear SVM and an MLP of
about the head's size on the same embeddings; then a noise ablation of the trained heads.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from qiskit import QuantumCircuit

from qcore.models.pqc_head import PQCHead
from qcore.models.pqc_head_config import PQCHeadConfig
from qcore.training import evaluate, train

from .. import setfit_body
from ..artifacts import hash_json
from ..data import DataRequest, Dataset, hold_out
from ..embedded import EmbeddedSplit
from ..params.head import HeadParams
from ..params.noise import NoiseSetting
from ..results import TrainingResult, job_record
from ..search_space import Dimension, Float, Int
from ..store import cached_result, feature_ablation, model_predictions, store_result
from ..teacher import TeacherSpec
from .base import Budget, ClassicalStandin, FeatureMethod, Hooks, ModelJob, exact_training_seconds
from .classical import curves, linear_baseline, mlp_baseline


@dataclass(frozen=True)
class HeadJob(ModelJob):
    """One head: its full model config (which holds its seed), the training settings, and the
    simulator's options."""

    model: PQCHeadConfig
    epochs: int = 30
    patience: int = 6
    batch_size: int = 32
    lr: float = 0.02
    circuit_lr: float | None = None
    weight_decay: float = 0.0
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        m = self.model
        return f"head-q{m.qubits}-e{m.encoders}-l{m.layers}-r{m.reuploads}-m{m.measured}-s{m.seed}"


class PQCHeadMethod(FeatureMethod[HeadParams, HeadJob]):
    id = "pqc-head"
    label = "PQC head"
    params = HeadParams
    model_tag = "pqc_head"
    shard_field = "shard_size"
    data_fields = (
        "dataset",
        "text_column",
        "label_column",
        "per_label",
        "val_fraction",
        "test_size",
        "split_seed",
        "encoder",
        "body",
        "body_iterations",
        "body_epochs",
        "body_batch_size",
        "body_lr",
        "body_seed",
    )

    search_space: ClassVar[dict[str, Dimension]] = {
        "lr": Float(3e-3, 0.1, log=True),
        "circuit_lr": Float(3e-3, 0.3, log=True),
        "layers": Int(1, 3),
        "reuploads": Int(1, 3),
    }

    def data_request(self, params: HeadParams) -> DataRequest:
        return params.data_request()

    def teacher(self, params: HeadParams) -> TeacherSpec:
        return TeacherSpec(kind="probe", model=params.encoder, batch_size=params.encoder_batch_size)

    def check(self, params: HeadParams) -> None:
        """The data set and, for a SetFit body, the setfit package and a usable training set."""
        data = self.data_request(params).load()
        self.body_job(params, data)  # a SetFit body: the setfit package and a usable training set

    def body_job(self, params: HeadParams, data: Dataset) -> setfit_body.BodyJob | None:
        """``body='setfit'``: fine-tune the encoder on the training examples the heads train on,
        i.e. without the validation hold-out :meth:`split` carves (the same mask, chosen from the
        labels alone), so neither validation nor test texts reach the body."""
        keep = ~hold_out(np.asarray(data.train_labels), params.val_fraction, params.split_seed)
        return setfit_body.body_job(params, params.encoder, data, keep.tolist())

    def split(self, params: HeadParams, embedded: EmbeddedSplit) -> EmbeddedSplit:
        return embedded.with_validation(params.val_fraction, params.split_seed)

    def for_budget(self, budget: Budget, seeds: list[int]) -> list[HeadParams]:
        """The head on the comparison's own split (its validation hold-out carved from it by
        :meth:`split`); ``per_label`` keeps its default, since compare reads no few-shot draw."""
        return [
            HeadParams(
                dataset=budget.dataset,
                text_column=budget.text_column,
                label_column=budget.label_column,
                seeds=seeds,
                qubits=budget.head_qubits,
                encoders=budget.head_encoders,
                epochs=budget.epochs,
                batch_size=budget.batch_size,
                val_fraction=budget.val_fraction,
                split_seed=budget.split_seed,
                noise_shots=[],
                noise_depolarizing=[],
                noise_devices=[],
            )
        ]

    def jobs(self, params: HeadParams, data: EmbeddedSplit) -> list[HeadJob]:
        return [
            HeadJob(
                params.head_config(data, s),
                epochs=params.epochs,
                patience=params.patience,
                batch_size=params.batch_size,
                lr=params.lr,
                circuit_lr=params.circuit_lr,
                weight_decay=params.weight_decay,
            )
            for s in params.seeds
        ]

    def train(self, job: HeadJob, data: EmbeddedSplit, root: str, hooks: Hooks) -> TrainingResult:
        """Train one head with early stopping on validation accuracy; evaluate it on the test split."""
        key = hash_json({"data": data.key, "job": asdict(job), "kind": "pqc_head", "v": 2})
        if (cached := cached_result(root, key)) is not None:
            hooks.log(f"{job.name}: finished before, reusing {key[:12]}")
            return cached
        hooks.progress(0, "started")
        if data.validation is None:
            raise ValueError("a PQC head stops early: its split needs a validation hold-out (with_validation)")

        def progress(epoch: int, m: dict[str, float]) -> None:
            note = (
                f"epoch {epoch}/{job.epochs}: loss {m['loss']:.4f}, train acc {m['accuracy']:.3f}, "
                f"val acc {m['val_accuracy']:.3f}"
            )
            hooks.log(f"{job.name} {note}")
            hooks.progress(epoch, note)
            if hooks.report is not None:
                hooks.report(epoch, m["val_accuracy"])

        t0 = time.perf_counter()
        spread = {} if hooks.dask_client is None else {"client": hooks.dask_client}
        model = PQCHead(job.model, **job.backend_options, **spread)
        history = train(
            model,
            data.train_x,
            data.train_y,
            None,
            epochs=job.epochs,
            batch_size=job.batch_size,
            lr=job.lr,
            circuit_lr=job.circuit_lr,
            seed=job.seed,
            alpha=0.0,
            on_epoch=progress,
            val=data.validation,
            patience=job.patience,
            weight_decay=job.weight_decay,
        )
        seconds = time.perf_counter() - t0
        hooks.progress(job.epochs, f"done: {len(history)} epochs, best validation epoch {history[-1]['best_epoch']}")
        model = model.with_backend("exact") if job.model.backend != "exact" else model
        metrics = evaluate(model, data.test_x, data.test_y)
        result = TrainingResult(
            self.id,
            job.name,
            "PQC head",
            job.seed,
            {
                **metrics,
                "train_seconds": seconds,
                "val_accuracy": max(h["val_accuracy"] for h in history),
                "epochs_run": len(history),
                "best_epoch": history[-1]["best_epoch"],
            },
            model.parameter_counts(),
            curves(history),
            job_record(job),
            model_predictions(model, data.test_x),
            ablated_predictions=feature_ablation(model, data.train_x, data.test_x) if hooks.save_models else None,
        )
        stored = store_result(root, key, model, result, data)
        hooks.log(f"{job.name}: test accuracy {metrics['accuracy']:.4f} after {len(history)} epochs")
        return stored

    def cost(self, job: HeadJob, data: EmbeddedSplit) -> float:
        """The exact simulator's cost of the encoders' and module 2's circuits (a head always
        trains on it), for all ``epochs`` epochs: an early stop only makes it shorter."""
        return exact_training_seconds(
            _circuits(dataclasses.replace(job.model, seed=0)),
            epochs=job.epochs,
            batch_size=job.batch_size,
            train=len(data.train_y),
            val=0 if data.val_y is None else len(data.val_y),
            test=len(data.test_y),
        )

    def baselines(self, params: HeadParams, data: EmbeddedSplit, seed: int) -> list[TrainingResult]:
        """Logistic regression, a linear SVM and an MLP of about the head's size, on the same
        embeddings; the MLP trains like the head (Adam, early stopping on the same validation set)."""
        target = PQCHead(params.head_config(data)).parameter_counts()["total"]
        return [
            linear_baseline("head-logreg", data, seed, teacher=False),
            linear_baseline("head-svm", data, seed, teacher=False),
            mlp_baseline(
                "head-mlp",
                "MLP (size-matched)",
                data,
                seed,
                target_params=target,
                alpha=0.0,
                teacher=False,
                epochs=params.epochs,
                batch_size=params.batch_size,
                lr=params.lr,
                patience=params.patience,
            ),
        ]


@functools.lru_cache(maxsize=256)
def _circuits(config: PQCHeadConfig) -> tuple[QuantumCircuit, ...]:
    """The circuits a sample passes through (a study's seeds share them, hence the cache)."""
    if config.circuit == "classical":
        return (config.encoder_circuit().circuit,) * config.encoders
    return (config.encoder_circuit().circuit,) * config.encoders + (config.module2_circuit().circuit,)


# --- the noise ablation's table --------------------------------------------------------------------


def ablation_rows(
    settings: list[NoiseSetting],
    trained: list[TrainingResult],
    merged: dict[tuple[str, str], Any],
    finetuned: dict[str, list[int]],
    test_y: np.ndarray,
    samples: int,
    exact_accuracy: float,
) -> list[dict[str, Any]]:
    """One row per noise setting: accuracy (mean ± std over the trained heads) on the same
    ``samples`` test examples, beside their mean exact accuracy (:func:`exact_spread`), and
    after noisy fine-tuning."""
    rows = []
    for s in settings:
        cells = [merged[(s.label, r.name)] for r in trained]
        accs = [c["accuracy"] for c in cells]
        row = {
            "label": s.label,
            "kind": s.kind,
            "level": s.level,
            "samples": samples,
            "models": len(accs),
            "accuracy": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs)),
            "exact_accuracy": exact_accuracy,
            "agreement_with_exact": float(np.mean([c["agreement_with_exact"] for c in cells])),
            "seconds": float(sum(c["seconds"] for c in cells)),
        }
        if s.label in finetuned:
            row["finetuned_accuracy"] = float(np.mean(np.array(finetuned[s.label]) == test_y[:samples]))
        rows.append(row)
    return rows


def noise_markdown(rows: list[dict[str, Any]], devices: list[dict[str, Any]]) -> str:
    lines = [
        "Under noise (module 2 only; same test samples; mean ± std over the trained heads):",
        "",
        "| setting | samples | accuracy | exact accuracy | agreement with exact | after fine-tuning |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        tuned = f"{r['finetuned_accuracy']:.4f}" if "finetuned_accuracy" in r else "–"
        lines.append(
            f"| {r['label']} | {r['samples']} | {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} | "
            f"{r['exact_accuracy']:.4f} | {r['agreement_with_exact']:.4f} | {tuned} |"
        )
    if devices:
        lines += [
            "",
            "| device | transpiled depth | two-qubit gates | qubits used | logical depth | logical 2q gates |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {d['device']} | {d['depth']} | {d['two_qubit_gates']} | {d['qubits_used']} | "
            f"{d['logical_depth']} | {d['logical_two_qubit_gates']} |"
            for d in devices
        ]
    return "\n".join(lines)


def exact_spread(
    trained: list[TrainingResult], merged: dict[tuple[str, str], Any], first_label: str
) -> tuple[float, float]:
    """Mean and std of the heads' exact accuracy on the ablation's samples (the plot's reference)."""
    exact = [merged[(first_label, r.name)]["exact_accuracy_same_samples"] for r in trained]
    return float(np.mean(exact)), float(np.std(exact))


class PQCHeadClassical(ClassicalStandin, PQCHeadMethod):
    """The PQC head with a classical MLP of module 2's size in the circuit's place, trained and
    tuned the same way: what the circuit adds over a network as small (the ablation)."""

    id = "pqc-head-classical"
    label = "PQC head, classical stand-in for module 2"
