"""The noise ablation: trained models re-evaluated under finite shots, depolarizing noise and IBM
fake-device noise, with what each circuit costs on each device once transpiled.

Only the circuits meant for a quantum computer see noise (a PQC head's module 2; a QD-LLM
student's one circuit); the classical parts and the PQC head's module 1 stay exact.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from qiskit import QuantumCircuit, transpile

from qcore.models.base import load_model
from qcore.simulators.aer import fake_backend
from qcore.training import train

from .artifacts import download_folder
from .train import dask_client_for, model_predictions, one_thread_per_task


@dataclass(frozen=True)
class NoiseSetting:
    """One column of the ablation: a label, the `aer` options, and a number for the x axis."""

    label: str
    kind: str  # "shots", "depolarizing" or "device"
    options: dict[str, Any]
    level: float  # shots for "shots", p for "depolarizing", 0 for "device"


def noise_settings(shots: list[int], depolarizing: list[float], devices: list[str],
                   device_shots: int) -> list[NoiseSetting]:
    """Finite shots alone, depolarizing ``p`` after every gate (exact expectations), and each
    fake device's calibrated noise with ``device_shots`` shots."""
    out = [NoiseSetting(f"shots={s}", "shots", {"shots": s}, s) for s in shots]
    out += [NoiseSetting(f"depolarizing={p:g}", "depolarizing", {"depolarizing": p}, p) for p in depolarizing]
    out += [NoiseSetting(f"{d}+shots={device_shots}", "device", {"noise": d, "shots": device_shots}, 0.0)
            for d in devices]
    return out


def transpiled_metrics(circuit: QuantumCircuit, device: str, *, optimization_level: int = 1,
                       seed: int = 0) -> dict[str, Any]:
    """Depth, two-qubit gate count and physical qubits of ``circuit`` transpiled to ``device``."""
    backend = fake_backend(device)
    out = transpile(circuit, backend=backend, optimization_level=optimization_level, seed_transpiler=seed)
    two_qubit = sum(1 for inst in out.data if inst.operation.num_qubits == 2)
    used = {out.find_bit(q).index for inst in out.data for q in inst.qubits}
    return {"device": device, "depth": out.depth(), "two_qubit_gates": two_qubit,
            "qubits_used": len(used), "logical_depth": circuit.decompose().depth(),
            "logical_two_qubit_gates": sum(1 for inst in circuit.data if inst.operation.num_qubits == 2)}


@task(name="noisy-finetune", retries=1, cache_policy=NO_CACHE, task_run_name="finetune-{label}")
def noisy_finetune(model_url: str, label: str, options: dict[str, Any], train_x: np.ndarray,
                   train_y: np.ndarray, eval_x: np.ndarray, *, steps: int, batch_size: int, lr: float,
                   seed: int) -> dict[str, Any]:
    """Fine-tune a trained model for ``steps`` mini-batches under the noise itself (parameter
    shift on `aer`), then predict ``eval_x`` under the same noise."""
    one_thread_per_task()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(download_folder(model_url, Path(tmp) / "model"))
    t0 = time.perf_counter()
    with dask_client_for("aer") as client:
        noisy = model.with_backend("aer", simulator_seed=seed, **options,
                                   **({"client": client} if client is not None else {}))
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(train_x), size=min(len(train_x), steps * batch_size), replace=False)
        history = train(noisy, torch.as_tensor(train_x[idx]), torch.as_tensor(train_y[idx]), None,
                        epochs=1, batch_size=batch_size, lr=lr, seed=seed, alpha=0.0)
        predictions = model_predictions(noisy, eval_x)
    get_run_logger().info("fine-tuned under %s for %d steps in %.1fs", label, steps, time.perf_counter() - t0)
    return {"label": label, "predictions": predictions, "loss": history[-1]["loss"],
            "seconds": time.perf_counter() - t0}
