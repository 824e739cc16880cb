"""Prefect tasks of the PQC-head method: the few-shot embeddings, one quantum head per task, and
the classical heads it is compared with on the same embeddings and split.

A finished head is stored like a QD-LLM student (``<root>/students/<key>/``, ``result.json``
last), keyed by the data and everything in its :class:`HeadJob`: a re-run, or a study that meets
the same point again, reuses it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from qcore.models.classical import linear_size, linear_svm, logistic_regression, matched_mlp
from qcore.models.pqc_head import PQCHead, PQCHeadConfig
from qcore.training import classification_metrics, evaluate, train

from .artifacts import hash_json
from .data import stratified_indices
from .train import (cached_result, dask_client_for, model_predictions, one_thread_per_task, progress_artifact,
                    store_result)


@dataclass(frozen=True)
class HeadData:
    """Embeddings of the few-shot split: train/validation carved from the few-shot examples."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    label_names: tuple[str, ...]
    key: str  # embeddings cache key + validation split
    encoder: dict[str, Any]  # the TeacherSpec fields: how to embed new text


def split_validation(features: np.ndarray, labels: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     *, val_fraction: float, seed: int, label_names: tuple[str, ...], key: str,
                     encoder: dict[str, Any]) -> HeadData:
    """Hold out a stratified, seeded ``val_fraction`` of the few-shot examples for early stopping."""
    n_val = max(len(label_names), round(len(labels) * val_fraction))
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[stratified_indices(labels, n_val, np.random.default_rng([seed, 5]))] = True
    return HeadData(features[~is_val], labels[~is_val], features[is_val], labels[is_val], test_x, test_y,
                    label_names, hash_json({"embeddings": key, "val_fraction": val_fraction, "seed": seed}),
                    encoder)


@dataclass(frozen=True)
class HeadJob:
    """One training of a quantum head: its architecture, seed and training settings."""

    qubits: int
    seed: int
    encoders: int = 2
    encoder_layers: int = 2
    layers: int = 2
    reuploads: int = 3
    final_layers: int = 1
    measured: int = 1
    epochs: int = 30
    patience: int = 6
    batch_size: int = 32
    lr: float = 0.02
    weight_decay: float = 0.0
    backend: str = "exact"
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return (f"head-q{self.qubits}-e{self.encoders}-l{self.layers}-r{self.reuploads}"
                f"-m{self.measured}-s{self.seed}")

    def config(self, in_features: int, num_classes: int) -> PQCHeadConfig:
        return PQCHeadConfig(in_features=in_features, num_classes=num_classes, encoders=self.encoders,
                             encoder_layers=self.encoder_layers, qubits=self.qubits, layers=self.layers,
                             reuploads=self.reuploads, final_layers=self.final_layers,
                             measured=self.measured, backend=self.backend, seed=self.seed)


@task(name="train-head", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="{job.name}")
def train_head(job: HeadJob, data: HeadData, root: str) -> dict[str, Any]:
    """Train one PQC head with early stopping on validation accuracy; evaluate it on the test split."""
    key = hash_json({"data": data.key, "job": asdict(job), "kind": "pqc_head", "v": 1})
    if (cached := cached_result(root, key)) is not None:
        get_run_logger().info("%s: finished before, reusing %s", job.name, key[:12])
        return cached
    one_thread_per_task()
    log = get_run_logger()

    report = progress_artifact(job.name, job.epochs)

    def progress(epoch: int, m: dict[str, float]) -> None:
        note = (f"epoch {epoch}/{job.epochs}: loss {m['loss']:.4f}, train acc {m['accuracy']:.3f}, "
                f"val acc {m['val_accuracy']:.3f}")
        log.info("%s %s", job.name, note)
        report(epoch, note)

    t0 = time.perf_counter()
    with dask_client_for(job.backend) as client:
        model = PQCHead(job.config(data.train_x.shape[1], len(data.label_names)), **job.backend_options,
                        **({"client": client} if client is not None else {}))
        history = train(model, data.train_x, data.train_y, None, epochs=job.epochs, batch_size=job.batch_size,
                        lr=job.lr, seed=job.seed, alpha=0.0, on_epoch=progress, val=(data.val_x, data.val_y),
                        patience=job.patience, weight_decay=job.weight_decay)
    seconds = time.perf_counter() - t0
    report(job.epochs, f"done: {len(history)} epochs, best validation epoch {history[-1]['best_epoch']}")
    model = model.with_backend("exact") if job.backend != "exact" else model
    metrics = evaluate(model, data.test_x, data.test_y)
    result = {
        "name": job.name, "kind": "PQC head", "job": asdict(job),
        "metrics": {**metrics, "train_seconds": seconds, "val_accuracy": max(h["val_accuracy"] for h in history),
                    "epochs_run": len(history), "best_epoch": history[-1]["best_epoch"]},
        "params": model.parameter_counts(),
        "history": {k: [h[k] for h in history] for k in history[0]},
        "test_predictions": model_predictions(model, data.test_x),
    }
    stored = store_result(root, key, model, result, {"teacher.json": {  # read by `qllm predict`
        "teacher": data.encoder, "label_names": list(data.label_names)}})
    log.info("%s: test accuracy %.4f after %d epochs", job.name, metrics["accuracy"], len(history))
    return stored


@task(name="classical-heads", retries=1, cache_policy=NO_CACHE, task_run_name="classical-heads-s{seed}")
def classical_heads(data: HeadData, seed: int, target_params: int, epochs: int, patience: int,
                    batch_size: int, lr: float) -> list[dict[str, Any]]:
    """Logistic regression, a linear SVM and an MLP of about the quantum head's size, on the same
    embeddings; the MLP trains like the head (Adam, early stopping on the same validation set)."""
    one_thread_per_task()
    c, d = len(data.label_names), data.train_x.shape[1]
    linear = linear_size(d, c)
    rows = []
    for kind, fit in (("logistic regression", logistic_regression), ("linear SVM", linear_svm)):
        t0 = time.perf_counter()
        logits = fit(data.train_x, data.train_y, data.test_x, seed=seed)
        metrics = {**classification_metrics(logits.argmax(-1).numpy(), data.test_y),
                   "train_seconds": time.perf_counter() - t0}
        rows.append({"name": f"{kind} s{seed}", "kind": kind, "seed": seed, "metrics": metrics,
                     "params": {"circuit": 0, "classical": linear, "total": linear}})
    t0 = time.perf_counter()
    mlp = matched_mlp(d, c, target_params, seed=seed)
    history = train(mlp, data.train_x, data.train_y, None, epochs=epochs, batch_size=batch_size, lr=lr,
                    seed=seed, alpha=0.0, val=(data.val_x, data.val_y), patience=patience)
    metrics = {**evaluate(mlp, data.test_x, data.test_y), "train_seconds": time.perf_counter() - t0}
    rows.append({"name": f"MLP (size-matched) s{seed}", "kind": "MLP (size-matched)", "seed": seed,
                 "metrics": metrics, "params": mlp.parameter_counts(),
                 "history": {k: [h[k] for h in history] for k in history[0]}})
    return rows


def head_size(data: HeadData, job: HeadJob) -> int:
    """Trainable parameters of the head a job builds: the size the MLP is matched to."""
    return PQCHead(job.config(data.train_x.shape[1], len(data.label_names))).parameter_counts()["total"]
