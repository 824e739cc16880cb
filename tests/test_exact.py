"""The `exact` backend against Qiskit's Statevector: every circuit family, random circuits, both dtypes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterVector
from qiskit.quantum_info import SparsePauliOp, Statevector
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from qcore import CircuitError, QuantumLayer
from qcore.circuits import (
    amplitude_angles,
    amplitude_encoding,
    angle_encoding,
    cnot_ry_blocks,
    compose,
    data_reuploading,
    hardware_efficient,
    qdllm_ansatz,
    qpa_chain,
    real_amplitudes,
    zz_feature_inputs,
    zz_feature_map,
)
from qcore.circuits.base import ModelCircuit
from qcore.layer import z_observables
from qcore.simulators import threads as sim_threads
from qcore.simulators.threads import idle_cores, kernel_threads, set_threads

ONE_Q = ["h", "x", "y", "z", "s", "sdg", "t", "tdg", "sx", "rx", "ry", "rz", "p", "u", "r"]
TWO_Q = ["cx", "cy", "cz", "ch", "swap", "crx", "cry", "crz", "cp", "rxx", "ryy", "rzz", "rzx", "cu"]
THREE_Q = ["ccx", "cswap", "ccz"]
N_ANGLES = {
    "rx": 1,
    "ry": 1,
    "rz": 1,
    "p": 1,
    "u": 3,
    "r": 2,
    "crx": 1,
    "cry": 1,
    "crz": 1,
    "cp": 1,
    "rxx": 1,
    "ryy": 1,
    "rzz": 1,
    "rzx": 1,
    "cu": 4,
}


def random_circuit(n: int, depth: int, rng: np.random.Generator) -> ModelCircuit:
    """A random circuit over every supported gate, angles affine in inputs and weights."""
    x = ParameterVector("x", n)
    w = ParameterVector("w", 3 * depth)
    qc = QuantumCircuit(n)
    used_w = 0
    names = ONE_Q + (TWO_Q if n >= 2 else []) + (THREE_Q if n >= 3 else [])
    for _ in range(depth):
        name = names[rng.integers(len(names))]
        width = 1 if name in ONE_Q else 2 if name in TWO_Q else 3
        qubits = [int(q) for q in rng.choice(n, size=width, replace=False)]
        angles = []
        for _ in range(N_ANGLES.get(name, 0)):
            kind = rng.integers(4)
            if kind == 0:
                angles.append(float(rng.uniform(-3, 3)))
            elif kind == 1:
                angles.append(2 * x[int(rng.integers(n))] - 0.5)
            elif kind == 2:
                angles.append(w[used_w] * 0.5 + x[int(rng.integers(n))])
                used_w += 1
            else:
                angles.append(w[used_w])
                used_w += 1
        getattr(qc, name)(*angles, *qubits)
    weights = [p for p in w if p in qc.parameters]
    inputs = [p for p in x if p in qc.parameters]
    return ModelCircuit(qc, tuple(inputs), tuple(weights))


def random_observables(n: int, rng: np.random.Generator) -> list[SparsePauliOp]:
    labels = ["".join(rng.choice(list("IXYZ"), size=n)) for _ in range(3)]
    z_only = "".join(rng.choice(list("IZ"), size=n))
    obs = [SparsePauliOp(lbl, coeffs=[rng.uniform(-1, 1)]) for lbl in labels]
    obs.append(SparsePauliOp([labels[0], z_only], coeffs=[0.7, -1.3]))
    return obs


def reference(model: ModelCircuit, x: np.ndarray, w: np.ndarray, obs):
    bound = model.circuit.assign_parameters(
        dict(zip(list(model.inputs) + list(model.weights), list(x) + list(w), strict=True))
    )
    sv = Statevector(bound)
    return np.array([sv.expectation_value(o).real for o in obs]), sv.probabilities()


def check(model: ModelCircuit, obs, dtype: torch.dtype, tol: float, batch: int = 3, seed: int = 0, **options):
    layer = QuantumLayer(
        model.circuit, inputs=model.inputs, weights=model.weights, observables=obs, dtype=dtype, seed=seed, **options
    )
    probs = QuantumLayer(
        model.circuit, inputs=model.inputs, weights=model.weights, output="probs", dtype=dtype, seed=seed, **options
    )
    real = layer.weights.dtype
    x = torch.rand(batch, len(model.inputs), dtype=real, generator=torch.Generator().manual_seed(seed)) * 4 - 2
    y, p = layer(x).detach().numpy(), probs(x).detach().numpy()
    w = layer.weights.detach().numpy()
    for b in range(batch):
        ey, ep = reference(model, x[b].numpy(), w, obs)
        np.testing.assert_allclose(y[b], ey, atol=tol)
        np.testing.assert_allclose(p[b], ep, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.complex128, 1e-6), (torch.complex64, 2e-5)])
@pytest.mark.parametrize("n", list(range(1, 11)))
def test_random_circuits_match_statevector(n: int, dtype: torch.dtype, tol: float) -> None:
    rng = np.random.default_rng(100 + n)
    for trial in range(3):
        model = random_circuit(n, depth=6 * n + 4, rng=rng)
        check(model, random_observables(n, rng), dtype, tol, seed=trial)


def _families() -> dict[str, tuple[ModelCircuit, object]]:
    """Every circuit family the project ships, with an input transform where one is needed."""
    zz = zz_feature_map(4, reps=2)
    return {
        "angle-ry+hardware-efficient": (compose(angle_encoding(6, "ry"), hardware_efficient(6, 3)), None),
        "angle-rz+hardware-efficient-chain": (
            compose(angle_encoding(5, "rz"), hardware_efficient(5, 2, entanglement="chain")),
            None,
        ),
        "qdllm": (compose(angle_encoding(11, "rx"), qdllm_ansatz(11, 2)), None),
        "pqc-head-reuploading": (
            data_reuploading(
                angle_encoding(6, "ry"), cnot_ry_blocks(6, 3), repeats=3, head=cnot_ry_blocks(6, 2, params="φ")
            ),
            None,
        ),
        "amplitude+cnot-ry": (compose(amplitude_encoding(4), cnot_ry_blocks(4, 2)), amplitude_angles),
        "zz+real-amplitudes": (compose(zz, real_amplitudes(4, reps=3)), lambda v: zz_feature_inputs(v[..., :4])),
        "qpa-chain": (compose(angle_encoding(7, "ry"), qpa_chain(7, 8)), None),
    }


@pytest.mark.parametrize("family", list(_families()))
@pytest.mark.parametrize("dtype,tol", [(torch.complex128, 1e-6), (torch.complex64, 2e-5)])
def test_circuit_families_match_statevector(family: str, dtype: torch.dtype, tol: float) -> None:
    model, _ = _families()[family]
    n = model.circuit.num_qubits
    rng = np.random.default_rng(7)
    obs = [SparsePauliOp("I" * (n - 1) + "Z"), SparsePauliOp("Z" * n), *random_observables(n, rng)[:2]]
    check(model, obs, dtype, tol)


def test_amplitude_encoding_is_differentiable_end_to_end() -> None:
    """Gradients reach the raw feature vector through the encoding angles."""
    model = compose(amplitude_encoding(3), cnot_ry_blocks(3, 2))
    layer = QuantumLayer(model.circuit, inputs=model.inputs, weights=model.weights, dtype=torch.complex128, seed=0)
    v = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    layer(amplitude_angles(v)).sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def _check_gradients(model: ModelCircuit, obs, transform=None, width: int | None = None) -> None:
    """Autograd through the compiled program equals central differences, every weight and input."""
    layer = QuantumLayer(
        model.circuit, inputs=model.inputs, weights=model.weights, observables=obs, dtype=torch.complex128, seed=1
    )
    gen = torch.Generator().manual_seed(2)
    width = width or len(model.inputs)
    raw = (torch.rand(2, width, dtype=torch.float64, generator=gen) * 2 - 1).requires_grad_(True)
    coef = torch.linspace(-1.0, 2.0, len(obs), dtype=torch.float64)

    def f(xv: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
        x = transform(xv) if transform is not None else xv
        return (layer.simulator.expval(x, wv) @ coef).sum()

    f(raw, layer.weights).backward()
    eps = 1e-6
    w0 = layer.weights.detach().clone()
    with torch.no_grad():
        for k in range(w0.numel()):
            d = torch.zeros_like(w0)
            d[k] = eps
            fd = (f(raw.detach(), w0 + d) - f(raw.detach(), w0 - d)) / (2 * eps)
            assert abs(fd - layer.weights.grad[k]).item() < 1e-6, f"weight {k}"
        for j in range(raw.shape[1]):
            d = torch.zeros_like(raw)
            d[:, j] = eps
            fd = (f(raw.detach() + d, w0) - f(raw.detach() - d, w0)) / (2 * eps)
            assert abs(fd - raw.grad[:, j].sum()).item() < 1e-6, f"input {j}"


def test_gradients_match_finite_differences_random() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 3, 5):
        _check_gradients(random_circuit(n, 8 * n + 6, rng), random_observables(n, rng))


@pytest.mark.parametrize("family", list(_families()))
def test_gradients_match_finite_differences_families(family: str) -> None:
    model, transform = _families()[family]
    n = model.circuit.num_qubits
    obs = [SparsePauliOp("I" * (n - 1) + "Z"), SparsePauliOp("X" + "I" * (n - 2) + "Y")]
    raw_width = {"amplitude+cnot-ry": 2**n, "zz+real-amplitudes": n}.get(family)
    _check_gradients(model, obs, transform, raw_width)


@pytest.mark.parametrize("group_size", [1, 2, 3, 5, 8])
def test_group_size_does_not_change_results(group_size: int) -> None:
    model = compose(angle_encoding(7, "ry"), hardware_efficient(7, 2))
    check(model, [SparsePauliOp("IIIIIZZ"), SparsePauliOp("XIIIIIY")], torch.complex128, 1e-9, group_size=group_size)


def test_no_inputs_broadcasts_to_batch() -> None:
    qc, w = hardware_efficient(3, 2)
    layer = QuantumLayer(qc, weights=w, seed=0)
    assert layer(torch.zeros(5, 0)).shape == (5, 3)
    assert layer().shape == (1, 3)


# ------------------------------------------------------------------ bad input
def test_unknown_gate_is_named() -> None:
    qc = QuantumCircuit(2)
    qc.measure_all()
    with pytest.raises(CircuitError, match=r"unsupported gate 'measure'.*supported gates"):
        QuantumLayer(qc)


def test_parameter_neither_input_nor_weight_is_named() -> None:
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(1)
    qc.rx(a, 0)
    qc.ry(b, 0)
    with pytest.raises(CircuitError, match=r"\['b'\].*neither inputs nor weights"):
        QuantumLayer(qc, inputs=[a])


def test_nonlinear_angle_is_refused() -> None:
    x, w = Parameter("x"), Parameter("w")
    qc = QuantumCircuit(1)
    qc.rx(x * w, 0)
    with pytest.raises(CircuitError, match="not linear"):
        QuantumLayer(qc, inputs=[x], weights=[w])


def test_wrong_input_width_is_refused() -> None:
    model = compose(angle_encoding(3, "ry"), hardware_efficient(3, 1))
    layer = QuantumLayer(model.circuit, inputs=model.inputs, weights=model.weights)
    with pytest.raises(ValueError, match=r"shape \(4, 2\).*\(batch, 3\)"):
        layer(torch.zeros(4, 2))


def test_unknown_backend_is_named() -> None:
    qc, w = hardware_efficient(2, 1)
    with pytest.raises(ValueError, match=r"unknown backend 'qpu'.*available backends.*exact"):
        QuantumLayer(qc, weights=w, backend="qpu")


def test_observable_of_wrong_width_is_refused() -> None:
    qc, w = hardware_efficient(2, 1)
    with pytest.raises(ValueError, match="observable 0 acts on 3 qubits; the circuit has 2"):
        QuantumLayer(qc, weights=w, observables=["ZZZ"])


def test_seeded_weights_repeat() -> None:
    qc, w = hardware_efficient(3, 1)
    a = QuantumLayer(qc, weights=w, seed=5).weights.detach()
    b = QuantumLayer(qc, weights=w, seed=5).weights.detach()
    assert torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) < 2 * math.pi


@pytest.mark.parametrize("family", ["qdllm", "pqc-head-reuploading", "zz+real-amplitudes"])
def test_gradients_match_parameter_shift_on_aer(family: str) -> None:
    """Autograd on `exact` equals the parameter-shift rule on Aer, for weights and inputs."""
    model, _ = _families()[family]
    n = model.circuit.num_qubits
    obs = [SparsePauliOp("I" * (n - 1) + "Z"), SparsePauliOp("Z" * n)]
    grads = {}
    for backend in ("exact", "aer"):
        layer = QuantumLayer(
            model.circuit,
            inputs=model.inputs,
            weights=model.weights,
            observables=obs,
            backend=backend,
            dtype=torch.complex128,
            seed=4,
        )
        x = (
            torch.rand(2, len(model.inputs), dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2
        ).requires_grad_(True)
        (layer(x) @ torch.tensor([1.0, -0.5], dtype=torch.float64)).sum().backward()
        grads[backend] = (layer.weights.grad.clone(), x.grad.clone())
    torch.testing.assert_close(grads["exact"][0], grads["aer"][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads["exact"][1], grads["aer"][1], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "ansatz",
    [cnot_ry_blocks(5, layers=3), hardware_efficient(5, layers=2)],
    ids=["cnot-ry (CX first)", "hardware-efficient (1q layer first)"],
)
def test_initial_state_matches_statevector_evolve(ansatz: tuple) -> None:
    """An amplitude-encoded start state, then a PQC, equals Qiskit's Statevector.evolve."""
    circuit, theta = ansatz
    layer = QuantumLayer(circuit, weights=list(theta), dtype=torch.complex128, seed=3)
    rng = np.random.default_rng(0)
    states = rng.normal(size=(4, 32))
    states /= np.linalg.norm(states, axis=1, keepdims=True)
    got = layer(initial_state=torch.as_tensor(states)).detach().numpy()
    bound = circuit.assign_parameters(dict(zip(theta, layer.weights.detach().numpy(), strict=True)))
    obs = z_observables(5)
    want = [[Statevector(s).evolve(bound).expectation_value(o).real for o in obs] for s in states]
    np.testing.assert_allclose(got, want, atol=1e-10)


# ------------------------------------------------------------------ threads
CORES = len(os.sched_getaffinity(0))


class _KernelThreads(TorchDispatchMode):
    """Records ``torch.get_num_threads()`` at every kernel that touches a whole batch of states."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel = min_numel
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        operands = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t.numel() >= self.min_numel for t in operands):
            self.seen.add(torch.get_num_threads())
        return func(*args, **(kwargs or {}))


@pytest.fixture
def caller_threads() -> Iterator[None]:
    """Whatever a test sets with ``torch.set_num_threads`` is undone after it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _step_threads(n: int, batch: int, *, initial_state: bool = False) -> tuple[set[int], list[torch.Tensor]]:
    """Thread counts seen by the state kernels of one forward + backward, and the gradients."""
    model = compose(angle_encoding(n, "ry"), hardware_efficient(n, 2))
    layer = QuantumLayer(model.circuit, inputs=model.inputs, weights=model.weights, seed=1)
    x = torch.rand(batch, n, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    psi = None
    if initial_state:
        psi = torch.randn(batch, 2**n, generator=torch.Generator().manual_seed(3), dtype=torch.complex64)
        psi = (psi / psi.norm(dim=1, keepdim=True)).requires_grad_(True)
    seen = _KernelThreads(batch * 2**n)
    with seen:
        y = layer(x, initial_state=psi)
        y.backward(torch.ones_like(y))
    grads = [layer.weights.grad, x.grad] + ([psi.grad] if psi is not None else [])
    return seen.seen, [g.clone() for g in grads if g is not None]


@pytest.mark.skipif(CORES < 2, reason="one usable core: every state already runs at one thread")
def test_small_states_run_at_one_thread_forward_and_backward(caller_threads: None) -> None:
    torch.set_num_threads(2)
    seen, _ = _step_threads(8, 32)
    assert seen == {1}
    assert torch.get_num_threads() == 2  # the caller's count is back


@pytest.mark.skipif(CORES < 2, reason="one usable core: no second thread to give")
def test_large_states_get_more_threads_up_to_the_callers(caller_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_threads, "MIN_AMPLITUDES_PER_THREAD", 2**10)  # 8 qubits × 8 = 2 threads' worth
    monkeypatch.setattr(sim_threads, "idle_cores", lambda: CORES)  # as on a quiet machine
    torch.set_num_threads(2)
    assert _step_threads(8, 8)[0] == {2}
    torch.set_num_threads(1)  # an explicit cap (as tasks apply QLLM_TASK_THREADS) is respected
    assert _step_threads(8, 8)[0] == {1}
    assert torch.get_num_threads() == 1


def test_thread_rule_never_exceeds_the_cores(caller_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(CORES + 3)
    assert kernel_threads(1) == 1
    monkeypatch.setattr(sim_threads, "idle_cores", lambda: CORES)
    assert kernel_threads(2**40) == CORES
    monkeypatch.setattr(sim_threads, "idle_cores", lambda: 1)  # the other cores are busy
    assert kernel_threads(2**40) == 1


@pytest.mark.skipif(CORES < 2, reason="one usable core: nothing to leave idle")
def test_a_busy_process_takes_a_core_off_the_idle_ones() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        time.sleep(0.2)
        assert 1 <= idle_cores() <= CORES - 1
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize("initial_state", [False, True], ids=["angles", "initial-state"])
def test_gradients_do_not_depend_on_the_thread_count(caller_threads: None, initial_state: bool) -> None:
    """The engine's own thread scope (caller at 2 threads) gives the plain autograd gradients (1)."""
    torch.set_num_threads(1)
    _, plain = _step_threads(6, 4, initial_state=initial_state)
    torch.set_num_threads(2)
    _, scoped = _step_threads(6, 4, initial_state=initial_state)
    assert len(plain) == len(scoped) == (3 if initial_state else 2)
    for a, b in zip(plain, scoped, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_retained_graph_backs_twice_through_the_thread_scope(caller_threads: None) -> None:
    torch.set_num_threads(2)
    qc, w = hardware_efficient(4, 2)
    layer = QuantumLayer(qc, weights=w, seed=0)
    y = layer(torch.zeros(3, 0)).sum()
    y.backward(retain_graph=True)
    once = layer.weights.grad.clone()
    y.backward()
    torch.testing.assert_close(layer.weights.grad, 2 * once)


@pytest.mark.parametrize("fresh", [False, True], ids=["running-thread", "fresh-thread"])
def test_engine_threads_do_not_leak_into_other_threads(caller_threads: None, fresh: bool) -> None:
    """A flow thread's own thread count holds while another thread simulates: one that has run
    torch already keeps its ``torch.set_num_threads``, a fresh one sets it with ``set_threads``."""
    qc, w = hardware_efficient(6, 2)
    layer = QuantumLayer(qc, weights=w, seed=0)
    running, stop, seen = threading.Event(), threading.Event(), []

    def simulate() -> None:
        torch.set_num_threads(2)
        while not stop.is_set():
            layer(torch.zeros(4, 0)).sum().backward()
            running.set()

    def watch() -> None:
        if fresh:
            running.wait()
            set_threads(3)
        else:
            torch.ones(1 << 20).sum()  # a parallel kernel: this thread's count is its own from here on
            torch.set_num_threads(3)
            running.wait()
        for _ in range(200):
            torch.ones(64, 64).sum()
            seen.append(torch.get_num_threads())

    threads = [threading.Thread(target=simulate), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    threads[1].join()
    stop.set()
    threads[0].join()
    assert set(seen) == {3}
