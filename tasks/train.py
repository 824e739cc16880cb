"""Prefect tasks that train and evaluate quantum students and their classical competitors.

Each training is one task, so a sweep fans out across the Dask workers. A finished training is
stored under ``<artifact root>/students/<key>/`` where ``key`` hashes everything that determines
it (data, teacher, configuration, seed); ``result.json`` is written last, so a half-written
folder is never read, and a re-run after a crash skips every training that had finished.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from qcore.models.base import QuantumModel, load_model
from qcore.models.classical import distilled_mlp, linear_size, logistic_regression, matched_mlp
from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
from qcore.training import classification_metrics, evaluate, model_size_bytes, train

from .artifacts import atomic_write_bytes, download_folder, hash_json, join_url, read_bytes, upload_folder
from .settings import Settings


@dataclass(frozen=True)
class Features:
    """What every model of one flow run learns from: the same features, labels and teacher."""

    train_x: np.ndarray
    train_y: np.ndarray
    train_teacher: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_teacher: np.ndarray
    label_names: tuple[str, ...]
    key: str  # teacher cache key: data hash + teacher model + settings
    teacher: dict[str, Any]  # the TeacherSpec fields: how to turn new text into features


@dataclass(frozen=True)
class StudentJob:
    """One point of a sweep: a student configuration, a seed and the training settings."""

    qubits: int
    blocks: int
    alpha: float
    seed: int
    temperature: float
    epochs: int
    batch_size: int
    lr: float
    backend: str = "exact"
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"student-q{self.qubits}-b{self.blocks}-a{self.alpha:g}-s{self.seed}"


@contextmanager
def dask_client_for(backend: str) -> Iterator[Any]:
    """On a Dask worker and for `aer`, a client that lets the parameter-shift batches of this
    training spread over all workers (``worker_client`` secedes from the worker's thread pool,
    so the chunks can run beside it); otherwise ``None``."""
    if backend != "aer":
        yield None
        return
    from distributed import get_worker, worker_client

    try:
        get_worker()
    except ValueError:  # not running on a Dask worker
        yield None
        return
    with worker_client() as client:
        yield client


def one_thread_per_task() -> None:
    """``QLLM_TASK_THREADS`` torch threads (default 1): the Dask workers, one per core, already
    use every core between them; a single worker may be given more."""
    torch.set_num_threads(Settings().task_threads)


Progress = Callable[[int, str], None]


def progress_artifact(name: str, total: int) -> Progress:
    """A Prefect progress artifact for one training, keyed by its name, so the task's page and
    the UI's Artifacts page show how far it is while it runs; returns ``report(done, note)``.
    A failed update is logged, never raised: watching must not stop a training."""
    log = get_run_logger()

    def safe(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - any API error; the training goes on
            log.warning("progress artifact of %s not updated: %s", name, exc)
            return None

    key = re.sub(r"[^a-z0-9]+", "-", f"progress-{name}".lower()).strip("-")
    artifact = safe(lambda: create_progress_artifact(0.0, key=key, description=f"{name}: started"))

    def report(done: int, note: str) -> None:
        if artifact is not None:
            safe(lambda: update_progress_artifact(artifact, 100.0 * min(done, total) / total,
                                                  description=f"{name}: {note}"))
    return report


def store_result(root: str, key: str, model: QuantumModel, result: dict[str, Any],
                 extra_files: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the model (plus ``extra_files``, name → JSON) to ``<root>/students/<key>/model/``,
    then commit the training by writing ``result.json`` beside it; return the result as JSON
    gives it back, so a fresh result has the same form as a cached one."""
    url = join_url(root, "students", key)
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(Path(tmp) / "model")
        for name, content in (extra_files or {}).items():
            (folder / name).write_text(json.dumps(content, indent=2))
        result = {**result, "model_url": join_url(url, "model")}
        result["metrics"] = {**result["metrics"], "size_bytes": model_size_bytes(folder)}
        upload_folder(folder, join_url(url, "model"))
    atomic_write_bytes(join_url(url, "result.json"), json.dumps(result).encode())
    return {**json.loads(json.dumps(result)), "cached": False}


def cached_result(root: str, key: str) -> dict[str, Any] | None:
    """The result of a training that finished before (``result.json`` present), else ``None``."""
    raw = read_bytes(join_url(root, "students", key, "result.json"))
    return None if raw is None else {**json.loads(raw), "cached": True}


@task(name="train-student", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE,
      task_run_name="{job.name}")
def train_student(job: StudentJob, data: Features, root: str) -> dict[str, Any]:
    """Train one quantum student with the distillation loss and evaluate it on the test split."""
    key = hash_json({"data": data.key, "job": asdict(job), "v": 1})
    cached = cached_result(root, key)
    if cached is not None:
        get_run_logger().info("%s: finished before, reusing %s", job.name, key[:12])
        return cached
    one_thread_per_task()
    log = get_run_logger()
    cfg = QDLLMConfig(in_features=data.train_x.shape[1], num_classes=len(data.label_names),
                      qubits=job.qubits, blocks=job.blocks, backend=job.backend, seed=job.seed)

    report = progress_artifact(job.name, job.epochs)

    def progress(epoch: int, m: dict[str, float]) -> None:
        note = f"epoch {epoch}/{job.epochs}: loss {m['loss']:.4f}, train acc {m['accuracy']:.3f}"
        log.info("%s %s", job.name, note)
        report(epoch, note)

    t0 = time.perf_counter()
    with dask_client_for(job.backend) as client:
        split = {} if client is None else {"client": client}
        if split:
            log.info("%s: parameter-shift batches split across %d Dask workers", job.name,
                     len(client.scheduler_info()["workers"]))
        model = QDLLMStudent(cfg, **job.backend_options, **split)
        history = train(model, data.train_x, data.train_y, data.train_teacher, epochs=job.epochs,
                        batch_size=job.batch_size, lr=job.lr, seed=job.seed,
                        temperature=job.temperature, alpha=job.alpha, on_epoch=progress)
    seconds = time.perf_counter() - t0
    model = model.with_backend("exact") if job.backend != "exact" else model
    metrics = evaluate(model, data.test_x, data.test_y, data.test_teacher)
    result = {
        "name": job.name, "kind": "quantum student", "job": asdict(job),
        "metrics": {**metrics, "train_seconds": seconds},
        "params": model.parameter_counts(),
        "history": {k: [h[k] for h in history] for k in history[0]},
        "test_predictions": model_predictions(model, data.test_x),
    }
    # teacher.json: what `qllm predict` needs to turn new text into this student's features.
    stored = store_result(root, key, model, result, {"teacher.json": {
        "teacher": data.teacher, "label_names": list(data.label_names)}})
    log.info("%s: test accuracy %.4f", job.name, metrics["accuracy"])
    return stored


def model_predictions(model: torch.nn.Module, x: np.ndarray) -> list[int]:
    with torch.inference_mode():
        return model(torch.as_tensor(x, dtype=torch.float32)).argmax(-1).tolist()


@task(name="classical-baselines", retries=1, cache_policy=NO_CACHE, task_run_name="baselines-s{seed}")
def classical_baselines(data: Features, seed: int, target_params: int, epochs: int, batch_size: int,
                        lr: float, temperature: float, alpha: float) -> list[dict[str, Any]]:
    """Logistic regression, a size-matched MLP (labels only) and a size-matched MLP distilled
    with the same loss, all on the same features and split as the quantum students."""
    one_thread_per_task()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    lr_logits = logistic_regression(data.train_x, data.train_y, data.test_x, seed=seed)
    lr_size = linear_size(data.train_x.shape[1], len(data.label_names))
    rows.append(_baseline_row("logistic regression", seed, lr_logits, data, {"classical": lr_size, "total": lr_size},
                              time.perf_counter() - t0))
    for kind, a in (("MLP (labels only)", 0.0), ("classical distilled MLP", alpha)):
        t0 = time.perf_counter()
        if a == 0.0:
            mlp = matched_mlp(data.train_x.shape[1], len(data.label_names), target_params, seed=seed)
            history = train(mlp, data.train_x, data.train_y, None, epochs=epochs, batch_size=batch_size,
                            lr=lr, seed=seed, temperature=temperature, alpha=0.0)
        else:
            mlp, history = distilled_mlp(data.train_x, data.train_y, data.train_teacher,
                                         target_params=target_params, seed=seed, epochs=epochs,
                                         batch_size=batch_size, lr=lr, temperature=temperature, alpha=a)
        metrics = evaluate(mlp, data.test_x, data.test_y, data.test_teacher)
        metrics["train_seconds"] = time.perf_counter() - t0
        rows.append({"name": f"{kind} s{seed}", "kind": kind, "seed": seed, "metrics": metrics,
                     "params": mlp.parameter_counts(),
                     "history": {k: [h[k] for h in history] for k in history[0]}})
    return rows


def _baseline_row(kind: str, seed: int, logits: torch.Tensor, data: Features,
                  params: dict[str, int], seconds: float) -> dict[str, Any]:
    return {"name": f"{kind} s{seed}", "kind": kind, "seed": seed, "params": {**params, "circuit": 0},
            "metrics": {**classification_metrics(logits.argmax(-1).numpy(), data.test_y, data.test_teacher),
                        "train_seconds": seconds}}


@task(name="noisy-evaluation", retries=1, cache_policy=NO_CACHE,
      task_run_name="noisy-{label}-{start}")
def noisy_evaluation(model_url: str, test_x: np.ndarray, label: str, start: int, stop: int, seed: int,
                     backend_options: dict[str, Any]) -> dict[str, Any]:
    """Predictions of a trained model for test samples ``start:stop`` on the `aer` backend
    (shots, depolarizing or device noise) beside its exact predictions."""
    one_thread_per_task()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(download_folder(model_url, Path(tmp) / "model"))
    noisy = model.with_backend("aer", simulator_seed=seed + start, **backend_options)
    x = test_x[start:stop]
    t0 = time.perf_counter()
    noisy_pred = model_predictions(noisy, x)
    return {"label": label, "start": start, "noisy": noisy_pred, "exact": model_predictions(model, x),
            "seconds": time.perf_counter() - t0, "options": backend_options}


def merge_noisy(chunks: list[dict[str, Any]], test_y: np.ndarray) -> dict[str, Any]:
    """One row per noise setting from its chunks: accuracy on the same samples, noisy and exact."""
    chunks = sorted(chunks, key=lambda c: c["start"])
    noisy = np.array([p for c in chunks for p in c["noisy"]])
    exact = np.array([p for c in chunks for p in c["exact"]])
    y = test_y[chunks[0]["start"]: chunks[0]["start"] + len(noisy)]
    return {"label": chunks[0]["label"], "samples": len(y), "accuracy": float((noisy == y).mean()),
            "exact_accuracy_same_samples": float((exact == y).mean()),
            "agreement_with_exact": float((noisy == exact).mean()),
            "seconds": sum(c["seconds"] for c in chunks), "options": chunks[0]["options"]}
