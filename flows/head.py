"""The hybrid PQC classification head as a Prefect flow: few-shot data → sentence embeddings →
quantum heads (one Dask task per seed) beside classical heads of about the same size →
noise ablation of the trained heads → MLflow.

Paper: Fine-tuning Large Language Models on Quantum Computers, arXiv 2504.08732.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from mlflow import ActiveRun
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qcore.models.pqc_head import MAX_ENCODERS
from qcore.simulators.aer import fake_backend_names, fake_backend_qubits
from tasks import reporting, tracking
from tasks.data import few_shot, load_dataset
from tasks.heads import HeadData, HeadJob, classical_heads, head_size, split_validation, train_head
from tasks.noise import noise_settings, noisy_finetune, transpiled_metrics
from tasks.prepare import prepare_few_shot, teacher_outputs
from tasks.settings import Settings
from tasks.teacher import TeacherSpec
from tasks.train import merge_noisy, noisy_evaluation

from .runner import check_dask_address, dask_runner, mlflow_hint, results_or_failures, run_from_cli

MAX_QUBITS = 16


class HeadParams(BaseModel):
    """Parameters of the head flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("sst2", description="named set (sst2, subj, trec, trec-fine, ag_news) or a "
                                             "TSV/CSV/JSONL path or fsspec URL")
    text_column: str | None = Field(None, description="text column of a file data set")
    label_column: str | None = Field(None, description="label column of a file data set")
    per_label: int = Field(256, ge=2, description="few-shot training examples per label")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of the few-shot examples held out "
                                                             "for early stopping")
    test_size: int | None = Field(None, ge=1, description="test examples: a stratified sample of the rest "
                                                          "of the split (None: all of it)")
    split_seed: int = Field(0, ge=0, description="seed of the few-shot draw and the validation split")
    encoder: str | None = Field(None, description="sentence encoder: a sentence-transformers or HF encoder "
                                                  "name or folder (default: the embedded all-MiniLM-L6-v2)")
    encoder_batch_size: int = Field(64, ge=1, description="embedding batch size")
    shard_size: int = Field(4000, ge=1, description="texts per embedding shard: larger sets are split "
                                                    "across the Dask workers")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds (one head each)")
    qubits: int = Field(8, ge=2, le=MAX_QUBITS, description="module 2 qubits Q")
    encoders: int = Field(2, ge=0, le=MAX_ENCODERS, description="module 1 amplitude-encoded encoders E "
                                                                "(0: embeddings straight to module 2)")
    encoder_layers: int = Field(2, ge=1, le=10, description="CNOT-RY layers of each encoder's PQC")
    layers: int = Field(2, ge=1, le=20, description="CNOT-RY layers of PQC-1 (offsets 1, 2, …)")
    reuploads: int = Field(3, ge=1, le=10, description="N: PQC-1 repeats with shared weights (data re-uploading)")
    final_layers: int = Field(1, ge=1, le=10, description="CNOT-RY layers of PQC-2")
    measured: int = Field(1, ge=1, le=MAX_QUBITS, description="Q_m: qubits read out in Z")
    epochs: int = Field(30, ge=1, le=1000, description="maximum training epochs")
    patience: int = Field(6, ge=1, description="early stopping: epochs without a better validation accuracy")
    batch_size: int = Field(32, ge=1, description="training batch size")
    lr: float = Field(0.02, gt=0, le=1, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    noise_shots: list[int] = Field([256, 1024, 4096], description="noise ablation: shot counts (empty: skip)")
    noise_depolarizing: list[float] = Field([0.001, 0.01, 0.03], description="noise ablation: depolarizing "
                                                                            "p after every gate (empty: skip)")
    noise_devices: list[str] = Field(["fake_torino", "fake_brisbane"], description="noise ablation: IBM fake "
                                                                                   "backends (empty: skip)")
    device_shots: int = Field(1024, ge=1, description="shots under device noise")
    noise_samples: int = Field(200, ge=1, description="test examples in the noise ablation")
    noise_finetune_steps: int = Field(0, ge=0, description="optional: mini-batches of parameter-shift "
                                                          "fine-tuning under each device's noise (0: none)")
    experiment: str = Field("qllm-head", min_length=1, description="MLflow experiment name")
    dask_address: str | None = Field(None, description="Dask scheduler address (default: a temporary LocalCluster)")

    @field_validator("noise_shots")
    @classmethod
    def _positive_shots(cls, v: list[int]) -> list[int]:
        if bad := [s for s in v if s < 1]:
            raise ValueError(f"shot counts {bad} are invalid; give positive integers")
        return v

    @field_validator("noise_depolarizing")
    @classmethod
    def _probabilities(cls, v: list[float]) -> list[float]:
        if bad := [p for p in v if not 0 < p <= 1]:
            raise ValueError(f"depolarizing probabilities {bad} are invalid; allowed 0 < p <= 1")
        return v

    @field_validator("noise_devices")
    @classmethod
    def _fake_backend(cls, v: list[str]) -> list[str]:
        known = fake_backend_names()
        if bad := [d for d in v if d not in known]:
            raise ValueError(f"unknown fake backend(s) {bad}; allowed: {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "HeadParams":
        if self.measured > self.qubits:
            raise ValueError(f"measured={self.measured} exceeds qubits={self.qubits}")
        for name in self.noise_devices:
            if (size := fake_backend_qubits(name)) < self.qubits:
                raise ValueError(f"{name} has {size} qubits; module 2 needs {self.qubits}")
        return self

    def jobs(self) -> list[HeadJob]:
        return [HeadJob(qubits=self.qubits, seed=s, encoders=self.encoders, encoder_layers=self.encoder_layers,
                        layers=self.layers, reuploads=self.reuploads, final_layers=self.final_layers,
                        measured=self.measured, epochs=self.epochs, patience=self.patience,
                        batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay)
                for s in self.seeds]

    def check_data(self) -> None:
        """Read the data set and draw the few-shot split: bad names, columns or sizes fail here."""
        few_shot(load_dataset(self.dataset, seed=self.split_seed, text_column=self.text_column,
                              label_column=self.label_column), self.per_label, test_size=self.test_size,
                 seed=self.split_seed)


def prepare_head_data(params: HeadParams, root: str) -> HeadData:
    """Few-shot split, embeddings (cached, sharded over the workers) and the validation hold-out."""
    data = prepare_few_shot(params.dataset, per_label=params.per_label, test_size=params.test_size,
                            seed=params.split_seed, text_column=params.text_column,
                            label_column=params.label_column)
    spec = TeacherSpec(kind="probe", model=params.encoder, batch_size=params.encoder_batch_size)
    emb = teacher_outputs(data, spec, root, params.shard_size)
    return split_validation(emb.train.features, np.asarray(data.train_labels), emb.test.features,
                            np.asarray(data.test_labels), val_fraction=params.val_fraction,
                            seed=params.split_seed, label_names=tuple(data.label_names), key=emb.key,
                            encoder=dataclasses.asdict(spec))


def submit_classical_heads(params: HeadParams, data: HeadData, seeds: list[int]) -> list[Any]:
    target = head_size(data, params.jobs()[0])
    return classical_heads.map(data=unmapped(data), seed=seeds, target_params=unmapped(target),
                               epochs=unmapped(params.epochs), patience=unmapped(params.patience),
                               batch_size=unmapped(params.batch_size), lr=unmapped(params.lr))


@flow(name="head", task_runner=dask_runner(), log_prints=True)
def head(params: HeadParams = HeadParams()) -> dict[str, Any]:
    """Train PQC heads on few-shot embeddings, compare them with classical heads, ablate noise."""
    check_dask_address(params.dask_address)
    settings = Settings()
    root = settings.artifact_root
    with tracking.parent_run(settings, params.experiment, "head", params.model_dump(),
                             tags={"flow": "head"}, system_metrics=True) as parent:
        data = prepare_head_data(params, root)
        tracking.set_tags(parent, {"data_key": data.key})
        jobs = params.jobs()
        heads = train_head.map(jobs, unmapped(data), unmapped(root))
        baselines = submit_classical_heads(params, data, params.seeds)
        head_rows = results_or_failures(heads, [j.name for j in jobs], jobs)
        trained = [r for r in head_rows if r["status"] == "ok"]
        noise = noise_ablation(params, data, trained, settings.dask_workers)
        baseline_rows = [r for f in baselines for r in f.result()]

        table = reporting.summarize(baseline_rows + trained)
        md = reporting.markdown(table)
        if failed := [r for r in head_rows if r["status"] == "failed"]:
            md += "\n\nFailed trainings:\n" + "\n".join(f"- {r['name']}: {r['error']}" for r in failed)
        fig = reporting.noise_plot(noise["rows"], noise["exact"], "PQC head under noise") if noise["rows"] else None
        if fig is not None:
            md += "\n\n" + noise_markdown(noise)
        _log_mlflow(parent, data, head_rows, baseline_rows, table, noise, fig)
        run_id = parent.info.run_id
    create_table_artifact(key="head-results", table=table, description="PQC head vs classical heads")
    if fig is not None:
        create_table_artifact(key="head-noise", table=noise["rows"], description="accuracy under noise")
        md += "\n\n" + reporting.figure_markdown(fig, "accuracy against noise")
        reporting.close(fig)
    create_markdown_artifact(key="head-report", markdown=md)
    return {"table": table, "noise": noise, "markdown": md, "mlflow_run_id": run_id,
            "heads": [{"name": r["name"], "status": r["status"], "cached": r.get("cached", False)}
                      for r in head_rows]}


def noise_ablation(params: HeadParams, data: HeadData, trained: list[dict[str, Any]],
                   workers: int) -> dict[str, Any]:
    """Every trained head re-evaluated on the same ``noise_samples`` test examples under each
    setting (chunks spread over the workers), plus the transpiled cost on each device."""
    settings_ = noise_settings(params.noise_shots, params.noise_depolarizing, params.noise_devices,
                               params.device_shots)
    if not settings_ or not trained:  # ablation switched off (all lists empty), or nothing to evaluate
        return {"rows": [], "devices": []}
    n = min(params.noise_samples, len(data.test_y))
    step = max(1, -(-n // workers))
    futures = {(s.label, r["name"]): [noisy_evaluation.submit(r["model_url"], data.test_x, s.label, i,
                                                              min(i + step, n), 0, s.options)
                                      for i in range(0, n, step)]
               for s in settings_ for r in trained}
    finetuned = {}
    if params.noise_finetune_steps:
        for s in (s for s in settings_ if s.kind == "device"):
            finetuned[s.label] = noisy_finetune.submit(
                trained[0]["model_url"], s.label, s.options, data.train_x, data.train_y, data.test_x[:n],
                steps=params.noise_finetune_steps, batch_size=params.batch_size, lr=params.lr, seed=0)
    module2 = params.jobs()[0].config(data.train_x.shape[1], len(data.label_names)).module2_circuit().circuit
    devices = [transpiled_metrics(module2, d) for d in params.noise_devices]
    merged = {key: merge_noisy([f.result() for f in fs], data.test_y) for key, fs in futures.items()}
    rows = []
    exact = [merged[(settings_[0].label, r["name"])]["exact_accuracy_same_samples"] for r in trained]
    for s in settings_:
        accs = [merged[(s.label, r["name"])]["accuracy"] for r in trained]
        row = {"label": s.label, "kind": s.kind, "level": s.level, "samples": n, "models": len(accs),
               "accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
               "exact_accuracy": float(np.mean(exact)),
               "agreement_with_exact": float(np.mean([merged[(s.label, r["name"])]["agreement_with_exact"]
                                                      for r in trained])),
               "seconds": float(sum(merged[(s.label, r["name"])]["seconds"] for r in trained))}
        if s.label in finetuned:
            out = finetuned[s.label].result()
            row["finetuned_accuracy"] = float(np.mean(np.array(out["predictions"]) == data.test_y[:n]))
        rows.append(row)
    return {"rows": rows, "devices": devices, "exact": (float(np.mean(exact)), float(np.std(exact)))}


def noise_markdown(noise: dict[str, Any]) -> str:
    lines = ["Under noise (module 2 only; same test samples; mean ± std over the trained heads):", "",
             "| setting | samples | accuracy | exact accuracy | agreement with exact | after fine-tuning |",
             "|---|---|---|---|---|---|"]
    for r in noise["rows"]:
        tuned = f"{r['finetuned_accuracy']:.4f}" if "finetuned_accuracy" in r else "–"
        lines.append(f"| {r['label']} | {r['samples']} | {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} | "
                     f"{r['exact_accuracy']:.4f} | {r['agreement_with_exact']:.4f} | {tuned} |")
    if noise["devices"]:
        lines += ["", "| device | transpiled depth | two-qubit gates | qubits used | logical depth | logical 2q gates |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {d['device']} | {d['depth']} | {d['two_qubit_gates']} | {d['qubits_used']} | "
                  f"{d['logical_depth']} | {d['logical_two_qubit_gates']} |" for d in noise["devices"]]
    return "\n".join(lines)


def _log_mlflow(parent: ActiveRun, data: HeadData, heads: list[dict[str, Any]], baselines: list[dict[str, Any]],
                table: list[dict[str, Any]], noise: dict[str, Any], noise_figure: Figure | None) -> None:
    """The table and the noise ablation (with its plot) on the parent run; a child per head and
    per baseline."""
    tracking.log_result_rows(parent, heads + baselines, data.test_y, data.label_names, model_tag="pqc_head")
    tracking.log_summary(table, {f"noisy.{tracking.slug(r['label'])}.accuracy": r["accuracy"]
                                 for r in noise["rows"]})
    tracking.log_table(parent, table, "results.json")
    if noise_figure is not None:
        tracking.log_table(parent, noise["rows"], "noise.json")
        tracking.log_table(parent, noise["devices"], "transpiled.json")
        tracking.with_retries(lambda: tracking.mlflow.log_figure(noise_figure, "noise.png"), what="log figure")


def run_head(params: HeadParams) -> dict[str, Any]:
    """Run the flow from the command line; the data is checked first, before any server starts."""
    params.check_data()
    result = run_from_cli(head, params)
    print(result["markdown"].split("\n\n![")[0])
    print(mlflow_hint(result["mlflow_run_id"]))
    return result

