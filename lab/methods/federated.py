"""Prefect tasks and reporting of the federated flow (LLM-QFL, arXiv 2505.18656).

- :func:`build_setting`: one (data set, partition) — the server's own data, the clients'
  partitions, the PCA projection fitted on the server's data;
- :func:`llm_finetune`: a client's (or the server's) LoRA fine-tune, cached by content in the
  artifact store, so a re-run never repeats one;
- :func:`train_client` and :func:`prefect_fit`: every client's local training of a round as a
  Prefect task on the Dask workers; failures and timeouts come back as dropped clients;
- :func:`run_key`, :func:`load_run`, :func:`store_run`: finished runs stored by content, so a
  re-run with the same data and settings repeats no round;
- :func:`summarize`, :func:`accuracy_curves`, :func:`log_runs`: the results table, the plots and
  the MLflow record (per-round metrics with step = round).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import mlflow
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from qcore.federated.client import Client, ClientUpdate
from qcore.federated.features import Projection
from qcore.federated.llm import LLMSpec, finetune
from qcore.federated.client_models import ModelSpec, build_model, set_weights
from qcore.federated.partition import PartitionSpec
from qcore.federated.server import ClientJob, Fit, Outcome, RoundRecord, RunResult, failure

from . import tracking
from .artifacts import atomic_write_bytes, hash_json, join_url, read_bytes
from .data import Dataset, stratified_indices
from .teacher import TeacherOutputs, model_fingerprint, resolve_model


# --- the data of one setting ---------------------------------------------------------------------

def plan_split(labels: np.ndarray, partition: str, clients: int, server_fraction: float,
               seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The server's own examples (a stratified, seeded share) and each client's partition of the
    rest, as indices into ``labels``. Needs only labels, so the flow's preflight runs it too."""
    labels = np.asarray(labels)
    n_server = max(1, round(len(labels) * server_fraction))
    server = stratified_indices(labels, n_server, np.random.default_rng([seed, 7]))
    pool = np.setdiff1d(np.arange(len(labels)), server)
    parts = PartitionSpec.parse(partition).split(labels[pool], clients, seed)
    return server, [pool[p] for p in parts]


@dataclass(frozen=True)
class Setting:
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


def build_setting(data: Dataset, embeddings: TeacherOutputs, partition: str, clients: int, model: ModelSpec,
                  server_fraction: float, seed: int) -> Setting:
    """Split, fit the projection on the server's data, and hand every client its share."""
    server_idx, parts = plan_split(data.train_labels, partition, clients, server_fraction, seed)
    x, y = embeddings.train.features, np.asarray(data.train_labels)
    project = Projection.fit(x[server_idx], model.in_features)
    features = project(x)
    test_y = np.asarray(data.test_labels)
    reference = float((embeddings.test.logits.argmax(-1) == test_y).mean())
    return Setting(
        dataset=data.name, partition=partition,
        clients=[Client(i, features[p], y[p], model) for i, p in enumerate(parts)],
        client_texts=[[data.train_texts[j] for j in p] for p in parts],
        server=(features[server_idx], y[server_idx]), server_texts=[data.train_texts[j] for j in server_idx],
        test=(project(embeddings.test.features), test_y), num_classes=data.num_classes,
        reference_accuracy=reference,
    )


# --- language models -----------------------------------------------------------------------------

@task(name="llm-finetune", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
      task_run_name="llm-{who}")
def llm_finetune(who: str, texts: list[str], labels: list[int], num_classes: int, model: str | None,
                 spec: LLMSpec, root: str) -> dict[str, Any]:
    """LoRA-fine-tune the language model on one party's texts; cached under
    ``<root>/federated/llm/<key>.json`` by texts, labels, model weights and settings."""
    folder = resolve_model(model)
    key = hash_json({"texts": texts, "labels": labels, "classes": num_classes,
                     "model": model_fingerprint(folder), "spec": asdict(spec), "v": 1})
    url = join_url(root, "federated", "llm", f"{key}.json")
    cached = read_bytes(url)
    if cached is not None:
        return {**json.loads(cached), "cached": True}
    torch.set_num_threads(1)  # one per Dask worker: the workers share the cores
    result = asdict(finetune(folder, texts, labels, num_classes, spec))
    atomic_write_bytes(url, json.dumps(result).encode())
    get_run_logger().info("LLM of %s: loss %.4f, accuracy %.3f on %d texts (%.1f s)", who, result["loss"],
                          result["accuracy"], result["examples"], result["seconds"])
    return {**result, "cached": False}


# --- client training on the workers --------------------------------------------------------------

class SimulatedFailure(RuntimeError):
    """A client failure injected on purpose (``fail_rate``), to exercise the drop path."""


def simulated_failures(seed: int, round_: int, clients: Sequence[int], rate: float) -> set[int]:
    """The clients that fail in this round under ``fail_rate``: seeded, so a run repeats exactly."""
    if rate <= 0:
        return set()
    rng = np.random.default_rng([seed, round_, 99])
    return {c for c, u in zip(clients, rng.random(len(clients))) if u < rate}


@task(name="federated-client", cache_policy=NO_CACHE, task_run_name="{label}-r{job.round}-client{job.client.id}")
def train_client(job: ClientJob, label: str, fail: bool) -> ClientUpdate:
    """One client's local training for one round (no retries: a failed client is dropped)."""
    torch.set_num_threads(1)  # one per Dask worker: the workers share the cores
    if fail:
        raise SimulatedFailure(f"client {job.client.id} fails on purpose in round {job.round} (fail_rate)")
    return job.run()


def prefect_fit(label: str, *, fail_rate: float, seed: int, wait_seconds: float) -> Fit:
    """An executor for :meth:`FederatedRun.run`: each job a Prefect task on the Dask cluster.

    A client's own time limit raises inside its task; ``wait_seconds`` is the flow's backstop for
    a worker that does not answer at all. Either way, and on any other error, the client is
    reported as a :class:`~qcore.federated.server.ClientFailure`.
    """

    def fit(jobs: list[ClientJob]) -> list[Outcome]:
        failing = simulated_failures(seed, jobs[0].round, [j.client.id for j in jobs], fail_rate)
        futures = [train_client.submit(j, label, j.client.id in failing) for j in jobs]
        deadline = time.monotonic() + wait_seconds
        outcomes: list[Outcome] = []
        for job, future in zip(jobs, futures):
            try:
                outcomes.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - the client is dropped and counted, whatever went wrong
                outcomes.append(failure(job.client.id, exc))
        return outcomes

    return fit


# --- finished runs, stored by content ------------------------------------------------------------

def setting_fingerprint(setting: Setting) -> str:
    """Hash of every array a run of ``setting`` reads: the clients', the server's and the test data."""
    digest = hashlib.sha256()
    for a in [a for c in setting.clients for a in (c.x, c.y)] + [*setting.server, *setting.test]:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def run_key(setting: Setting, spec: ModelSpec, controller: str, settings: dict[str, Any],
            llm_losses: dict[str, float]) -> str:
    """What a run's result depends on: its data, model, controller, run settings (the flow's
    parameters less those the data already fixes) and the parties' LLM losses."""
    return hash_json({"setting": setting_fingerprint(setting), "model": asdict(spec), "controller": controller,
                      "settings": settings, "llm": llm_losses, "v": 1})


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
    return RunResult(meta["initial_accuracy"], meta["initial_loss"],
                     [RoundRecord.from_dict(r) for r in meta["records"]], weights)


def store_run(root: str, key: str, result: RunResult) -> None:
    """Records and final weights in one file, written atomically: a reader sees all or nothing."""
    meta = {"initial_accuracy": result.initial_accuracy, "initial_loss": result.initial_loss,
            "records": [r.to_dict() for r in result.records]}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **{f"w/{k}": np.asarray(v) for k, v in result.weights.items()})
    atomic_write_bytes(_run_url(root, key), buffer.getvalue())


def real_failures(result: RunResult, clients: Sequence[int], seed: int, fail_rate: float) -> list[tuple[int, int]]:
    """(round, client) of every client dropped for a reason other than the seeded ``fail_rate``:
    a run with any is not stored, so a re-run trains it again instead of repeating the loss."""
    return [(r.round, c) for r in result.records
            for c in sorted(set(r.failed) - simulated_failures(seed, r.round, clients, fail_rate))]


# --- results -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOutput:
    """A finished run with what identifies it; ``cached`` when it was read from the store."""

    setting: Setting
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
        "dataset": out.setting.dataset, "partition": out.setting.partition, "run": out.label,
        "model": out.model.kind, "rounds_run": len(records), "stopped_early": bool(records and records[-1].stop),
        "final_accuracy": c["accuracy"][-1], "best_accuracy": max(c["accuracy"]), "target": target,
        "mean_steps": float(np.mean([v["steps"] for r in records for v in r.clients.values()] or [0])),
        "rounds_to_target": reach,
        "circuit_evaluations_to_target": None if reach is None else c["circuit_evaluations"][reach],
        "client_seconds_to_target": None if reach is None else c["client_seconds"][reach],
        "circuit_evaluations": total, "client_seconds": c["client_seconds"][-1],
        "idle_fraction": idle / busy if busy else 0.0,
        "discarded_fraction": discarded / total if total else 0.0,
        "bytes_up": sum(r.bytes_up for r in records), "bytes_down": sum(r.bytes_down for r in records),
        "clients_failed": sum(k == "failed" for r in records for k in r.failed.values()),
        "clients_timed_out": sum(k == "timed out" for r in records for k in r.failed.values()),
        "fallback_rounds": sum(r.decision == "fallback" for r in records),
        "reference_accuracy": out.setting.reference_accuracy,
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results table for the terminal and the Prefect artifact."""
    head = ("| data | partition | run | final acc | best acc | rounds | target | rounds to target | "
            "circuit evals to target | client s to target | circuit evals | client s | steps / client-round | "
            "idle | discarded | failed / timed out |")
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
            f"{r['discarded_fraction']:.0%} | {r['clients_failed']} / {r['clients_timed_out']} |")
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
    for ax, xlabel in zip(axes, labels):
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
    metrics = [mlflow.entities.Metric("accuracy", out.result.initial_accuracy, now, 0),
               mlflow.entities.Metric("test_loss", out.result.initial_loss, now, 0)]
    for i, r in enumerate(out.result.records, start=1):
        values: dict[str, float] = {
            "accuracy": r.accuracy, "test_loss": r.test_loss, "selected_clients": len(r.selected),
            "failed_clients": sum(k == "failed" for k in r.failed.values()),
            "timed_out_clients": sum(k == "timed out" for k in r.failed.values()),
            "bytes_up": r.bytes_up, "bytes_down": r.bytes_down, "circuit_evaluations": r.circuit_evaluations,
            "cumulative_circuit_evaluations": c["circuit_evaluations"][i], "client_seconds": r.client_seconds,
            "cumulative_client_seconds": c["client_seconds"][i], "idle_fraction": r.idle_fraction,
            "idle_seconds_fraction": r.idle_seconds_fraction, "discarded_evaluations": r.discarded_evaluations,
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


def _save_model(out: RunOutput, folder: Path) -> Path:
    """The final global model: safetensors weights, its spec and (quantum models) its circuit."""
    from qiskit import qasm3
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(replace(out.model, backend="exact", backend_options={}))
    set_weights(model, out.result.weights)
    save_file({k: p.detach().contiguous() for k, p in model.named_parameters()}, folder / "weights.safetensors")
    (folder / "config.json").write_text(json.dumps(asdict(out.model), indent=2, sort_keys=True))
    if hasattr(model, "circuit"):
        (folder / "circuit.qasm").write_text(qasm3.dumps(model.circuit()))
    return folder


def log_runs(parent: mlflow.ActiveRun, outputs: Sequence[RunOutput], rows: Sequence[dict[str, Any]],
             figures: dict[str, Figure], llm: dict[str, Any]) -> None:
    """On the flow's parent run: the results table, plots and LLM losses, and one child per run
    with its per-round metrics, round records and final model. Only the flow's process writes."""
    client = MlflowClient()
    for out, row in zip(outputs, rows):
        name = f"{out.setting.dataset}/{out.setting.partition}/{out.label}"
        run_id = tracking.with_retries(lambda: client.create_run(
            parent.info.experiment_id, run_name=name,
            tags={"mlflow.parentRunId": parent.info.run_id, "kind": "baseline" if not out.quantum else "quantum",
                  "controller": out.label}).info.run_id, what="create child run")
        run_params = [mlflow.entities.Param(k, str(v)) for k, v in
                      {"dataset": out.setting.dataset, "partition": out.setting.partition,
                       "controller": out.label, "model": out.model.kind}.items()]
        summary = [mlflow.entities.Metric(f"summary.{k}", float(v), int(time.time() * 1000), 0)
                   for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        metrics = _round_metrics(out) + summary
        for start in range(0, len(metrics), 900):  # MLflow takes at most 1,000 metrics per batch
            batch = metrics[start:start + 900]
            tracking.with_retries(lambda: client.log_batch(run_id, metrics=batch,
                                                           params=run_params if start == 0 else []),
                                  what="log round metrics")
        tracking.with_retries(lambda: client.log_dict(
            run_id, {"records": [r.to_dict() for r in out.result.records]}, "rounds.json"), what="log rounds")
        with tempfile.TemporaryDirectory() as tmp:
            folder = _save_model(out, Path(tmp) / "model")
            tracking.with_retries(lambda: client.log_artifacts(run_id, str(folder), "model"), what="log model")
        tracking.with_retries(lambda: client.set_terminated(run_id), what="end child run")
    for fname, fig in figures.items():
        tracking.with_retries(lambda: client.log_figure(parent.info.run_id, fig, fname), what="log figure")
    tracking.log_table(parent, list(rows), "results.json")
    tracking.with_retries(lambda: client.log_dict(parent.info.run_id, llm, "llm_losses.json"), what="log LLM")
