"""The PQC head against Qiskit, its persistence and backends, early stopping, the few-shot split
and the transpiled-cost report of the noise ablation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from qiskit.quantum_info import SparsePauliOp, Statevector

from lab.data import DataError, Dataset, few_shot
from lab.noise import transpiled_metrics
from qcore.layer import z_observables
from qcore.models import PQCHead, PQCHeadConfig, load_model
from qcore.training import train

D = 20  # embedding width: 5 encoder qubits (32 amplitudes, 12 of them padding)


def _features(n: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, D)), dtype=torch.float64)


def _head(**kw: object) -> PQCHead:
    return PQCHead(PQCHeadConfig(in_features=D, num_classes=3, qubits=4, dtype="complex128", seed=1, **kw))


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"encoders": 3}, "encoders=3 is invalid; allowed 0..2"),
        ({"measured": 5}, "measured=5 is invalid; allowed 1..qubits=4"),
        ({"offsets": (1, 4)}, "offsets=[1, 4]"),
        ({"reuploads": 0}, "reuploads=0 is invalid"),
        ({"dtype": "float32"}, "dtype must be one of"),
        ({"readout_scale": "sqrt"}, "readout_scale='sqrt' is unknown"),
    ],
)
def test_bad_config_is_refused_naming_the_value(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PQCHeadConfig(in_features=D, num_classes=2, qubits=4, **kw)


@pytest.mark.parametrize("readout_scale,factor", [("none", 1.0), ("sqrt_dim", math.sqrt(32))])
def test_module1_is_amplitude_encoding_then_the_pqc(readout_scale: str, factor: float) -> None:
    """Each encoder's readout equals Qiskit: the padded, normalised embedding as the state,
    the encoder circuit applied, ⟨Z_i⟩ on every qubit (times 2^(q/2) with ``sqrt_dim``)."""
    head = _head(encoders=2, readout_scale=readout_scale)
    x = _features(3)
    got = head.module1(x).detach().numpy()
    circuit = head.config.encoder_circuit()
    for e, enc in enumerate(head.encoders):
        bound = circuit.circuit.assign_parameters(dict(zip(circuit.weights, enc.weights.detach().numpy(), strict=True)))
        for i, row in enumerate(x.numpy()):
            amp = np.pad(row, (0, 32 - D)) / np.linalg.norm(row)
            state = Statevector(amp).evolve(bound)
            want = [state.expectation_value(o).real * factor for o in z_observables(5)]
            np.testing.assert_allclose(got[i, 5 * e : 5 * e + 5], want, atol=1e-9)


def test_module2_and_readout_match_statevector() -> None:
    head = _head(measured=2, reuploads=2)
    x = _features(2)
    angles = head.angles(x).detach()
    z = head.module2(angles).detach().numpy()
    m2 = head.config.module2_circuit()
    for i in range(2):
        values = dict(zip(m2.inputs, angles[i].numpy(), strict=True)) | dict(
            zip(m2.weights, head.module2.weights.detach().numpy(), strict=True)
        )
        state = Statevector(m2.circuit.assign_parameters(values))
        want = [state.expectation_value(SparsePauliOp(label)).real for label in ("IIIZ", "IIZI")]
        np.testing.assert_allclose(z[i], want, atol=1e-9)
    assert torch.allclose(head(x), head.head(torch.as_tensor(z)))
    assert len(m2.weights) == 4 * 2 + 4 * 1  # PQC-1 shared by both re-uploads, then PQC-2


@pytest.mark.parametrize("encoders", [0, 1, 2])
def test_every_parameter_gets_a_gradient(encoders: int) -> None:
    head = _head(encoders=encoders)
    torch.nn.functional.cross_entropy(head(_features(8)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    counts = head.parameter_counts()
    assert counts["circuit"] == encoders * 5 * 2 + 4 * 2 + 4
    assert counts["total"] == counts["circuit"] + ((encoders * 5 if encoders else D) + 1) * 4 + (1 + 1) * 3


@pytest.mark.parametrize("in_features", [20, 384])
@pytest.mark.parametrize("readout_scale,low,high", [("none", 0.05, 0.2), ("sqrt_dim", 1.2, 2.5)])
def test_initial_angle_spread(in_features: int, readout_scale: str, low: float, high: float) -> None:
    """Across random unit-norm embeddings, the std of each initial angle: ~0.1 rad by default
    (module 2 starts smooth), ~1.8 rad with the previous ``sqrt_dim`` rescale."""
    x = torch.nn.functional.normalize(torch.randn(512, in_features, generator=torch.Generator().manual_seed(0)), dim=-1)
    for seed in range(3):
        head = PQCHead(PQCHeadConfig(in_features=in_features, num_classes=2, seed=seed, readout_scale=readout_scale))
        with torch.no_grad():
            spread = head.angles(x).std(dim=0).mean().item()
        assert low < spread < high, (seed, spread)


def _two_directions(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy embeddings pointing along axis 0 (class 0) or axis 1 (class 1)."""
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[torch.arange(n), y] += 1.0
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_head_learns_a_separable_task(seed: int) -> None:
    """Module 1's readouts are quadratic in the embedding, so the classes differ in direction."""
    x, y = _two_directions(96, seed=0)
    head = PQCHead(PQCHeadConfig(in_features=D, num_classes=2, qubits=4, dtype="complex128", seed=seed))
    history = train(head, x, y, None, epochs=12, batch_size=16, lr=0.05, alpha=0.0)
    # (after 8 epochs: 0.62-0.70 train accuracy with the previous sqrt_dim start, 0.89-1.0 by default)
    assert history[-1]["accuracy"] >= 0.9, [round(h["accuracy"], 2) for h in history]


def test_a_head_saved_before_readout_scale_loads_with_the_old_rescale(tmp_path: Path) -> None:
    old = _head(readout_scale="sqrt_dim")
    folder = old.save(tmp_path / "head")
    raw = json.loads((folder / "config.json").read_text())
    del raw["readout_scale"]  # as written before the field existed
    (folder / "config.json").write_text(json.dumps(raw))
    loaded = load_model(folder)
    assert isinstance(loaded, PQCHead) and loaded.config.readout_scale == "sqrt_dim"
    assert torch.allclose(loaded(_features(4)), old(_features(4)))


def test_save_load_and_aer_module2_agree(tmp_path: Path) -> None:
    head = _head()
    x = _features(4)
    loaded = load_model(head.save(tmp_path / "head"))
    assert isinstance(loaded, PQCHead) and loaded.config == head.config
    assert torch.allclose(loaded(x), head(x))
    assert {"module2.qasm", "encoder.qasm", "weights.safetensors", "config.json"} <= {
        f.name for f in (tmp_path / "head").iterdir()
    }
    on_aer = head.with_backend("aer")  # module 2 on Aer, exact expectations: the same numbers
    assert on_aer.encoders[0].backend == "exact" and on_aer.module2.backend == "aer"
    assert torch.allclose(on_aer(x), head(x), atol=1e-6)


def test_early_stopping_restores_the_best_epoch() -> None:
    torch.manual_seed(0)
    x = torch.randn(60, 4)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    val_x, val_y = torch.randn(30, 4), torch.randint(0, 2, (30,))  # unrelated labels: no steady gain
    history = train(model, x, y, None, epochs=40, lr=0.05, alpha=0.0, val=(val_x, val_y), patience=3)
    best = history[-1]["best_epoch"]
    assert len(history) == best + 3 or len(history) == 40
    assert max(h["val_accuracy"] for h in history) == history[best - 1]["val_accuracy"]
    restored = (model(val_x).argmax(-1) == val_y).float().mean().item()
    assert restored == pytest.approx(history[best - 1]["val_accuracy"])
    with pytest.raises(ValueError, match="patience=2 needs val"):
        train(model, x, y, None, epochs=1, alpha=0.0, patience=2)


def _dataset(n_per_class: int) -> Dataset:
    texts = [f"text {i}" for i in range(3 * n_per_class)]
    labels = np.repeat(np.arange(3), n_per_class)
    return Dataset(
        name="toy",
        source="toy",
        label_names=("a", "b", "c"),
        train_texts=texts,
        train_labels=labels,
        test_texts=["t"],
        test_labels=np.array([0]),
        split={},
    )


def test_few_shot_takes_per_label_and_tests_on_the_rest() -> None:
    data = _dataset(10)
    shot = few_shot(data, 4, seed=1)
    assert np.bincount(shot.train_labels).tolist() == [4, 4, 4]
    assert sorted(shot.train_texts + shot.test_texts) == sorted(data.train_texts)  # disjoint, complete
    assert few_shot(data, 4, seed=1).content_hash == shot.content_hash
    assert few_shot(data, 4, seed=2).content_hash != shot.content_hash
    assert len(few_shot(data, 4, test_size=9, seed=1).test_texts) == 9
    with pytest.raises(DataError, match="per_label=10 leaves no test rows"):
        few_shot(data, 10)


def test_transpiled_metrics_count_device_gates() -> None:
    circuit = PQCHeadConfig(in_features=D, num_classes=2, qubits=4).module2_circuit().circuit
    m = transpiled_metrics(circuit, "fake_manila")
    assert m["qubits_used"] >= 4 and m["two_qubit_gates"] >= m["logical_two_qubit_gates"] > 0
    assert m["depth"] > 0 and m["device"] == "fake_manila"
