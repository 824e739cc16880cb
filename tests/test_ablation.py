"""The quantum-contribution ablation (``qcore.ablation``) over every model with a circuit: inside
``circuit_replaced`` the circuits' parameters no longer matter, on exit the model is exactly as
before, and ``circuit_mean`` is the mean of each circuit's output over the given inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from qcore.ablation import (
    STANDIN_TOLERANCE,
    ClassicalStandin,
    FixedMap,
    circuit_mean,
    circuit_replaced,
    circuit_sites,
)
from qcore.adapters import adapt, load_adapter
from qcore.adapters.base import AdapterConfig
from qcore.adapters.counting import compare
from qcore.adapters.qpa import QPAConfig, QPAModel
from qcore.adapters.qtha import QTHAConfig, QTHAModel
from qcore.circuits import zz_feature_inputs
from qcore.federated import VQCClassifier, VQCConfig
from qcore.layer import QuantumLayer
from qcore.models import PQCHead, PQCHeadConfig, QDLLMConfig, QDLLMStudent, load_model
from qcore.names import CIRCUITS
from qcore.training import train


def _x(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@dataclass
class Case:
    model: nn.Module
    inputs: torch.Tensor | None  # what circuit_mean averages over (None: the circuit reads no data)
    evaluate: torch.Tensor  # what the model is run on
    means: Callable[[], dict[str, torch.Tensor]]  # the expected means, computed by hand


def qdllm() -> Case:
    model = QDLLMStudent(QDLLMConfig(in_features=6, num_classes=3, qubits=3, blocks=1, dtype="complex128", seed=1))
    x = _x(20, 6, 0)
    return Case(model, x, _x(5, 6, 1), lambda: {"": model.quantum(model.angles(x)).mean(0)})


def pqc_head() -> Case:
    model = PQCHead(PQCHeadConfig(in_features=6, num_classes=2, qubits=3, dtype="complex128", seed=1))
    x = _x(20, 6, 0)
    return Case(model, x, _x(5, 6, 1), lambda: {"": model.module2(model.angles(x)).mean(0)})


def vqc() -> Case:
    model = VQCClassifier(VQCConfig(qubits=3, dtype="complex128", init_angle=None, seed=1))
    x = _x(20, 3, 0)

    def means() -> dict[str, torch.Tensor]:
        probs = torch.real(model.quantum(zz_feature_inputs(x))).mean(0)  # 8 basis states, class = state mod 2
        return {"": torch.stack([probs[0::2].sum(), probs[1::2].sum()])}

    return Case(model, x, _x(5, 3, 1), means)


def _linear() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 6))


def qpa(circuit: str = "quantum") -> Case:
    torch.manual_seed(0)
    config = QPAConfig(target_modules=["0"], r=2, chunk_size=4, hidden_sizes=[8], dropout=0.0, circuit=circuit)
    model = QPAModel(_linear(), config)  # 6·2 + 2·8 = 28 numbers: 7 chunks on 3 qubits
    gen = model.model[0].generator
    probs = (lambda: gen.standin(torch.ones(1, 1))) if circuit == "classical" else gen.circuit
    return Case(model, None, _x(5, 8, 1, torch.float32), lambda: {"model.0.generator": probs()[0].mean(0)[None]})


def qtha(circuit: str = "quantum") -> Case:
    torch.manual_seed(0)
    config = QTHAConfig(
        target_modules=["0"], r=2, qubits=2, layers=1, bond_dim=2, cores=2, dropout=0.0, circuit=circuit
    )
    model = QTHAModel(_linear(), config)
    layer = model.model[0]
    with torch.no_grad():
        layer.up.cores[-1].normal_()  # A starts at zero, which would hide B and the QNN entirely

    def means() -> dict[str, torch.Tensor]:
        b = layer.down.matrix()
        q = layer.qnn(torch.cat([b.T / layer.tau, torch.zeros(1, 2)]))
        return {"model.0": (q[:-1] - q[-1]).mean(0)}

    return Case(model, None, _x(5, 8, 1, torch.float32), means)


CASES = {
    "qdllm": qdllm,
    "pqc-head": pqc_head,
    "vqc": vqc,
    "qpa": qpa,
    "qtha": qtha,
    "qpa-classical": lambda: qpa("classical"),  # the adapters' stand-ins are sites too
    "qtha-classical": lambda: qtha("classical"),
}


def _circuit_weights(model: nn.Module) -> list[torch.Tensor]:
    """The circuits' angles, or their classical stand-ins' parameters."""
    return [p for m in model.modules() if isinstance(m, QuantumLayer | ClassicalStandin) for p in m.parameters()]


def _perturb(model: nn.Module) -> list[torch.Tensor]:
    """Shift every circuit angle (every stand-in parameter); returns the previous values."""
    weights = _circuit_weights(model)
    saved = [w.clone() for w in weights]
    with torch.no_grad():
        for w in weights:
            w.add_(0.7)
    return saved


def _restore(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for w, s in zip(_circuit_weights(model), saved, strict=True):
            w.copy_(s)


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_replaced_circuits_do_not_matter_and_the_model_is_restored(name: str) -> None:
    case = CASES[name]()
    before = case.model(case.evaluate)
    means = circuit_mean(case.model, case.inputs)
    with circuit_replaced(case.model, means):
        ablated = case.model(case.evaluate)
        assert not torch.allclose(ablated, before)  # the circuit did matter
        saved = _perturb(case.model)
        assert torch.equal(case.model(case.evaluate), ablated)
        _restore(case.model, saved)
    assert torch.equal(case.model(case.evaluate), before)
    assert all(site.frozen_circuit is None for site in circuit_sites(case.model).values())
    _perturb(case.model)
    assert not torch.allclose(case.model(case.evaluate), before)  # the circuit is live again


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_circuit_mean_is_the_mean_over_the_inputs(name: str) -> None:
    case = CASES[name]()
    got = circuit_mean(case.model, case.inputs, batch_size=7)  # uneven batches: 7, 7, 6
    want = case.means()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("circuit", CIRCUITS)
def test_qpa_mean_is_the_uniform_entry(circuit: str) -> None:
    (mean,) = circuit_mean(qpa(circuit).model).values()
    torch.testing.assert_close(mean, torch.tensor([1 / 8]))


@pytest.mark.parametrize("circuit", CIRCUITS)
@torch.no_grad()
def test_qtha_with_the_qnn_removed_is_its_mpo_path(circuit: str) -> None:
    model = qtha(circuit).model
    layer = model.model[0]
    with circuit_replaced(model, 0.0):
        a, b = layer.factors()
    assert torch.equal(a, layer.up.matrix()) and torch.equal(b, layer.down.matrix())
    assert not torch.equal(layer.factors()[1], b)  # outside, the QNN corrects B


def test_bad_ablations_are_refused() -> None:
    case = qdllm()
    with pytest.raises(ValueError, match="give the inputs to average over"):
        circuit_mean(case.model)
    bad = circuit_replaced(case.model, {"quantum": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"\['quantum'\] are not circuit sites of QDLLMStudent"):
        bad.__enter__()
    with pytest.raises(ValueError, match="Linear has no circuit site"):
        circuit_mean(nn.Linear(2, 2), torch.zeros(1, 2))


# --- the classical stand-in (circuit="classical") ---------------------------------------------


def _twins(name: str, **kw: object) -> tuple[nn.Module, nn.Module]:
    """The model with its circuit and with the classical stand-in, from the same config."""
    build = {
        "qdllm": lambda c: QDLLMStudent(QDLLMConfig(in_features=6, num_classes=2, circuit=c, **kw)),
        "pqc-head": lambda c: PQCHead(PQCHeadConfig(in_features=20, num_classes=2, circuit=c, **kw)),
        "vqc": lambda c: VQCClassifier(VQCConfig(circuit=c, **kw)),
    }[name]
    return build("quantum"), build("classical")


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name,kw",
    [
        ("qdllm", {}),  # the paper's 11 qubits, 2 blocks: 144 angles
        ("qdllm", {"qubits": 4, "blocks": 1}),
        ("qdllm", {"qubits": 6, "blocks": 3}),
        ("pqc-head", {}),  # 8 qubits, PQC-1 2 layers + PQC-2 1 layer: 24 angles, 1 measured
        ("pqc-head", {"qubits": 4, "measured": 2}),
        ("pqc-head", {"qubits": 10, "layers": 4, "final_layers": 2}),
        ("vqc", {}),  # the paper's 4 qubits, reps 3: 16 angles
        ("vqc", {"qubits": 3, "num_classes": 3}),  # 12 angles
    ],
)
def test_the_standin_has_about_the_circuits_parameter_count(name: str, kw: dict) -> None:
    quantum, classical = _twins(name, **kw)
    hardware = quantum.module2 if name == "pqc-head" else quantum.quantum
    angles, standin = hardware.weights.numel(), _size(classical.standin)
    assert abs(standin - angles) <= 0.1 * angles, (standin, angles)
    assert _size(classical) - standin == _size(quantum) - angles  # everything else is the same
    assert not any(isinstance(m, QuantumLayer) for m in classical.standin.modules())


def _separable(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy directions (module 1 of the PQC head reads directions, not signs)."""
    y = torch.arange(n) % 2
    x = 0.2 * _x(n, d, seed)
    x[torch.arange(n), y] += 1.0
    return x, y


@pytest.mark.parametrize("name,features", [("qdllm", 6), ("pqc-head", 20), ("vqc", 4)])
def test_the_standin_trains_the_same_way(name: str, features: int) -> None:
    _, model = _twins(name, seed=1)
    x, y = _separable(96, features, seed=0)
    history = train(model, x, y, None, epochs=15, batch_size=16, lr=0.05, alpha=0.0)
    assert history[-1]["accuracy"] >= 0.9, [round(h["accuracy"], 2) for h in history]
    means = circuit_mean(model, x)  # the mean ablation applies to the stand-in too
    with circuit_replaced(model, means), torch.no_grad():
        assert len(set(model(x).argmax(-1).tolist())) == 1


def test_a_classical_student_saves_no_circuit_and_has_no_hardware_layer(tmp_path) -> None:
    _, model = _twins("qdllm", qubits=3, blocks=1)
    folder = model.save(tmp_path / "student")
    assert not list(folder.glob("*.qasm"))
    loaded = load_model(folder)
    x = _x(4, 6, 0)
    assert torch.equal(loaded(x), model(x))
    assert model.parameter_counts()["circuit"] == 0
    with pytest.raises(ValueError, match="classical stand-in for its circuit"):
        model.hardware_layer  # noqa: B018


# --- the adapters' stand-ins: QPA's probabilities, QTHA's QNN ----------------------------------


def _adapter(circuit: str, method: str, **kw: object) -> AdapterConfig:
    config = QPAConfig if method == "qpa" else QTHAConfig
    return config(**{"target_modules": ["0"], "r": 2, "dropout": 0.0, "circuit": circuit, **kw})


def _layer(width: int = 64) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(width, width))


@pytest.mark.parametrize(
    "method,kw,angles",
    [
        ("qpa", {"chunk_size": 8}, 40),  # 256 numbers: 32 chunks, 5 qubits × depth 8 for 32 states
        ("qpa", {"chunk_size": 64, "depth": 3}, 6),  # 4 chunks: 2 qubits × 3
        ("qtha", {}, 16),  # 4 qubits × 2 layers of RY, RZ
        ("qtha", {"qubits": 4, "layers": 3}, 24),
        ("qtha", {"qubits": 3, "layers": 2}, 12),
    ],
)
def test_an_adapters_standin_has_the_circuits_parameter_count(method: str, kw: dict, angles: int) -> None:
    models = [adapt(_layer(), _adapter(c, method, **kw)) for c in CIRCUITS]
    quantum, classical = models
    standins = [m for m in classical.modules() if isinstance(m, ClassicalStandin)]
    assert len(standins) == 1 and not any(isinstance(m, QuantumLayer) for m in classical.modules())
    (circuit,) = _circuit_weights(quantum)
    standin = _size(standins[0])
    assert circuit.numel() == angles
    if method == "qpa":  # exactly the angles, and a fixed map (a buffer, saved) to the 2ⁿ logits
        assert standin == angles and isinstance(standins[0].map, FixedMap)
        assert any(n.endswith("standin.map.weight") for n in classical.adapter_tensors())
    else:
        assert abs(standin - angles) <= STANDIN_TOLERANCE * angles, (standin, angles)
    trainable = {
        c: sum(p.numel() for p in m.trainable_parameters().values()) for c, m in zip(CIRCUITS, models, strict=True)
    }
    assert trainable["classical"] - standin == trainable["quantum"] - angles  # everything else is the same
    counts = compare(_layer, [_adapter(c, method, **kw) for c in CIRCUITS])
    assert [c.circuit for c in counts] == [angles, 0]  # a stand-in has no circuit angles
    assert [c.adapter for c in counts] == list(trainable.values())


@pytest.mark.parametrize("method", ["qpa", "qtha"])
def test_an_adapters_standin_trains_merges_and_is_ablated(method: str, tmp_path) -> None:
    kw = {"chunk_size": 8, "zero_start": True} if method == "qpa" else {"qubits": 3, "layers": 1}
    torch.manual_seed(0)
    model = adapt(_layer(16), _adapter("classical", method, **kw))  # QPA: 64 numbers, 8 chunks on 3 qubits
    layer = model.model[0]
    standin = next(m for m in model.modules() if isinstance(m, ClassicalStandin))
    before = {n: p.detach().clone() for n, p in standin.named_parameters()}
    x, target = _x(32, 16, 0, torch.float32), _x(32, 16, 1, torch.float32)
    optimizer = torch.optim.Adam(model.trainable_parameters().values(), lr=3e-2)
    for _ in range(5):
        (model(x) - target).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(p, before[n]) for n, p in standin.named_parameters())  # it trained
    with torch.no_grad():
        expected = model(x)
        assert layer.delta_weight().abs().max() > 1e-3
        means = circuit_mean(model)
        with circuit_replaced(model, means):
            ablated = model(x)
        assert not torch.allclose(ablated, expected, atol=1e-5)  # the stand-in mattered
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # and is live again
        folder = model.save_pretrained(tmp_path / "adapter")
        torch.testing.assert_close(load_adapter(_layer(16), folder)(x), expected, rtol=0, atol=0)
        model.merge()
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)  # merged: the same outputs
        plain = model.merge_and_unload()
        assert isinstance(plain[0], nn.Linear)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-5)
