"""The noise ablation: trained models re-evaluated under finite shots, depolarizing noise and IBM
fake-device noise, with what each circuit costs on each device once transpiled.

Only the circuits meant for a quantum computer see noise (a PQC head's module 2; a QD-LLM
student's one circuit); the classical parts and the PQC head's module 1 stay exact. The feature
models are evaluated from the store in chunks (:func:`noisy_predictions`); any other model with
circuits, an adapted language model or a federated VQC, in one process (:func:`circuit_noise`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from qiskit import QuantumCircuit, transpile

from qcore.ablation import circuits_on
from qcore.models.base import QuantumModel, load_model
from qcore.simulators.aer import fake_backend
from qcore.training import train

from .artifacts import download_folder
from .params.noise import NoiseSetting
from .statistics import accuracy_interval
from .store import model_predictions


def transpiled_metrics(
    circuit: QuantumCircuit, device: str, *, optimization_level: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Depth, two-qubit gate count and physical qubits of ``circuit`` transpiled to ``device``."""
    backend = fake_backend(device)
    out = transpile(circuit, backend=backend, optimization_level=optimization_level, seed_transpiler=seed)
    two_qubit = sum(1 for inst in out.data if inst.operation.num_qubits == 2)
    used = {out.find_bit(q).index for inst in out.data for q in inst.qubits}
    return {
        "device": device,
        "depth": out.depth(),
        "two_qubit_gates": two_qubit,
        "qubits_used": len(used),
        "logical_depth": circuit.decompose().depth(),
        "logical_two_qubit_gates": sum(1 for inst in circuit.data if inst.operation.num_qubits == 2),
    }


def load_stored_model(model_url: str) -> QuantumModel:
    """A trained model from the artifact store."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_model(download_folder(model_url, Path(tmp) / "model"))


def noisy_predictions(
    model_url: str, test_x: np.ndarray, label: str, start: int, stop: int, seed: int, backend_options: dict[str, Any]
) -> dict[str, Any]:
    """Predictions of a trained model for test samples ``start:stop`` on the `aer` backend
    (shots, depolarizing or device noise) beside its exact predictions."""
    model = load_stored_model(model_url)
    noisy = model.with_backend("aer", simulator_seed=seed + start, **backend_options)
    x = test_x[start:stop]
    t0 = time.perf_counter()
    noisy_pred = model_predictions(noisy, x)
    return {
        "label": label,
        "start": start,
        "noisy": noisy_pred,
        "exact": model_predictions(model, x),
        "seconds": time.perf_counter() - t0,
        "options": backend_options,
    }


def chunk_bounds(samples: int, available: int, workers: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of one chunk per worker over the first ``min(samples, available)`` samples."""
    n = min(samples, available)
    step = max(1, -(-n // workers))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def merge_noisy(chunks: list[dict[str, Any]], test_y: np.ndarray) -> dict[str, Any]:
    """One row per noise setting from its chunks: accuracy on the same samples, noisy and exact;
    the noisy accuracy with its 95 % bootstrap interval over those samples (a few hundred
    samples leave it several points wide)."""
    chunks = sorted(chunks, key=lambda c: c["start"])
    noisy = np.array([p for c in chunks for p in c["noisy"]])
    exact = np.array([p for c in chunks for p in c["exact"]])
    y = test_y[chunks[0]["start"] : chunks[0]["start"] + len(noisy)]
    interval = accuracy_interval([noisy.tolist()], y)
    return {
        "label": chunks[0]["label"],
        "samples": len(y),
        "accuracy": float((noisy == y).mean()),
        "accuracy_low": interval.low,
        "accuracy_high": interval.high,
        "exact_accuracy_same_samples": float((exact == y).mean()),
        "agreement_with_exact": float((noisy == exact).mean()),
        "seconds": sum(c["seconds"] for c in chunks),
        "options": chunks[0]["options"],
    }


def circuit_noise(
    model: torch.nn.Module,
    predict: Callable[[], list[int]],
    labels: np.ndarray,
    settings: list[NoiseSetting],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``predict()`` (the predictions for ``labels``' samples) with every circuit of ``model`` on
    `aer` under each setting (:func:`qcore.ablation.circuits_on`), beside its exact predictions:
    one row per setting, as :func:`merge_noisy` makes them, with the setting's kind and level in
    place of its options (the label names them)."""
    exact = predict()
    rows = []
    for s in settings:
        t0 = time.perf_counter()
        with circuits_on(model, "aer", simulator_seed=seed, **s.options):
            noisy = predict()
        seconds = time.perf_counter() - t0
        chunk = {"label": s.label, "start": 0, "noisy": noisy, "exact": exact, "seconds": seconds, "options": s.options}
        row = merge_noisy([chunk], labels)
        rows.append({"kind": s.kind, "level": s.level, **{k: v for k, v in row.items() if k != "options"}})
    return rows


def markdown(rows: list[dict[str, Any]], title: str, key: Callable[[dict[str, Any]], str]) -> str:
    """The rows of :func:`circuit_noise` as a table, one line per model (named by ``key``) and setting."""
    lines = [
        title,
        "",
        "| model | setting | samples | accuracy | exact accuracy | agreement with exact | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {key(r)} | {r['label']} | {r['samples']} | {r['accuracy']:.4f} | {r['exact_accuracy_same_samples']:.4f} | "
        f"{r['agreement_with_exact']:.4f} | {r['seconds']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def noisy_finetune(
    model_url: str,
    label: str,
    options: dict[str, Any],
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_x: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    dask_client: Any = None,
) -> dict[str, Any]:
    """Fine-tune a trained model for ``steps`` mini-batches under the noise itself (parameter
    shift on `aer`, its batches spread over ``dask_client`` when given), then predict ``eval_x``
    under the same noise."""
    model = load_stored_model(model_url)
    t0 = time.perf_counter()
    noisy = model.with_backend(
        "aer", simulator_seed=seed, **options, **({"client": dask_client} if dask_client is not None else {})
    )
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train_x), size=min(len(train_x), steps * batch_size), replace=False)
    history = train(
        noisy,
        torch.as_tensor(train_x[idx]),
        torch.as_tensor(train_y[idx]),
        None,
        epochs=1,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        alpha=0.0,
    )
    predictions = model_predictions(noisy, eval_x)
    return {
        "label": label,
        "predictions": predictions,
        "loss": history[-1]["loss"],
        "seconds": time.perf_counter() - t0,
    }
