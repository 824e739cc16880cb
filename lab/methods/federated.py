"""LLM-QFL: federated quantum classifiers steered by an LLM controller (arXiv 2505.18656).

- :class:`FederatedParams`: the flow's parameters, and the run's parts they make (model spec,
  clients' optimiser, controller, LLM fine-tune settings);
- :func:`build_split`: one (data set, partition) — the server's own data, the clients'
  partitions, the PCA projection fitted on the server's data;
- :func:`llm_finetune`: a client's (or the server's) LoRA fine-tune, cached by content in the
  artifact store, so a re-run never repeats one;
- :func:`run_setting`: one federated run on one split, its rounds' client trainings sent to an
  executor the orchestration lends (:mod:`tasks.federated` sends them to the Dask workers);
- :func:`run_key`, :func:`load_run`, :func:`store_run`: finished runs stored by content, so a
  re-run with the same data and settings repeats no round;
- :func:`summarize`, :func:`accuracy_curves`, :func:`log_runs`: the results table, the plots and
  the MLflow record (per-round metrics with step = round);
- :func:`noisy_evaluation`: the final global model's circuit under shots and device noise.
- :class:`LLMQFL`, :class:`LLMQFLClassical`, :class:`FedLogreg`: the registry's view, a
  leaderboard row per run from its final global model, each with its search space and the
  tuning view its trials read.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import mlflow
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter
from mlflow.tracking import MlflowClient
from torch import nn

from qcore.federated.client import Client
from qcore.federated.client_models import ModelSpec, build_model, set_weights
from qcore.federated.features import Projection
from qcore.federated.llm import LLMSpec, finetune
from qcore.federated.partition import PartitionError, PartitionSpec
from qcore.federated.server import FederatedRun, RoundRecord, RunResult, fit_sequentially
from qcore.federated.strategy import make_strategy
from qcore.federated.vqc import VQCClassifier
from qcore.layer import QuantumLayer
from qcore.models.base import QuantumModel, save_module

from .. import tracking
from ..artifacts import atomic_write_bytes, hash_json, join_url, read_bytes
from ..data import DataError, DataRequest, Dataset, stratified_indices
from ..embedded import EmbeddedSplit
from ..noise import circuit_noise
from ..params.federated import FederatedParams
from ..params.noise import NoiseOptions, NoiseSetting
from ..results import TrainingResult
from ..search_space import Dimension, Float, Int
from ..store import feature_ablation, model_predictions
from ..teacher import ModelNotFoundError, model_fingerprint, resolve_model
from .base import Budget, ClassicalStandin, Hooks, Method

# --- the data of one setting ---------------------------------------------------------------------


def plan_split(
    labels: np.ndarray, partition: str, clients: int, server_fraction: float, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The server's own examples (a stratified, seeded share) and each client's partition of the
    rest, as indices into ``labels``. Needs only labels, so the flow's preflight runs it too."""
    labels = np.asarray(labels)
    n_server = max(1, round(len(labels) * server_fraction))
    server = stratified_indices(labels, n_server, np.random.default_rng([seed, 7]))
    pool = np.setdiff1d(np.arange(len(labels)), server)
    parts = PartitionSpec.parse(partition).split(labels[pool], clients, seed)
    return server, [pool[p] for p in parts]


@dataclass(frozen=True)
class FederatedSplit:
    """One (data set, partition) of a run: what every controller of it trains on."""

    dataset: str
    partition: str
    clients: list[Client]
    client_texts: list[list[str]]
    server: tuple[np.ndarray, np.ndarray]
    server_texts: list[str]
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    reference_accuracy: float  # centralised logistic regression on the full embeddings

    @property
    def name(self) -> str:
        return f"{self.dataset} {self.partition}"


def build_split(
    data: Dataset,
    embedded: EmbeddedSplit,
    partition: str,
    clients: int,
    model: ModelSpec,
    server_fraction: float,
    seed: int,
) -> FederatedSplit:
    """Split, fit the projection on the server's data, and hand every client its share."""
    server_idx, parts = plan_split(data.train_labels, partition, clients, server_fraction, seed)
    x, y = embedded.train_x, np.asarray(data.train_labels)
    project = Projection.fit(x[server_idx], model.in_features)
    features = project(x)
    test_y = np.asarray(data.test_labels)
    reference = float((embedded.test_teacher.argmax(-1) == test_y).mean())
    return FederatedSplit(
        dataset=data.name,
        partition=partition,
        clients=[Client(i, features[p], y[p], model) for i, p in enumerate(parts)],
        client_texts=[[data.train_texts[j] for j in p] for p in parts],
        server=(features[server_idx], y[server_idx]),
        server_texts=[data.train_texts[j] for j in server_idx],
        test=(project(embedded.test_x), test_y),
        num_classes=data.num_classes,
        reference_accuracy=reference,
    )


# --- language models -----------------------------------------------------------------------------


def llm_finetune(
    who: str,
    texts: list[str],
    labels: list[int],
    num_classes: int,
    model: str | None,
    spec: LLMSpec,
    root: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """LoRA-fine-tune the language model on one party's texts; cached under
    ``<root>/federated/llm/<key>.json`` by texts, labels, model weights and settings."""
    folder = resolve_model(model)
    key = hash_json(
        {
            "texts": texts,
            "labels": labels,
            "classes": num_classes,
            "model": model_fingerprint(folder),
            "spec": asdict(spec),
            "v": 1,
        }
    )
    url = join_url(root, "federated", "llm", f"{key}.json")
    cached = read_bytes(url)
    if cached is not None:
        return {**json.loads(cached), "cached": True}
    result = asdict(finetune(folder, texts, labels, num_classes, spec))
    atomic_write_bytes(url, json.dumps(result).encode())
    log(
        f"LLM of {who}: loss {result['loss']:.4f}, accuracy {result['accuracy']:.3f} on {result['examples']} "
        f"texts ({result['seconds']:.1f} s)"
    )
    return {**result, "cached": False}


# --- simulated client failures --------------------------------------------------------------------


class SimulatedFailure(RuntimeError):
    """A client failure injected on purpose (``fail_rate``), to exercise the drop path."""


def simulated_failures(seed: int, round_: int, clients: Sequence[int], rate: float) -> set[int]:
    """The clients that fail in this round under ``fail_rate``: seeded, so a run repeats exactly."""
    if rate <= 0:
        return set()
    rng = np.random.default_rng([seed, round_, 99])
    return {c for c, u in zip(clients, rng.random(len(clients)), strict=True) if u < rate}


# --- finished runs, stored by content ------------------------------------------------------------


def split_fingerprint(setting: FederatedSplit) -> str:
    """Hash of every array a run of ``setting`` reads: the clients', the server's and the test data."""
    digest = hashlib.sha256()
    for a in [a for c in setting.clients for a in (c.x, c.y)] + [*setting.server, *setting.test]:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def run_key(
    setting: FederatedSplit, spec: ModelSpec, controller: str, settings: dict[str, Any], llm_losses: dict[str, float]
) -> str:
    """What a run's result depends on: its data, model, controller, run settings (the flow's
    parameters less those the data already fixes) and the parties' LLM losses."""
    return hash_json(
        {
            "setting": split_fingerprint(setting),
            "model": asdict(spec),
            "controller": controller,
            "settings": settings,
            "llm": llm_losses,
            "v": 1,
        }
    )


def _run_url(root: str, key: str) -> str:
    return join_url(root, "federated", "runs", f"{key}.npz")


def load_run(root: str, key: str) -> RunResult | None:
    """The stored result of run ``key``, or ``None``."""
    blob = read_bytes(_run_url(root, key))
    if blob is None:
        return None
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        weights = {name.removeprefix("w/"): npz[name] for name in npz.files if name.startswith("w/")}
    return RunResult(
        meta["initial_accuracy"], meta["initial_loss"], [RoundRecord.from_dict(r) for r in meta["records"]], weights
    )


def store_run(root: str, key: str, result: RunResult) -> None:
    """Records and final weights in one file, written atomically: a reader sees all or nothing."""
    meta = {
        "initial_accuracy": result.initial_accuracy,
        "initial_loss": result.initial_loss,
        "records": [r.to_dict() for r in result.records],
    }
    buffer = io.BytesIO()
    weights: dict[str, Any] = {f"w/{k}": np.asarray(v) for k, v in result.weights.items()}
    np.savez(buffer, meta=np.array(json.dumps(meta)), **weights)
    atomic_write_bytes(_run_url(root, key), buffer.getvalue())


def real_failures(result: RunResult, clients: Sequence[int], seed: int, fail_rate: float) -> list[tuple[int, int]]:
    """(round, client) of every client dropped for a reason other than the seeded ``fail_rate``:
    a run with any is not stored, so a re-run trains it again instead of repeating the loss."""
    return [
        (r.round, c)
        for r in result.records
        for c in sorted(set(r.failed) - simulated_failures(seed, r.round, clients, fail_rate))
    ]


# --- one run -------------------------------------------------------------------------------------

# Parameters a run's result does not depend on beyond its split (data, split, partition and
# clients are in the split's fingerprint, the LLM settings in the parties' losses) or at all.
NOT_IN_RUN_KEY = {
    "dataset",
    "train_size",
    "test_size",
    "split_seed",
    "clients",
    "partition",
    "server_fraction",
    "controller",
    "baseline",
    "circuit",  # in the model spec
    "llm_model",
    "llm_steps",
    "llm_batch_size",
    "llm_max_length",
    "llm_lr",
    "llm_rank",
    "target_accuracy",
    "teacher_shard_size",
    "experiment",
    "dask_address",
    *NoiseOptions.model_fields,  # evaluated after the run, from its stored weights
}


@dataclass(frozen=True)
class RunJob:
    """One federated run: a controller (or a classical baseline, ``label`` "baseline-<model>")
    on one split, with the parties' LLM losses the controller compares against."""

    params: FederatedParams
    split: FederatedSplit
    label: str
    model: ModelSpec
    controller: str
    llm: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.split.dataset}-{self.split.partition}-{self.label}"

    @property
    def seed(self) -> int:
        return self.params.seed


def run_setting(job: RunJob, root: str, hooks: Hooks) -> RunOutput:
    """One federated run, each round's client trainings sent to ``hooks.fit`` (the Dask workers,
    through :func:`tasks.federated.federated_run`; without it, one after another here), each
    round in ``hooks.log`` and ``hooks.progress``.

    A finished run is stored under ``<root>/federated/runs/``; the same run again is read back
    instead of trained. Not stored: runs of a generative controller (its answers come from code
    and models the key cannot see) and runs that lost clients to real failures."""
    params, setting, llm = job.params, job.split, job.llm
    controller = params.controller_for(job.controller)
    losses = {who: v["loss"] for who, v in sorted(llm.items())}
    key = run_key(setting, job.model, job.controller, params.model_dump(exclude=NOT_IN_RUN_KEY), losses)
    storable = not job.controller.startswith("generative:")
    if storable and (stored := load_run(root, key)) is not None:
        hooks.log(
            f"{setting.name} {job.label}: {len(stored.records)} rounds reused from an earlier run "
            f"(final accuracy {stored.records[-1].accuracy:.4f})"
        )
        return RunOutput(setting, job.label, job.model, stored, cached=True)
    hooks.progress(0, "started")
    run = FederatedRun(
        clients=[replace(c, model=job.model) for c in setting.clients],
        model=job.model,
        strategy=make_strategy(params.strategy, proximal_mu=params.proximal_mu, server_lr=params.server_lr),
        controller=controller,
        server_data=setting.server,
        test_data=setting.test,
        settings=params.train_settings(job.model.quantum),
        local_steps=params.local_steps,
        llm_losses={c.id: llm[f"client{c.id}"]["loss"] for c in setting.clients if f"client{c.id}" in llm},
        server_llm_loss=llm["server"]["loss"] if "server" in llm else None,
        objective_unit=params.objective_unit,
        seed=params.seed,
    )
    result = run.run(params.rounds, fit=hooks.fit or fit_sequentially, on_round=round_reporter(job, hooks))
    if lost := real_failures(result, [c.id for c in setting.clients], params.seed, params.fail_rate):
        hooks.warn(
            f"{setting.name} {job.label}: not stored, {len(lost)} client trainings failed "
            f"(round, client: {lost}); a re-run trains it again"
        )
    elif storable:
        store_run(root, key, result)
    return RunOutput(setting, job.label, job.model, result)


def round_reporter(job: RunJob, hooks: Hooks) -> Callable[[RoundRecord], None]:
    """Each round in the log and as progress (``rounds`` in all, or stopped early)."""
    rounds = job.params.rounds

    def report(r: RoundRecord) -> None:
        dropped = f", dropped {r.failed}" if r.failed else ""
        server = "–" if r.server_loss is None else f"{r.server_loss:.3f}"
        hooks.log(
            f"{job.split.name} {job.label} round {r.round}/{rounds}: accuracy {r.accuracy:.4f}, "
            f"server loss {server}, aggregated {list(r.selected)}, next steps {r.next_steps}{dropped}"
            + (" — stop" if r.stop else "")
        )
        hooks.progress(
            rounds if r.stop else r.round,
            f"round {r.round}/{rounds}, accuracy {r.accuracy:.4f}" + (", stopped early" if r.stop else ""),
        )
        if hooks.report is not None:  # a tuning trial: its split's test is a training hold-out
            hooks.report(r.round, r.accuracy)

    return report


def parties(setting: FederatedSplit) -> list[tuple[str, list[str], np.ndarray]]:
    """Who fine-tunes an LLM in a split: every client on its texts, and the server on its own."""
    out = [(f"client{c.id}", texts, c.y) for c, texts in zip(setting.clients, setting.client_texts, strict=True)]
    return [*out, ("server", setting.server_texts, setting.server[1])]


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutput:
    """A finished run with what identifies it; ``cached`` when it was read from the store."""

    setting: FederatedSplit
    label: str  # controller name, or "baseline-<model>"
    model: ModelSpec
    result: RunResult
    cached: bool = False

    @property
    def quantum(self) -> bool:
        return self.model.quantum


def curves(out: RunOutput) -> dict[str, list[float]]:
    """Accuracy by round (round 0: the initial model) with cumulative compute."""
    records = out.result.records
    return {
        "round": [0] + [r.round for r in records],
        "accuracy": [out.result.initial_accuracy] + [r.accuracy for r in records],
        "circuit_evaluations": np.cumsum([0] + [r.circuit_evaluations for r in records]).tolist(),
        "client_seconds": np.cumsum([0.0] + [r.client_seconds for r in records]).tolist(),
    }


def target_for(outputs: Sequence[RunOutput], absolute: float | None, fraction: float = 0.95) -> float:
    """The accuracy a setting's runs race to: ``absolute`` when given, else ``fraction`` of the
    best accuracy any quantum run of the setting reached in any round."""
    if absolute is not None:
        return absolute
    best = max((max(curves(o)["accuracy"]) for o in outputs if o.quantum), default=math.nan)
    return fraction * best


def summarize(out: RunOutput, target: float) -> dict[str, Any]:
    """One row of the results table."""
    c = curves(out)
    records = out.result.records
    reach = next((i for i, a in enumerate(c["accuracy"]) if a >= target), None)
    idle = busy = discarded = 0.0
    for r in records:
        e = [v["circuit_evaluations"] for v in r.clients.values()]
        if e:
            idle += sum(max(e) - x for x in e)
            busy += len(e) * max(e)
        discarded += r.discarded_evaluations
    total = c["circuit_evaluations"][-1]
    return {
        "dataset": out.setting.dataset,
        "partition": out.setting.partition,
        "run": out.label,
        "model": out.model.kind,
        "rounds_run": len(records),
        "stopped_early": bool(records and records[-1].stop),
        "final_accuracy": c["accuracy"][-1],
        "best_accuracy": max(c["accuracy"]),
        "target": target,
        "mean_steps": float(np.mean([v["steps"] for r in records for v in r.clients.values()] or [0])),
        "rounds_to_target": reach,
        "circuit_evaluations_to_target": None if reach is None else c["circuit_evaluations"][reach],
        "client_seconds_to_target": None if reach is None else c["client_seconds"][reach],
        "circuit_evaluations": total,
        "client_seconds": c["client_seconds"][-1],
        "idle_fraction": idle / busy if busy else 0.0,
        "discarded_fraction": discarded / total if total else 0.0,
        "bytes_up": sum(r.bytes_up for r in records),
        "bytes_down": sum(r.bytes_down for r in records),
        "clients_failed": sum(k == "failed" for r in records for k in r.failed.values()),
        "clients_timed_out": sum(k == "timed out" for r in records for k in r.failed.values()),
        "fallback_rounds": sum(r.decision == "fallback" for r in records),
        "reference_accuracy": out.setting.reference_accuracy,
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results table for the terminal and the Prefect artifact."""
    head = (
        "| data | partition | run | final acc | best acc | rounds | target | rounds to target | "
        "circuit evals to target | client s to target | circuit evals | client s | steps / client-round | "
        "idle | discarded | failed / timed out |"
    )
    lines = [head, "|" + "---|" * 16]

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    for r in rows:
        stop = " (stopped)" if r["stopped_early"] else ""
        lines.append(
            f"| {r['dataset']} | {r['partition']} | {r['run']} | {r['final_accuracy']:.4f} | "
            f"{r['best_accuracy']:.4f} | "
            f"{r['rounds_run']}{stop} | {r['target']:.4f} | {num(r['rounds_to_target'], 'd')} | "
            f"{num(r['circuit_evaluations_to_target'], ',.0f')} | {num(r['client_seconds_to_target'], '.1f')} | "
            f"{r['circuit_evaluations']:,.0f} | {r['client_seconds']:.1f} | {r['mean_steps']:.1f} | "
            f"{r['idle_fraction']:.0%} | "
            f"{r['discarded_fraction']:.0%} | {r['clients_failed']} / {r['clients_timed_out']} |"
        )
    return "\n".join(lines)


def llm_markdown(llm: dict[str, dict[str, Any]]) -> str:
    """The LLM losses the controller compared against, per setting (nats)."""
    lines = []
    for name, parties in llm.items():
        clients = [v["loss"] for k, v in parties.items() if k != "server"]
        server = parties.get("server", {}).get("loss")
        span = f"{min(clients):.3f}–{max(clients):.3f}" if clients else "–"
        lines.append(f"- {name}: clients {span}, server {'–' if server is None else f'{server:.3f}'}")
    return "LLM losses after LoRA fine-tuning (nats):\n" + "\n".join(lines) if lines else ""


def accuracy_curves(outputs: Sequence[RunOutput], target: float) -> Figure:
    """Test accuracy against rounds, cumulative circuit evaluations (quantum runs) and cumulative
    client seconds, one line per run of one setting."""
    fig = Figure(figsize=(14, 3.8))  # no pyplot: nothing global to close, any backend
    axes = fig.subplots(1, 3)
    for out in outputs:
        c = curves(out)
        style = {"label": out.label, "marker": "o", "markersize": 3, "linestyle": "-" if out.quantum else "--"}
        axes[0].plot(c["round"], c["accuracy"], **style)
        if out.quantum:
            axes[1].plot(c["circuit_evaluations"], c["accuracy"], **style)
        axes[2].plot(c["client_seconds"], c["accuracy"], **style)
    labels = ("round", "cumulative circuit evaluations (quantum clients)", "cumulative client seconds")
    for ax, xlabel in zip(axes, labels, strict=False):
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set(xlabel=xlabel, ylabel="test accuracy")
    axes[1].xaxis.set_major_formatter(EngFormatter())  # 1.2M, not an offset that overlaps the label
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{outputs[0].setting.name}: accuracy (dotted: target {target:.3f})")
    fig.tight_layout()
    return fig


def _round_metrics(out: RunOutput) -> list[mlflow.entities.Metric]:
    """Every per-round number as an MLflow metric with step = round (round 0: the initial model)."""
    now = int(time.time() * 1000)
    c = curves(out)
    metrics = [
        mlflow.entities.Metric("test/accuracy", out.result.initial_accuracy, now, 0),
        mlflow.entities.Metric("test/loss", out.result.initial_loss, now, 0),
    ]
    for i, r in enumerate(out.result.records, start=1):
        values: dict[str, float] = {
            "test/accuracy": r.accuracy,
            "test/loss": r.test_loss,
            "selected_clients": len(r.selected),
            "failed_clients": sum(k == "failed" for k in r.failed.values()),
            "timed_out_clients": sum(k == "timed out" for k in r.failed.values()),
            "bytes_up": r.bytes_up,
            "bytes_down": r.bytes_down,
            "circuit_evaluations": r.circuit_evaluations,
            "cumulative_circuit_evaluations": c["circuit_evaluations"][i],
            "client_seconds": r.client_seconds,
            "cumulative_client_seconds": c["client_seconds"][i],
            "idle_fraction": r.idle_fraction,
            "idle_seconds_fraction": r.idle_seconds_fraction,
            "discarded_evaluations": r.discarded_evaluations,
            "stop": float(r.stop),
        }
        if r.server_loss is not None:
            values["server_loss"] = r.server_loss
        for client in out.setting.clients:
            cid = client.id
            values[f"client{cid}.selected"] = float(cid in r.selected)
            values[f"client{cid}.dropped"] = float(cid in r.failed)
            if cid in r.clients:
                for k in ("steps", "loss", "circuit_evaluations", "seconds"):
                    values[f"client{cid}.{k}"] = r.clients[cid][k]
        metrics += [mlflow.entities.Metric(k, float(v), now, r.round) for k, v in values.items()]
    return metrics


def global_model(out: RunOutput) -> nn.Module:
    """The run's final global model on the exact simulator, whatever the clients trained on (as
    the server evaluates it each round)."""
    model = build_model(replace(out.model, backend="exact", backend_options={}))
    set_weights(model, out.result.weights)
    return model


def noisy_evaluation(out: RunOutput, settings: list[NoiseSetting], samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """The final global model on the first ``samples`` test examples with its circuit on Aer
    under each setting (one circuit per sample), beside its exact predictions: the rows of
    :func:`lab.noise.circuit_noise`, named by the run; none for a model without a circuit (a
    classical stand-in in its place)."""
    model = global_model(out)
    if not any(isinstance(m, QuantumLayer) for m in model.modules()):
        return []
    x, y = out.setting.test
    rows = circuit_noise(model, lambda: model_predictions(model, x[:samples]), y[:samples], settings, seed)
    return [{"dataset": out.setting.dataset, "partition": out.setting.partition, "run": out.label, **r} for r in rows]


def save_global_model(out: RunOutput, folder: Path) -> Path:
    """The final global model, written atomically: weights, ``config.json`` and each circuit as
    OpenQASM 3. A quantum model saves itself (a QD-LLM student as ``load_model`` reads it back)
    with its spec beside it in ``spec.json``; a VQC or classical model's config is its spec."""
    model = global_model(out)
    spec = asdict(out.model)
    if isinstance(model, QuantumModel):
        folder = model.save(folder)
        (folder / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
        return folder
    circuits = {"circuit": model.circuit()} if isinstance(model, VQCClassifier) else {}
    return save_module(model, spec, circuits, folder)


def log_runs(
    parent: mlflow.ActiveRun,
    outputs: Sequence[RunOutput],
    rows: Sequence[dict[str, Any]],
    figures: dict[str, Figure],
    llm: dict[str, Any],
    records: Mapping[str, tracking.DataRecord],
) -> None:
    """On the flow's parent run: the results table, plots and LLM losses, and one child per run
    with its kind and data (``records`` by data set name, as :func:`lab.tracking.log_child`
    records them), per-round metrics, round records and final model. Only the flow's process
    writes."""
    client = MlflowClient()
    for out, row in zip(outputs, rows, strict=True):
        name = f"{out.setting.dataset}/{out.setting.partition}/{out.label}"
        kind = "baseline" if not out.quantum else "quantum"
        record = records[out.setting.dataset]
        run_id = tracking.with_retries(
            lambda: (
                client.create_run(
                    parent.info.experiment_id,
                    run_name=name,
                    tags={"mlflow.parentRunId": parent.info.run_id, "kind": kind, "controller": out.label},
                ).info.run_id
            ),
            what="create child run",
        )
        tracking.with_retries(lambda: client.log_inputs(run_id, [record.input]), what="log dataset")
        run_params = [
            mlflow.entities.Param(k, str(v))
            for k, v in {
                "dataset": out.setting.dataset,
                "partition": out.setting.partition,
                "controller": out.label,
                "model": out.model.kind,
                "kind": kind,
                **record.params(),
            }.items()
        ]
        summary = [
            mlflow.entities.Metric(f"summary.{k}", float(v), int(time.time() * 1000), 0)
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        metrics = _round_metrics(out) + summary
        for start in range(0, len(metrics), 900):  # MLflow takes at most 1,000 metrics per batch
            batch = metrics[start : start + 900]
            tracking.with_retries(
                lambda: client.log_batch(run_id, metrics=batch, params=run_params if start == 0 else []),
                what="log round metrics",
            )
        tracking.with_retries(
            lambda: client.log_dict(run_id, {"records": [r.to_dict() for r in out.result.records]}, "rounds.json"),
            what="log rounds",
        )
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_global_model(out, Path(tmp) / "model")
            tracking.with_retries(lambda: client.log_artifacts(run_id, str(folder), "model"), what="log model")
        tracking.with_retries(lambda: client.set_terminated(run_id), what="end child run")
    for fname, fig in figures.items():
        tracking.with_retries(lambda: client.log_figure(parent.info.run_id, fig, fname), what="log figure")
    tracking.log_table(parent, list(rows), "results.json")
    tracking.with_retries(lambda: client.log_dict(parent.info.run_id, llm, "llm_losses.json"), what="log LLM")


# --- the registry's view: LLM-QFL, its classical stand-in and its classical federated baseline ----


@dataclass(frozen=True)
class FederatedData:
    """What a federated method's runs read: one split, its parties' LLM losses, and the tuning
    views prepared with it, by (fraction, seed) (:meth:`FederatedMethod.tuning_view`)."""

    split: FederatedSplit
    llm: dict[str, Any]
    views: dict[tuple[float, int], FederatedData] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What a run reads, by content: a study's data key."""
        losses = {who: v["loss"] for who, v in sorted(self.llm.items())}
        return hash_json({"split": split_fingerprint(self.split), "llm": losses})


# What tuning may change in every federated run: the clients' optimiser and how long they train
# in a round (the rounds are the comparison's budget).
LOCAL_TRAINING: dict[str, Dimension] = {"lr": Float(0.01, 1.0, log=True), "local_steps": Int(1, 30)}


class FederatedMethod(Method[FederatedParams, RunJob, FederatedData]):
    """Federated runs on one split; the leaderboard counts the final global model."""

    params = FederatedParams
    reads_llm: ClassVar[bool] = True  # its controller compares the clients with their parties' LLM losses

    def check(self, params: FederatedParams) -> None:
        preflight(params)

    def for_budget(self, budget: Budget, seeds: list[int]) -> list[FederatedParams]:
        return [
            FederatedParams(
                dataset=[budget.dataset],
                train_size=budget.train_size,
                test_size=budget.test_size,
                split_seed=budget.split_seed,
                clients=budget.clients,
                rounds=budget.rounds,
                controller=[budget.controller],
                baseline="logreg",
                llm_steps=budget.llm_steps,
                seed=seed,
            )
            for seed in seeds
        ]

    def compare_split(self, params: FederatedParams, data: Dataset, embedded: EmbeddedSplit) -> FederatedSplit:
        """A comparison's split of the shared features: IID clients beside the server's share,
        drawn from ``split_seed`` as every other method's split is, so a training seed varies the
        models and the clients' sampling, not the data (and the parties' LLM fine-tunes, stored
        by content, serve every seed)."""
        spec = params.model_spec(data.num_classes)
        return build_split(data, embedded, "iid", params.clients, spec, params.server_fraction, params.split_seed)

    def tuning_split(
        self, params: FederatedParams, data: Dataset, embedded: EmbeddedSplit, fraction: float, seed: int
    ) -> FederatedSplit:
        """What a trial reads: :meth:`compare_split` of what a stratified hold-out of the training
        split leaves, the hold-out its test split (the test split is never read). Named
        ``<data set>-tuning``, so its parties' LLM fine-tunes are told apart from the real ones."""
        split = self.compare_split(params, data.tuning_view(fraction, seed), embedded.tuning_view(fraction, seed))
        return replace(split, dataset=f"{data.name}-tuning")

    def tuning_view(self, data: FederatedData, fraction: float, seed: int) -> FederatedData:
        """The view prepared with ``data`` (by :func:`tasks.federated.federated_data`: its
        parties' LLM fine-tunes run as tasks, which this layer cannot start)."""
        if (view := data.views.get((fraction, seed))) is None:
            raise ValueError(
                f"{self.id}: no tuning view of fraction {fraction:g} and seed {seed} was prepared with its data "
                f"(prepared: {sorted(data.views)})"
            )
        return view

    def summary(self, out: RunOutput, job: RunJob) -> TrainingResult:
        """The run as a leaderboard row: final accuracy, the final global model's test predictions
        (for the bootstrap interval and the paired tests) and, with a circuit, its predictions
        with the circuit's output at its mean over the clients' training inputs; its size, and
        the clients' seconds plus the parties' LLM fine-tunes. All read from the final weights,
        so a stored run gives them too."""
        c = curves(out)
        model = global_model(out)
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seconds = c["client_seconds"][-1] + sum(v["seconds"] for v in job.llm.values())
        standin = out.model.options.get("circuit") == "classical"
        kind = "classical stand-in" if standin else "quantum" if out.quantum else "baseline"
        test_x = out.setting.test[0]
        train_x = np.concatenate([client.x for client in out.setting.clients])
        return TrainingResult(
            self.id,
            f"{job.name}-s{job.seed}",
            kind,
            job.seed,
            {"accuracy": c["accuracy"][-1], "train_seconds": seconds},
            {"total": size},
            test_predictions=model_predictions(model, test_x),
            ablated_predictions=feature_ablation(model, train_x, test_x),
            cached=out.cached,
        )

    def train(self, job: RunJob, data: FederatedData, root: str, hooks: Hooks) -> TrainingResult:
        """The run's leaderboard row (the job carries its split; ``data`` is what made the job).
        Without ``hooks.fit`` (a tuning trial on a Dask worker) its clients train here, one
        after another."""
        return self.summary(run_setting(job, root, hooks), job)


class LLMQFL(FederatedMethod):
    id = "llm-qfl"
    label = "LLM-QFL federated VQC"
    search_space: ClassVar[dict[str, Dimension]] = {**LOCAL_TRAINING, "select_fraction": Float(0.1, 1.0)}

    def jobs(self, params: FederatedParams, data: FederatedData) -> list[RunJob]:
        spec = params.model_spec(data.split.num_classes)
        tail = "" if params.circuit == "quantum" else "-classical"  # its own task, progress and row names
        return [RunJob(params, data.split, c + tail, spec, c, data.llm) for c in params.controller]


class LLMQFLClassical(ClassicalStandin, LLMQFL):
    """LLM-QFL with a classical MLP of the VQC's size in the circuit's place on every client,
    steered, federated and tuned the same way: what the circuit adds (the ablation)."""

    id = "llm-qfl-classical"
    label = "LLM-QFL federated VQC, classical stand-in"


class FedLogreg(FederatedMethod):
    id = "fed-logreg"
    label = "FedAvg logistic regression"
    is_baseline = True
    reads_llm = False  # its runs have no controller
    search_space: ClassVar[dict[str, Dimension]] = LOCAL_TRAINING

    def jobs(self, params: FederatedParams, data: FederatedData) -> list[RunJob]:
        return [baseline_job(params, data.split)]


def baseline_job(params: FederatedParams, split: FederatedSplit) -> RunJob:
    """The flow's classical federated baseline on ``split`` (``params.baseline``)."""
    return RunJob(params, split, f"baseline-{params.baseline}", params.baseline_spec(split.num_classes), "none", {})


def preflight(params: FederatedParams) -> None:
    """Refuse bad input in seconds, before any server starts or anything is written: data set
    names and sizes, every partition of every data set, the LLM's availability offline."""
    for name in params.dataset:
        data = DataRequest(name, params.train_size, params.test_size, params.split_seed).load()
        for partition in params.partition:
            try:
                plan_split(data.train_labels, partition, params.clients, params.server_fraction, params.seed)
            except PartitionError as exc:
                raise DataError(f"{name}, partition {partition}: {exc}") from None
    if params.uses_llm:
        try:
            resolve_model(params.llm_model)
        except ModelNotFoundError as exc:
            raise DataError(f"llm_model: {exc}") from None
