"""``circuits_on``: a trained model's circuits evaluated on Aer (exact, with shots, with a fake
device's noise), with Qiskit as the reference; and ``factors_fixed``, which makes an adapter's
ΔW once, so a noisy evaluation runs its circuits once. The models are test_ablation's tiny ones."""

from __future__ import annotations

import pytest
import torch
from qiskit.quantum_info import Statevector

from qcore.ablation import circuits_on
from qcore.adapters.base import factors_fixed
from qcore.layer import QuantumLayer
from qcore.simulators.aer import AerShiftSimulator
from tests.test_ablation import CASES, qpa, qtha

# the head's module 1 runs exact only; the stand-ins have no circuit to move
DATA_CASES = [name for name in CASES if name != "pqc-head" and not name.endswith("-classical")]
SHOTS = 4000


@pytest.mark.parametrize("name", DATA_CASES)
@torch.no_grad()
def test_exact_aer_gives_the_exact_engines_outputs(name: str) -> None:
    case = CASES[name]()
    exact = case.model(case.evaluate)
    with circuits_on(case.model, "aer") as layers:
        assert layers and all(isinstance(layer.simulator, AerShiftSimulator) for layer in layers)
        on_aer = case.model(case.evaluate)
    torch.testing.assert_close(on_aer.to(exact.dtype), exact, rtol=0, atol=1e-5)


@torch.no_grad()
def test_qpa_probabilities_on_aer_are_qiskits() -> None:
    layer = qpa().model.model[0].generator.circuit
    bound = layer.circuit.assign_parameters(dict(zip(layer.weight_parameters, layer.weights.tolist(), strict=True)))
    reference = torch.tensor(Statevector(bound).probabilities(), dtype=torch.float64)
    with circuits_on(layer, "aer"):
        torch.testing.assert_close(layer()[0].double(), reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer()[0].double(), reference, rtol=0, atol=1e-6)  # exact, on exit


@torch.no_grad()
def test_shot_estimates_are_within_shot_noise() -> None:
    """QPA's probabilities and QTHA's ⟨Z⟩ estimated from shots: every entry within five standard
    errors, sqrt(p(1 − p)/N) and sqrt((1 − ⟨Z⟩²)/N)."""
    gen = qpa().model.model[0].generator
    p = gen.circuit()[0].double()
    with circuits_on(gen, "aer", shots=SHOTS, simulator_seed=3):
        p_hat = gen.circuit()[0].double()
    assert (p_hat - p).abs().max() > 0  # sampled, not exact
    assert ((p_hat - p).abs() <= 5 * (p * (1 - p) / SHOTS).sqrt() + 1e-9).all()

    layer = qtha().model.model[0]
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    z = layer.qnn(x).double()
    with circuits_on(layer, "aer", shots=SHOTS, simulator_seed=3):
        z_hat = layer.qnn(x).double()
    assert (z_hat - z).abs().max() > 0
    assert ((z_hat - z).abs() <= 5 * ((1 - z**2) / SHOTS).sqrt() + 1e-9).all()


@torch.no_grad()
def test_fake_device_noise_moves_the_outputs() -> None:
    """Transpiled to the device with its noise (exact expectations, so the difference is noise,
    not sampling): QPA's probabilities and QTHA's ⟨Z⟩ move, but stay near the ideal ones."""
    gen = qpa().model.model[0].generator
    p = gen.circuit()[0].double()
    with circuits_on(gen, "aer", noise="fake_manila"):
        p_noisy = gen.circuit()[0].double()
    assert 1e-3 < (p_noisy - p).abs().max() < 0.3
    torch.testing.assert_close(p_noisy.sum(), torch.tensor(1.0, dtype=torch.float64))

    layer = qtha().model.model[0]
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    z = layer.qnn(x).double()
    with circuits_on(layer, "aer", noise="fake_manila"):
        z_noisy = layer.qnn(x).double()
    assert 1e-3 < (z_noisy - z).abs().max() < 0.5


@torch.no_grad()
def test_the_model_runs_exact_again_on_exit_even_after_an_error() -> None:
    case = CASES["vqc"]()
    layer = next(m for m in case.model.modules() if isinstance(m, QuantumLayer))
    simulator, before = layer.simulator, case.model(case.evaluate)
    with pytest.raises(RuntimeError, match="inside"), circuits_on(case.model, "aer", shots=100):
        assert layer.backend == "aer"
        raise RuntimeError("inside")
    assert layer.backend == "exact" and layer.simulator is simulator
    assert dict(layer.named_modules())["simulator"] is simulator  # a child module again
    assert torch.equal(case.model(case.evaluate), before)
    with pytest.raises(ValueError, match="shots must be a positive integer"), circuits_on(case.model, "aer", shots=0):
        pass
    assert layer.simulator is simulator  # a bad option is refused before anything is swapped
    with pytest.raises(ValueError, match="Linear has no quantum layer"), circuits_on(torch.nn.Linear(2, 2)):
        pass


@torch.no_grad()
def test_each_layer_samples_with_its_own_seed() -> None:
    """Two layers with the same circuit and weights draw different shots; the same seed repeats."""
    twins = torch.nn.ModuleList([qpa().model.model[0].generator.circuit for _ in range(2)])

    def sample(seed: int) -> list[torch.Tensor]:
        with circuits_on(twins, "aer", shots=200, simulator_seed=seed):
            return [layer()[0] for layer in twins]

    first, second = sample(7)
    assert not torch.equal(first, second)
    assert all(torch.equal(a, b) for a, b in zip(sample(7), [first, second], strict=True))


def test_fixed_factors_run_the_circuit_once(monkeypatch: pytest.MonkeyPatch) -> None:
    case = qtha()
    calls = []
    original = QuantumLayer.forward
    monkeypatch.setattr(QuantumLayer, "forward", lambda self, *a: calls.append(1) or original(self, *a))
    with torch.no_grad():
        live = case.model(case.evaluate)
        calls.clear()
        with circuits_on(case.model, "aer", shots=100, simulator_seed=0), factors_fixed(case.model):
            first, second = case.model(case.evaluate), case.model(case.evaluate[:2])
        assert len(calls) == 1  # ΔW made once on entry, not once per batch
        assert torch.equal(first[:2], second) and not torch.equal(first, live)  # one sampled ΔW
        assert torch.equal(case.model(case.evaluate), live)  # exact and generated per pass again
