"""The `aer` backend against Qiskit's Statevector, finite differences and itself.

Reference values come from ``qiskit.quantum_info.Statevector`` on the bound circuit; gradients
from central differences of that reference (or of the backend itself where noise is involved).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.circuit.library import U2Gate
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel
from qiskit_aer.noise.device import basic_device_readout_errors

from qcore.layer import QuantumLayer, z_observables
from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
from qcore.simulators import build_simulator
from qcore.simulators.aer import (
    MIXTURE_OPTIONS,
    TRAJECTORIES,
    TRAJECTORY_OPTIONS,
    AerPlan,
    AerShiftSimulator,
    _simulation,
    execute,
    fake_backend,
    fake_backend_names,
    fake_backend_qubits,
    run_plan,
)

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------- circuits
def mixed_circuit() -> tuple[QuantumCircuit, ParameterVector, ParameterVector]:
    """rx/ry/rz/u/crx/rzz/cx with angles like 2θ + x."""
    x, w = ParameterVector("x", 2), ParameterVector("w", 6)
    qc = QuantumCircuit(3)
    qc.rx(2 * w[0] + x[0], 0)
    qc.ry(x[1], 1)
    qc.u(w[1], w[2] - x[0], 0.3, 2)
    qc.crx(w[3] + 0.5, 0, 1)
    qc.rzz(w[4], 1, 2)
    qc.cx(2, 0)
    qc.rz(3 * w[5] - 0.5 * x[1], 0)
    qc.h(1)
    return qc, x, w


def controlled_circuit() -> tuple[QuantumCircuit, ParameterVector, ParameterVector]:
    """The gates that need decomposing for the two-term rule, plus two-qubit Pauli rotations."""
    x, w = ParameterVector("x", 1), ParameterVector("w", 7)
    qc = QuantumCircuit(3)
    qc.h([0, 1, 2])
    qc.cry(w[0] + x[0], 0, 1)
    qc.crz(-w[1], 1, 2)
    qc.cp(w[2], 2, 0)
    qc.cu(w[3], w[4], x[0], w[5], 0, 2)
    qc.r(w[6], 0.5 * w[0], 1)
    qc.rxx(x[0], 0, 1)
    qc.ryy(w[1] + 1.0, 1, 2)
    qc.p(w[2] - x[0], 0)
    qc.append(U2Gate(w[4], 0.2), [2])
    return qc, x, w


OBSERVABLES = [
    SparsePauliOp.from_list([("ZII", 1.0), ("IXY", 0.5)]),
    SparsePauliOp("XXI"),
    SparsePauliOp.from_list([("III", 0.3), ("IIZ", -1.0), ("YZX", 0.7)]),
]
CIRCUITS = [mixed_circuit, controlled_circuit]


def bound(qc, x, w, xv, wv) -> QuantumCircuit:
    return qc.assign_parameters(dict(zip([*x, *w], [*xv, *wv], strict=True)))


def reference(qc, x, w, X, W, observables=OBSERVABLES) -> np.ndarray:
    """Statevector expectations, ``(batch, len(observables))``."""
    states = [Statevector(bound(qc, x, w, xv, W)) for xv in X]
    return np.array([[s.expectation_value(o).real for o in observables] for s in states])


def reference_probs(qc, x, w, X, W) -> np.ndarray:
    return np.array([Statevector(bound(qc, x, w, xv, W)).probabilities() for xv in X])


def aer(qc, x, w, observables=OBSERVABLES, **options) -> AerShiftSimulator:
    return build_simulator("aer", qc, inputs=x, weights=w, observables=observables, dtype=torch.float64, **options)


def random_inputs(x, w, batch=3) -> tuple[np.ndarray, np.ndarray]:
    return RNG.uniform(-np.pi, np.pi, (batch, len(x))), RNG.uniform(-np.pi, np.pi, len(w))


def vjp(fn, X, W, cotangent) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of ``sum(cotangent * fn(X, W))`` by central differences."""
    eps = 1e-5

    def loss(Xv, Wv):
        return float((cotangent * fn(Xv, Wv)).sum())

    gx = np.zeros_like(X)
    for idx in np.ndindex(*X.shape):
        d = np.zeros_like(X)
        d[idx] = eps
        gx[idx] = (loss(X + d, W) - loss(X - d, W)) / (2 * eps)
    gw = np.array([(loss(X, W + e) - loss(X, W - e)) / (2 * eps) for e in np.eye(len(W)) * eps])
    return gx, gw


def run_with_grad(sim, kind, X, W, cotangent):
    xt = torch.tensor(X, requires_grad=True)
    wt = torch.tensor(W, requires_grad=True)
    y = getattr(sim, kind)(xt, wt)
    (y * torch.tensor(cotangent)).sum().backward()
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


# --------------------------------------------------------------------------- exact path
@pytest.mark.parametrize("make", CIRCUITS)
def test_exact_expectations_and_probs_match_statevector(make):
    qc, x, w = make()
    X, W = random_inputs(x, w)
    sim = aer(qc, x, w)
    with torch.no_grad():
        y = sim.expval(torch.tensor(X), torch.tensor(W))
        p = sim.probs(torch.tensor(X), torch.tensor(W))
    assert y.dtype == torch.float64 and y.shape == (3, len(OBSERVABLES))
    np.testing.assert_allclose(y.numpy(), reference(qc, x, w, X, W), atol=1e-6)
    np.testing.assert_allclose(p.numpy(), reference_probs(qc, x, w, X, W), atol=1e-6)


@pytest.mark.parametrize("make", CIRCUITS)
@pytest.mark.parametrize("kind", ["expval", "probs"])
def test_parameter_shift_gradients_match_finite_differences(make, kind):
    qc, x, w = make()
    X, W = random_inputs(x, w)
    ref = (
        (lambda Xv, Wv: reference(qc, x, w, Xv, Wv))
        if kind == "expval"
        else (lambda Xv, Wv: reference_probs(qc, x, w, Xv, Wv))
    )
    cotangent = RNG.normal(size=ref(X, W).shape)
    _, gx, gw = run_with_grad(aer(qc, x, w), kind, X, W, cotangent)
    fx, fw = vjp(ref, X, W, cotangent)
    np.testing.assert_allclose(gx, fx, atol=1e-5)
    np.testing.assert_allclose(gw, fw, atol=1e-5)


def test_only_needed_shifts_are_run_in_one_job(monkeypatch):
    qc, x, w = mixed_circuit()
    X, W = random_inputs(x, w, batch=4)
    sim = aer(qc, x, w)
    runs = []  # parameter sets of every Aer job
    original = AerSimulator.run

    def counting_run(self, circuits, parameter_binds, **options):
        runs.append(len(next(iter(parameter_binds[0].values()))))
        return original(self, circuits, parameter_binds, **options)

    monkeypatch.setattr(AerSimulator, "run", counting_run)
    w_angles = int((sim.a_w != 0).any(axis=0).sum())
    live_angles = int(((sim.a_w != 0).any(axis=0) | (sim.a_x != 0).any(axis=0)).sum())
    assert live_angles < len(sim.const)  # constant angles (u's 0.3, ...) are never shifted
    with torch.no_grad():
        sim.expval(torch.tensor(X, requires_grad=True), torch.tensor(W, requires_grad=True))
    sim.expval(torch.tensor(X), torch.tensor(W, requires_grad=True))
    sim.expval(torch.tensor(X, requires_grad=True), torch.tensor(W, requires_grad=True))
    assert runs == [4, 4 * (1 + 2 * w_angles), 4 * (1 + 2 * live_angles)]


def test_complex_layer_dtype_gives_real_outputs_and_float32_grads():
    qc, x, w = mixed_circuit()
    sim = build_simulator("aer", qc, inputs=x, weights=w, observables=OBSERVABLES, dtype=torch.complex64)
    wt = torch.zeros(len(w), requires_grad=True)
    y = sim.expval(torch.zeros(2, len(x)), wt)
    y.sum().backward()
    assert y.dtype == torch.float32 and wt.grad.dtype == torch.float32


# --------------------------------------------------------------------------- shots
def test_shots_estimate_exact_values_and_repeat_with_seed():
    qc, x, w = mixed_circuit()
    X, W = random_inputs(x, w)
    shots = 20_000
    xt, wt = torch.tensor(X), torch.tensor(W)
    sim = aer(qc, x, w, shots=shots, simulator_seed=7)
    with torch.no_grad():
        y, p = sim.expval(xt, wt).numpy(), sim.probs(xt, wt).numpy()
        y_again = aer(qc, x, w, shots=shots, simulator_seed=7).expval(xt, wt).numpy()
        y_other = aer(qc, x, w, shots=shots, simulator_seed=8).expval(xt, wt).numpy()
    # a sum of Pauli terms with coefficients c has standard error <= sum|c| / sqrt(shots)
    bound = 5 * np.array([np.abs(o.coeffs).sum() for o in OBSERVABLES]) / np.sqrt(shots)
    assert (np.abs(y - reference(qc, x, w, X, W)) < bound).all()
    assert np.abs(p - reference_probs(qc, x, w, X, W)).max() < 5 * 0.5 / np.sqrt(shots)
    np.testing.assert_array_equal(y, y_again)
    assert not np.array_equal(y, y_other)


def test_shot_gradients_are_unbiased_estimates():
    qc, x, w = mixed_circuit()
    X, W = random_inputs(x, w, batch=1)
    cotangent = np.ones((1, len(OBSERVABLES)))
    _, gx, gw = run_with_grad(aer(qc, x, w, shots=20_000, simulator_seed=3), "expval", X, W, cotangent)
    fx, fw = vjp(lambda Xv, Wv: reference(qc, x, w, Xv, Wv), X, W, cotangent)
    # each gradient entry sums a few shot-noise differences of O(1/sqrt(shots)) each
    assert np.abs(gw - fw).max() < 0.15 and np.abs(gx - fx).max() < 0.15


# --------------------------------------------------------------------------- noise
def one_qubit_ry() -> tuple[QuantumCircuit, ParameterVector, ParameterVector]:
    x, w = ParameterVector("x", 0), ParameterVector("w", 1)
    qc = QuantumCircuit(2)
    qc.ry(w[0], 0)
    qc.cx(0, 1)
    return qc, x, w


def test_depolarizing_noise_scales_expectations_and_gradients_as_predicted():
    # depolarizing_error(p) maps ρ to (1-p)ρ + p·I/d, so every Pauli expectation shrinks by (1-p)
    # per gate: <Z0> = (1-p1)(1-p2) cos θ (after RY and CX), same for <Z1>.
    qc, x, w = one_qubit_ry()
    obs = [SparsePauliOp("IZ"), SparsePauliOp("ZI")]
    theta = 0.7
    for level, scale in [(0.05, 0.95 * 0.95), ((0.01, 0.1), 0.99 * 0.9)]:
        wt = torch.tensor([theta], requires_grad=True)
        y = aer(qc, x, w, obs, depolarizing=level).expval(torch.zeros(1, 0), wt)
        y[0, 0].backward()
        np.testing.assert_allclose(y.detach().numpy()[0], [scale * np.cos(theta)] * 2, atol=1e-10)
        np.testing.assert_allclose(wt.grad.numpy(), [-scale * np.sin(theta)], atol=1e-10)


def ghz_circuit() -> tuple[QuantumCircuit, ParameterVector, ParameterVector]:
    """A circuit where noise matters: four entangling layers (twelve CNOTs on the device)."""
    x, w = ParameterVector("x", 1), ParameterVector("w", 2)
    qc = QuantumCircuit(3)
    qc.ry(x[0], 0)
    qc.u(w[0], 0.3, w[1], 1)
    for _ in range(4):
        qc.cx(0, 1)
        qc.cx(1, 2)
        qc.ry(w[0], 1)
        qc.rz(w[1] - x[0], 2)
        qc.cx(2, 0)
    return qc, x, w


GHZ_OBS = [
    SparsePauliOp("IIZ"),
    SparsePauliOp("IZI"),
    SparsePauliOp.from_list([("XXI", 0.5), ("ZZZ", 1.0)]),
]


def test_fake_device_noise_applies_and_shift_rule_still_holds():
    qc, x, w = ghz_circuit()
    X, W = np.array([[0.2], [1.1]]), np.array([0.4, -0.3])
    noisy = aer(qc, x, w, GHZ_OBS, noise="fake_manila")
    cotangent = np.ones((2, len(GHZ_OBS)))
    y, gx, gw = run_with_grad(noisy, "expval", X, W, cotangent)
    ideal = reference(qc, x, w, X, W, GHZ_OBS)
    assert np.abs(y - ideal).max() > 0.03  # the device's errors really act

    def noisy_values(Xv, Wv):
        with torch.no_grad():
            return noisy.expval(torch.tensor(Xv), torch.tensor(Wv)).numpy()

    fx, fw = vjp(noisy_values, X, W, cotangent)
    np.testing.assert_allclose(gx, fx, atol=1e-5)
    np.testing.assert_allclose(gw, fw, atol=1e-5)
    with torch.no_grad():
        p = noisy.probs(torch.tensor(X), torch.tensor(W)).numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(p - reference_probs(qc, x, w, X, W)).max() > 0.01


def test_fake_device_by_class_name_and_restricted_noise_model_match_full_model():
    qc, x, w = ghz_circuit()
    X, W = np.array([[0.2]]), np.array([0.4, -0.3])
    by_name = aer(qc, x, w, GHZ_OBS, noise="fake_manila")
    by_class = aer(qc, x, w, GHZ_OBS, noise="FakeManilaV2")
    angles = by_name.angles(torch.tensor(X), torch.tensor(W))
    plan = by_name._plan("expval")
    full_model = NoiseModel.from_backend(fake_backend("fake_manila"))
    full = dataclasses.replace(plan, noise_model=full_model)
    np.testing.assert_allclose(run_plan(plan, angles), run_plan(full, angles), atol=1e-12)
    np.testing.assert_allclose(run_plan(by_class._plan("expval"), angles), run_plan(plan, angles), atol=1e-12)


def test_noisy_shots_sample_the_noisy_distribution_with_readout_errors():
    qc, x, w = ghz_circuit()
    X, W = torch.tensor([[0.2]]), torch.tensor([0.4, -0.3])
    exact = aer(qc, x, w, GHZ_OBS, noise="fake_manila")
    sampled = aer(qc, x, w, GHZ_OBS, noise="fake_manila", shots=20_000, simulator_seed=5)
    with torch.no_grad():
        p_exact, p_shots = exact.probs(X, W).numpy()[0], sampled.probs(X, W).numpy()[0]
    # readout errors act on measured shots only: apply each device qubit's confusion matrix
    device = fake_backend("fake_manila")
    confusion = dict((tuple(q), e.probabilities) for q, e in basic_device_readout_errors(target=device.target))
    physical = sampled._plan("probs").circuits[0].layout.final_index_layout()
    expected = p_exact.reshape([2] * 3)  # axes: qubit 2, 1, 0 (little-endian)
    for axis, q in zip((2, 1, 0), physical, strict=True):
        expected = np.moveaxis(np.tensordot(confusion[(q,)].T, expected, axes=(1, axis)), 0, axis)
    assert np.abs(p_shots - expected.ravel()).max() < 5 * 0.5 / np.sqrt(20_000)
    assert np.abs(p_shots - p_exact).max() > 0.02  # readout errors are visible


def qdllm_circuit(qubits: int = 4, blocks: int = 1) -> tuple[QuantumCircuit, list, list, list[SparsePauliOp]]:
    """The QD-LLM student's circuit (RX encoding, ansatz blocks with a CNOT ring) and its ⟨Z_i⟩."""
    part = QDLLMConfig(in_features=qubits, num_classes=2, qubits=qubits, blocks=blocks).model_circuit()
    return part.circuit, list(part.inputs), list(part.weights), z_observables(qubits)


def with_readout_errors(exact: np.ndarray, plan: AerPlan) -> np.ndarray:
    """What ⟨Z_i⟩ estimated from recorded shots tends to: each bit read wrong with its device's
    probability, ``E = P(0)(1 - 2 w0) - P(1)(1 - 2 w1)``, ``P(0) = (1 + ⟨Z⟩) / 2``."""
    assert plan.readout_errors is not None
    wrong = plan.readout_errors[0].wrong  # one measured circuit: all Z terms commute
    return (1 + exact) / 2 * (1 - 2 * wrong[:, 0]) - (1 - exact) / 2 * (1 - 2 * wrong[:, 1])


@pytest.mark.parametrize(
    "method, trajectories",
    [("statevector", None), ("statevector", TRAJECTORIES), ("density_matrix", None)],
)
def test_noisy_shots_agree_with_exact_density_matrix_within_shot_error(method, trajectories):
    # Every way of drawing device-noise shots (one trajectory per shot, shots drawn from fewer
    # realisations, the density matrix), against the exact noisy expectations of the
    # density-matrix path with the readout errors applied analytically: within 4 standard errors.
    qc, x, w, obs = qdllm_circuit()
    rng = np.random.default_rng(7)
    X, W = rng.uniform(0, 1.2, (3, len(x))), rng.uniform(0, 0.2, len(w))  # small angles: large ⟨Z⟩
    shots = 4096
    exact = aer(qc, x, w, obs, noise="fake_torino")
    sampled = aer(
        qc, x, w, obs, noise="fake_torino", shots=shots, simulator_seed=2, method=method, trajectories=trajectories
    )
    with torch.no_grad():
        e = exact.expval(torch.tensor(X), torch.tensor(W)).numpy()
        y = sampled.expval(torch.tensor(X), torch.tensor(W)).numpy()
    plan = sampled._plan("expval")
    assert plan.method == method and plan.trajectories == trajectories
    expected = with_readout_errors(e, plan)
    sigma = np.sqrt((1 - expected**2) / shots)
    assert np.abs((y - expected) / sigma).max() < 4
    # the check is sharp enough to see the device's gate noise and its readout errors
    assert np.abs((reference(qc, x, w, X, W, obs) - expected) / sigma).max() > 5
    assert np.abs(e - expected).max() > 0.01


def test_noisy_trajectories_run_with_branching_fusion_and_the_task_threads(monkeypatch):
    qc, x, w, obs = qdllm_circuit()
    sim = aer(qc, x, w, obs, noise="fake_torino", shots=256, simulator_seed=0, method="statevector", trajectories=None)
    plan = sim._plan("expval")
    assert "measure" not in plan.noise_model.noise_instructions  # readout errors are drawn here
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    metadata = execute(plan, sim.angles(torch.zeros(1, len(x)), torch.zeros(len(w)))).results[0].metadata
    assert metadata["method"] == "statevector" and metadata["shot_branching_enabled"]
    assert metadata["fusion"]["applied"]
    assert metadata["parallel_shots"] == 1 and metadata["parallel_state_update"] == 1


def test_fewer_realisations_than_shots_run_unbranched_and_draw_every_shot():
    qc, x, w, obs = qdllm_circuit()
    sim = aer(qc, x, w, obs, noise="fake_torino", shots=1000, simulator_seed=0, method="statevector", trajectories=50)
    plan = sim._plan("expval")
    assert plan.trajectories == 50 and plan.options == MIXTURE_OPTIONS
    assert not any(inst.operation.name == "measure" for c in plan.circuits for inst in c.data)
    angles = sim.angles(torch.zeros(2, len(x)), torch.zeros(len(w)))
    metadata = execute(plan, angles).results[0].metadata
    assert not metadata.get("shot_branching_enabled") and metadata["result_subtypes"] == {"probs": "average"}
    assert execute(plan, angles).results[0].shots == 50
    # the readout draws all 1,000 shots: ⟨Z⟩ estimates move in steps of 2/1000, and repeat with the seed
    y = run_plan(plan, angles)
    assert np.allclose(y * 500, np.round(y * 500)) and np.array_equal(y, run_plan(plan, angles))
    # as many realisations as shots: one trajectory per shot again
    assert (
        aer(qc, x, w, obs, noise="fake_torino", shots=50, method="statevector", trajectories=50)._plan("expval").options
        == TRAJECTORY_OPTIONS
    )


def test_the_cost_rule_picks_density_matrices_for_small_circuits_and_trajectories_for_large():
    assert _simulation(True, 1024, 9, None) == ("density_matrix", {})
    assert _simulation(True, 1024, 10, None) == ("statevector", TRAJECTORY_OPTIONS)
    assert _simulation(True, 100, 6, None)[0] == "statevector"
    assert _simulation(True, None, 12, None)[0] == "density_matrix"  # exact noisy expectations
    assert _simulation(False, 1024, 12, None) == ("statevector", {})
    small = aer(*qdllm_circuit()[:3], [SparsePauliOp("IIIZ")], noise="fake_torino", shots=1024)
    assert small._plan("expval").method == "density_matrix"
    student = QDLLMStudent(QDLLMConfig(in_features=8, num_classes=2))  # 11 qubits, on 12 of torino
    noisy = student.with_backend("aer", noise="fake_torino", shots=1024, simulator_seed=0)
    plan = next(m.simulator for m in noisy.modules() if isinstance(m, QuantumLayer))._plan("expval")
    assert plan.method == "statevector" and plan.trajectories == TRAJECTORIES and plan.options == MIXTURE_OPTIONS


@pytest.mark.parametrize(
    "options",
    [
        {"noise": "fake_manila"},
        {"noise": "fake_manila", "shots": 2000, "simulator_seed": 11},
        {"depolarizing": (0.02, 0.05)},
        {"depolarizing": 0.02, "shots": 2000, "simulator_seed": 11},
    ],
)
def test_runtime_binding_agrees_with_plain_binding_under_noise(options):
    qc, x, w = ghz_circuit()
    X, W = np.array([[-0.9]]), np.array([0.4, -0.3])
    values = {}
    for runtime in (True, False):
        sim = aer(qc, x, w, GHZ_OBS, runtime_binding=runtime, **options)
        xt, wt = torch.tensor(X), torch.tensor(W, requires_grad=True)
        y = sim.expval(xt, wt)
        y.sum().backward()
        values[runtime] = np.concatenate([y.detach().numpy().ravel(), wt.grad.numpy()])
    np.testing.assert_allclose(values[True], values[False], atol=1e-10)


# --------------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.parametrize("options", [{}, {"chunk_size": 5}, {"depolarizing": 0.03}])
def test_dask_split_equals_single_process(dask_client, options):
    qc, x, w = mixed_circuit()
    X, W = random_inputs(x, w, batch=4)
    cotangent = RNG.normal(size=(4, len(OBSERVABLES)))
    local = run_with_grad(aer(qc, x, w, **options), "expval", X, W, cotangent)
    split = run_with_grad(aer(qc, x, w, client=dask_client, **options), "expval", X, W, cotangent)
    for a, b in zip(local, split, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_dask_shots_repeat_with_seed(dask_client):
    qc, x, w = mixed_circuit()
    X, W = random_inputs(x, w, batch=2)
    runs = []
    for _ in range(2):
        sim = aer(qc, x, w, shots=4000, simulator_seed=3, client=dask_client)
        with torch.no_grad():
            runs.append(sim.probs(torch.tensor(X), torch.tensor(W)).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - reference_probs(qc, x, w, X, W)).max() < 5 * 0.5 / np.sqrt(4000)


# --------------------------------------------------------------------------- refusals
def test_unknown_fake_backend_names_it_and_lists_the_known_ones():
    qc, x, w = ghz_circuit()
    with pytest.raises(ValueError, match="fake_nowhere") as info:
        aer(qc, x, w, GHZ_OBS, noise="fake_nowhere")
    assert "fake_torino" in str(info.value) and "fake_manila" in str(info.value)
    assert {"fake_torino", "fake_manila", "fake_fractional"} <= set(fake_backend_names())


def test_the_forms_fake_devices_are_the_installed_runtimes():
    """The parameter forms offer FAKE_DEVICES and check their sizes without importing the fake
    provider: the same names and qubit counts as the installed runtime's devices."""
    from qcore.devices import FAKE_DEVICES

    assert tuple(fake_backend_names()) == tuple(FAKE_DEVICES)
    assert {name: fake_backend_qubits(name) for name in FAKE_DEVICES} == FAKE_DEVICES


def test_more_qubits_than_the_device_is_refused():
    x, w = ParameterVector("x", 0), ParameterVector("w", 1)
    qc = QuantumCircuit(6)
    qc.ry(w[0], range(6))
    with pytest.raises(ValueError, match="6 qubits but fake_manila has only 5"):
        aer(qc, x, w, [SparsePauliOp("IIIIIZ")], noise="fake_manila")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"noise": "fake_manila", "depolarizing": 0.1}, "not both"),
        ({"shots": 0}, "positive integer"),
        ({"depolarizing": 1.5}, r"\[0, 1\]"),
        ({"method": "automatic"}, "method must be one of"),
        ({"trajectories": 0}, "trajectories must be a positive integer"),
    ],
)
def test_bad_options_are_refused(options, message):
    qc, x, w = ghz_circuit()
    with pytest.raises(ValueError, match=message):
        aer(qc, x, w, GHZ_OBS, **options)
