"""The noise ablation of the methods whose circuits run in one process: a tiny QPA and QTHA
fine-tune of MiniLM (one adapted layer) with ΔW generated under shots and a fake device, and
the federated VQC's final global model; bad devices are refused before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from flows.peft import run_peft
from lab.methods.base import Hooks
from lab.methods.federated import FederatedParams, RunOutput, noisy_evaluation
from lab.methods.peft import PeftParams, fine_tune, preflight
from lab.methods.peft import noisy_evaluation as adapter_noisy_evaluation
from qcore.adapters import AdapterError
from qcore.federated.client_models import ModelSpec, build_model, get_weights
from qcore.federated.server import RunResult
from tests.test_finetune_setup import tiny_data

SAMPLES = 3


@pytest.mark.parametrize("method", ["qpa", "qtha"])
def test_a_fine_tune_is_evaluated_under_shots_and_a_fake_device(method: str, tmp_path: Path) -> None:
    params = PeftParams(
        methods=[method],
        target=["layer.0.attention.self.query"],  # one adapted layer: one circuit per setting
        steps=2,
        batch_size=4,
        noise_shots=[256],
        noise_depolarizing=[0.01],
        noise_devices=["fake_torino"],
        device_shots=256,
        noise_samples=SAMPLES,
    )
    data = tiny_data()
    (job,) = preflight(params, data).jobs
    result = fine_tune(job, data, str(tmp_path), Hooks())
    rows = adapter_noisy_evaluation(result, data, params.noise_settings(), params.noise_samples)
    assert [(r["method"], r["label"], r["kind"]) for r in rows] == [
        (method, "shots=256", "shots"),
        (method, "depolarizing=0.01", "depolarizing"),
        (method, "fake_torino+shots=256", "device"),
    ]
    labels = np.asarray(data.test_labels)[:SAMPLES]
    exact = float((np.array(result.test_predictions[:SAMPLES]) == labels).mean())
    for r in rows:
        assert r["samples"] == SAMPLES and 0 <= r["accuracy"] <= 1 and 0 <= r["agreement_with_exact"] <= 1
        assert r["exact_accuracy_same_samples"] == exact  # the stored adapter, reloaded, exact as trained


def test_federated_global_model_under_noise() -> None:
    spec = ModelSpec("vqc", 4, 2, seed=0)
    rng = np.random.default_rng(0)
    test = (rng.normal(size=(6, 4)), np.array([0, 1, 0, 1, 1, 0]))
    split = type("Split", (), {"dataset": "tiny", "partition": "iid", "test": test})()
    out = RunOutput(split, "adaptive", spec, RunResult(0.5, 0.7, [], get_weights(build_model(spec))))
    settings = FederatedParams(noise_shots=[128], noise_devices=["fake_manila"], device_shots=128).noise_settings()
    rows = noisy_evaluation(out, settings, samples=4)
    assert [(r["run"], r["label"], r["samples"]) for r in rows] == [
        ("adaptive", "shots=128", 4),
        ("adaptive", "fake_manila+shots=128", 4),
    ]
    with torch.no_grad():
        model = build_model(spec)
        exact = model(torch.as_tensor(test[0][:4], dtype=torch.float32)).argmax(-1).numpy()
    assert all(r["exact_accuracy_same_samples"] == (exact == test[1][:4]).mean() for r in rows)
    standin = ModelSpec("vqc", 4, 2, options={"circuit": "classical"})
    trained = RunResult(0.5, 0.7, [], get_weights(build_model(standin)))
    assert noisy_evaluation(RunOutput(split, "standin", standin, trained), settings, samples=4) == []


@pytest.mark.parametrize("build", [PeftParams, FederatedParams])
def test_unknown_devices_are_refused_by_the_parameter_models(build: type) -> None:
    with pytest.raises(ValidationError, match=r"unknown fake backend\(s\) \['fake_nowhere'\]; allowed: .*fake_torino"):
        build(noise_devices=["fake_nowhere"])
    with pytest.raises(ValidationError, match="shot counts \\[0\\] are invalid"):
        build(noise_shots=[0])


def test_devices_too_small_for_the_circuit_are_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "artifacts"
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(out))
    too_small = "noise_devices: fake_manila has 5 qubits; the widest adapter circuit needs 6"
    with pytest.raises(AdapterError, match=too_small):
        run_peft(PeftParams(methods=["qpa"], train_size=40, test_size=20, noise_devices=["fake_manila"]))
    assert not out.exists()  # nothing written, no server started
    with pytest.raises(ValidationError, match="fake_manila has 5 qubits; the client circuit needs 6"):
        FederatedParams(qubits=6, noise_devices=["fake_manila"])
