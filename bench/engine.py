#!/usr/bin/env python
"""Benchmark of one training step of qcore's `QuantumLayer` against its peers.

One training step = forward on a batch + backward of ``loss = outputs.sum()`` with respect to the
circuit weights (or the framework's ``value_and_grad``).  The workload family:

    n qubits; RY(x_i) angle encoding of the batch inputs; L layers of
    [RY(w), RZ(w) on every qubit, then the CNOT ring cx(0,1), cx(1,2), ..., cx(n-1,0)];
    read out <Z0> and <Z1>.

Workloads are written ``qubits/layers/batch``; the reference one is 8/3/32, the larger ones are
12/3/32, 16/2/8 and 20/1/2.

Implementations (each skipped with a note when its package is missing):

    exact          qcore.QuantumLayer(backend="exact"), complex64 (the default)
    exact128       the same with dtype=torch.complex128
    aer            qcore.QuantumLayer(backend="aer") (parameter-shift gradients); <= 12 qubits
    pennylane      PennyLane default.qubit, interface="torch", diff_method="backprop", the batch
                   broadcast through qml.RY
    lightning      PennyLane lightning.qubit (C++ kernels), complex64, interface="torch",
                   diff_method="adjoint" (the batch broadcast, which PennyLane expands into tapes)
    qulacs         qulacs ParametricQuantumCircuit, per sample: the forward outputs, then
                   backprop(Z0 + Z1) for the gradient (adjoint method; it returns no values, so the
                   step runs the forward once more); complex128, its only precision
    tc-torch       tensorcircuit-ng, PyTorch backend, vmap over the batch
    tc-jax         tensorcircuit-ng, JAX backend, jit(vectorized value_and_grad); compile excluded
    qml-estimator  qiskit-machine-learning EstimatorQNN + TorchConnector, default estimator
                   (a qiskit StatevectorEstimator); reference workload only
    qml-aer        EstimatorQNN + TorchConnector on qiskit_aer.primitives.EstimatorV2 (the peer of
                   `aer`); reference workload only

Every (implementation, workload) cell runs in a fresh subprocess of this script
(``--one IMPL WORKLOAD``), so peak memory (``ru_maxrss`` minus its value after the imports) and
thread pools are per cell; the parent prints one table and the targets.  Every cell also checks its
forward outputs (and, on the reference workload, its weight gradients) against qiskit's
``Statevector``, so a fast but wrong engine cannot win.  Nothing here is a stored result: every
number printed is measured in this run.

After the table: each peer's ratio to `exact` per workload; with ``--with-load``, every cell's
quiet and loaded medians (the loaded run beside one spinning process pinned to the last usable
CPU, i.e. another process using a core); and for `exact` at 20 qubits the bytes its kernels move
(``kernel_bytes``) against the copy bandwidth measured in the same cell, i.e. how far the step is
from the memory-traffic limit.

    python bench/engine.py --quick                 # reference workload only (make bench, smoke)
    python bench/engine.py                         # all workloads
    python bench/engine.py --with-load             # also every cell beside one busy process
    python bench/engine.py --impls exact,tc-jax --workloads 8/3/32,16/2/8 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only the standard library at module level: a `--one` child sets its thread environment before
# numpy, torch or jax are imported.

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT_MARK = "@@RESULT "
REFERENCE = "8/3/32"
ALL_WORKLOADS = ["8/3/32", "12/3/32", "16/2/8", "20/1/2"]
FWD_TOL = 1e-4  # max |output - Statevector reference| on the reference workload
FWD_TOL_LARGE = 1e-3  # on the larger ones, where complex64 rounding over 2^20 amplitudes adds up
GRAD_TOL = 1e-4  # max |grad - reference| / max(1, max |reference|)
TRAFFIC_QUBITS = 20  # exact cells this large also report their memory traffic against copy bandwidth


@dataclass(frozen=True)
class Impl:
    name: str
    packages: tuple[str, ...]  # import names that must be present
    describe: str
    max_qubits: int | None = None  # default cells only up to this size
    reference_only: bool = False
    slow: bool = False  # 1-2 timed steps, no separate warm-up


IMPLS = [
    Impl("exact", ("torch", "qiskit", "qcore"), "qcore QuantumLayer exact, complex64"),
    Impl("exact128", ("torch", "qiskit", "qcore"), "qcore QuantumLayer exact, complex128"),
    Impl("aer", ("torch", "qiskit", "qiskit_aer", "qcore"), "qcore QuantumLayer aer (param-shift)", max_qubits=12),
    Impl("pennylane", ("torch", "pennylane"), "PennyLane default.qubit torch backprop, broadcast"),
    Impl(
        "lightning",
        ("torch", "pennylane", "pennylane_lightning"),
        "PennyLane lightning.qubit adjoint, torch interface",
    ),
    Impl("qulacs", ("qulacs",), "qulacs ParametricQuantumCircuit.backprop, loop over the batch"),
    Impl("tc-torch", ("torch", "tensorcircuit"), "tensorcircuit-ng pytorch backend, vmap"),
    Impl("tc-jax", ("jax", "tensorcircuit"), "tensorcircuit-ng jax backend, jit+vmap value_and_grad"),
    Impl(
        "qml-estimator",
        ("torch", "qiskit", "qiskit_machine_learning"),
        "EstimatorQNN+TorchConnector, default StatevectorEstimator",
        reference_only=True,
        slow=True,
    ),
    Impl(
        "qml-aer",
        ("torch", "qiskit", "qiskit_aer", "qiskit_machine_learning"),
        "EstimatorQNN+TorchConnector, Aer EstimatorV2",
        reference_only=True,
        slow=True,
    ),
]
IMPL_BY_NAME = {i.name: i for i in IMPLS}
VERSION_OF = {  # distribution names whose versions are reported per implementation
    "exact": ["torch", "qiskit"],
    "exact128": ["torch", "qiskit"],
    "aer": ["torch", "qiskit", "qiskit-aer"],
    "pennylane": ["pennylane", "torch"],
    "lightning": ["pennylane", "pennylane_lightning", "torch"],
    "qulacs": ["qulacs"],
    "tc-torch": ["tensorcircuit-ng", "torch"],
    "tc-jax": ["tensorcircuit-ng", "jax", "jaxlib"],
    "qml-estimator": ["qiskit-machine-learning", "qiskit", "torch"],
    "qml-aer": ["qiskit-machine-learning", "qiskit-aer", "torch"],
}


def parse_workload(text: str) -> tuple[int, int, int]:
    if text in ("ref", "reference"):
        text = REFERENCE
    try:
        n, layers, batch = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"workload {text!r} is not qubits/layers/batch, e.g. 8/3/32") from None
    if n < 2 or layers < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"workload {text!r}: need >= 2 qubits, >= 1 layer, batch >= 1")
    return n, layers, batch


def wl_name(wl: tuple[int, int, int]) -> str:
    return "/".join(str(v) for v in wl)


# --------------------------------------------------------------------------------------------
# Threads: the same for every peer
# --------------------------------------------------------------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps every thread pool (OpenMP/Aer, BLAS, Rayon/qiskit, XLA) at `threads`."""
    env = {
        k: str(threads)
        for k in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "RAYON_NUM_THREADS",
            "NUMEXPR_NUM_THREADS",
        )
    }
    keep = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))
    ]
    xla = " ".join(keep)
    xla += f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={threads}"
    env["XLA_FLAGS"] = xla.strip()
    return env


def pin_threads(threads: int) -> list[int]:
    """In a child: pin to the first `threads` allowed CPUs (when fewer than all); return the CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


# --------------------------------------------------------------------------------------------
# Data and the qiskit reference
# --------------------------------------------------------------------------------------------


def make_data(wl, seed: int):
    """The batch x (batch, n) and the weights w (2*n*layers,) as float32 (exactly representable,
    so float64 engines see the very same values)."""
    import numpy as np

    n, layers, batch = wl
    rng = np.random.default_rng([seed, n, layers, batch])
    x = rng.uniform(0.0, np.pi, (batch, n)).astype(np.float32)
    w = rng.uniform(-np.pi, np.pi, 2 * n * layers).astype(np.float32)
    return x, w


def weight_index(n: int, layer: int, q: int, k: int) -> int:
    """Flat index of the k-th (0: RY, 1: RZ) weight of qubit q in layer `layer`."""
    return 2 * (layer * n + q) + k


def qiskit_circuit(wl):
    """The workload as a Qiskit circuit with ParameterVectors "x" (inputs) and "w" (weights)."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector
    from qiskit.quantum_info import SparsePauliOp

    n, layers, _ = wl
    xp = ParameterVector("x", n)
    wp = ParameterVector("w", 2 * n * layers)
    qc = QuantumCircuit(n)
    for i in range(n):
        qc.ry(xp[i], i)
    for layer in range(layers):
        for q in range(n):
            qc.ry(wp[weight_index(n, layer, q, 0)], q)
            qc.rz(wp[weight_index(n, layer, q, 1)], q)
        for q in range(n):
            qc.cx(q, (q + 1) % n)
    # Qiskit labels are little-endian: qubit 0 is the rightmost letter.
    obs = [SparsePauliOp("I" * (n - 1) + "Z"), SparsePauliOp("I" * (n - 2) + "Z" + "I")]
    return qc, list(xp), list(wp), obs


def reference_outputs(wl, x, w):
    """(batch, 2) <Z0>, <Z1> from qiskit's Statevector, in float64."""
    import numpy as np
    from qiskit.quantum_info import Statevector

    qc, xp, wp, obs = qiskit_circuit(wl)
    wbind = dict(zip(wp, (float(v) for v in w), strict=True))
    out = np.empty((x.shape[0], len(obs)))
    for b in range(x.shape[0]):
        bound = qc.assign_parameters({**dict(zip(xp, (float(v) for v in x[b]), strict=True)), **wbind})
        sv = Statevector(bound)
        out[b] = [sv.expectation_value(o).real for o in obs]
    return out


def reference_grad(wl, x, w):
    """d/dw of sum(outputs) over the batch, by the exact parameter-shift rule on qiskit states.

    The encoding is the only part that depends on x, so sum_b <psi_b|U(w)^+ O U(w)|psi_b> is
    B * Tr(O U(w) rho U(w)^+) with rho the mean encoded state.  For the weight of gate j that is
    B * Tr(O_j G_j(w) rho_j G_j(w)^+), with rho_j the state before gate j (a qiskit DensityMatrix
    evolved gate by gate) and O_j the observable pulled back through the gates after j; each
    weight is then shifted by +-pi/2 in its own gate only.
    """
    import numpy as np
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import DensityMatrix, Statevector

    qc, xp, wp, obs = qiskit_circuit(wl)
    n = qc.num_qubits
    batch = x.shape[0]
    xset = set(xp)
    encode = QuantumCircuit(n)
    trainable = QuantumCircuit(n)
    for inst in qc.data:  # the circuit is the RY(x) encoding followed by the weight layers
        uses_x = any(p in xset for e in inst.operation.params for p in getattr(e, "parameters", ()))
        (encode if uses_x else trainable).append(inst)
    rho = np.zeros((2**n, 2**n), dtype=complex)
    for b in range(batch):
        psi = Statevector(encode.assign_parameters(dict(zip(xp, (float(v) for v in x[b]), strict=True)))).data
        rho += np.outer(psi, psi.conj())
    w64 = w.astype(np.float64)
    bound = trainable.assign_parameters(dict(zip(wp, w64.tolist(), strict=True)))
    gates = [(inst.operation, [trainable.find_bit(q).index for q in inst.qubits]) for inst in bound.data]
    # which weight each trainable gate carries (one weight per RY/RZ gate, coefficient 1)
    owner = []
    for inst in trainable.data:
        names = [p for e in inst.operation.params for p in getattr(e, "parameters", ())]
        owner.append(wp.index(names[0]) if names else None)
    before = [DensityMatrix(rho / batch)]
    for op, qargs in gates[:-1]:
        before.append(before[-1].evolve(op, qargs=qargs))
    after = [None] * len(gates)
    after[-1] = DensityMatrix((obs[0] + obs[1]).to_matrix())  # Heisenberg picture: G^+ O G
    for j in range(len(gates) - 1, 0, -1):
        op, qargs = gates[j]
        after[j - 1] = after[j].evolve(op.inverse(), qargs=qargs)
    grad = np.zeros(len(wp))
    for j, k in enumerate(owner):
        if k is None:
            continue
        op, qargs = gates[j]
        vals = []
        for s in (np.pi / 2, -np.pi / 2):
            shifted = type(op)(float(w64[k]) + s)
            evolved = before[j].evolve(shifted, qargs=qargs).data
            vals.append(np.sum(after[j].data.T * evolved).real)  # Tr(O_j rho_j(shifted))
        grad[k] += batch * (vals[0] - vals[1]) / 2
    return grad


# --------------------------------------------------------------------------------------------
# Implementations.  Each builder returns (step, forward, grad, precision):
#   step()    one training step (forward + backward), blocking until done
#   forward() (batch, 2) float64 numpy outputs, no gradient
#   grad()    the weight gradient of the last step, numpy, in the flat weight order
# --------------------------------------------------------------------------------------------


def build_qcore(wl, x, w, backend: str, complex128: bool = False):
    import torch

    from qcore import QuantumLayer

    qc, xp, wp, obs = qiskit_circuit(wl)
    dtype = torch.complex128 if complex128 else torch.complex64
    layer = QuantumLayer(qc, inputs=xp, weights=wp, observables=obs, backend=backend, dtype=dtype)
    with torch.no_grad():
        layer.weights.copy_(torch.from_numpy(w).to(layer.weights.dtype))
    xt = torch.from_numpy(x).to(layer.weights.dtype)

    def step():
        layer.weights.grad = None
        layer(xt).sum().backward()

    def forward():
        with torch.no_grad():
            return layer(xt).double().numpy()

    def grad():
        return layer.weights.grad.double().numpy()

    return step, forward, grad, "c128" if complex128 else "c64"


def build_pennylane(wl, x, w, lightning: bool = False):
    import numpy as np
    import pennylane as qml
    import torch

    n, layers, _ = wl
    if lightning:
        dev = qml.device("lightning.qubit", wires=n, c_dtype=np.complex64)
    else:
        dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, interface="torch", diff_method="adjoint" if lightning else "backprop")
    def circuit(xb, wv):
        for i in range(n):
            qml.RY(xb[:, i], wires=i)  # broadcast over the batch
        for layer in range(layers):
            for q in range(n):
                qml.RY(wv[weight_index(n, layer, q, 0)], wires=q)
                qml.RZ(wv[weight_index(n, layer, q, 1)], wires=q)
            for q in range(n):
                qml.CNOT(wires=[q, (q + 1) % n])
        return qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(1))

    xt = torch.from_numpy(x)
    wt = torch.from_numpy(w).clone().requires_grad_(True)
    state = {}

    def step():
        wt.grad = None
        out = torch.stack(circuit(xt, wt), dim=-1)
        state["dtype"] = out.dtype
        out.sum().backward()

    def forward():
        with torch.no_grad():
            out = torch.stack(circuit(xt, wt), dim=-1)
        state["dtype"] = out.dtype
        return out.double().numpy()

    def grad():
        return wt.grad.double().numpy()

    forward()
    if lightning:
        return step, forward, grad, "c64"
    # default.qubit keeps its state in complex128 whatever the parameters' dtype
    precision = "c128" if state["dtype"] == torch.float64 else "c64"
    return step, forward, grad, precision


def build_qulacs(wl, x, w):
    import numpy as np
    from qulacs import Observable, ParametricQuantumCircuit, QuantumState

    n, layers, batch = wl
    # qulacs' rotations are exp(+i θ P / 2), Qiskit's exp(-i θ P / 2): angles and gradients flip sign.
    circ = ParametricQuantumCircuit(n)
    for i in range(n):  # parameters 0..n-1: the encoding, set per sample
        circ.add_parametric_RY_gate(i, 0.0)
    for layer in range(layers):  # then the weights, in weight_index order
        for q in range(n):
            circ.add_parametric_RY_gate(q, -float(w[weight_index(n, layer, q, 0)]))
            circ.add_parametric_RZ_gate(q, -float(w[weight_index(n, layer, q, 1)]))
        for q in range(n):
            circ.add_CNOT_gate(q, (q + 1) % n)
    obs = []
    for label in ("Z 0", "Z 1"):
        o = Observable(n)
        o.add_operator(1.0, label)
        obs.append(o)
    total = Observable(n)  # d sum(outputs) / dw is the gradient of <Z0 + Z1>
    total.add_operator(1.0, "Z 0")
    total.add_operator(1.0, "Z 1")
    qstate = QuantumState(n)
    result = {}

    def run(with_grad: bool) -> np.ndarray:
        out = np.empty((batch, 2))
        g = np.zeros(len(w))
        for b in range(batch):
            for i in range(n):
                circ.set_parameter(i, -float(x[b, i]))
            qstate.set_zero_state()
            circ.update_quantum_state(qstate)
            out[b] = [o.get_expectation_value(qstate) for o in obs]
            if with_grad:
                g -= np.asarray(circ.backprop(total))[n:]
        result["grad"] = g
        return out

    def step():
        run(True)

    def forward():
        return run(False)

    def grad():
        return result["grad"]

    return step, forward, grad, "c128"


def _tc_single(tc, K, wl):
    n, layers, _ = wl

    def single(xi, wv):
        c = tc.Circuit(n)
        for i in range(n):
            c.ry(i, theta=xi[i])
        for layer in range(layers):
            for q in range(n):
                c.ry(q, theta=wv[weight_index(n, layer, q, 0)])
                c.rz(q, theta=wv[weight_index(n, layer, q, 1)])
            for q in range(n):
                c.cnot(q, (q + 1) % n)
        return K.stack([K.real(c.expectation_ps(z=[0])), K.real(c.expectation_ps(z=[1]))])

    return single


def build_tc_torch(wl, x, w):
    import tensorcircuit as tc
    import torch

    tc.set_backend("pytorch")
    tc.set_dtype("complex64")
    K = tc.backend
    single = _tc_single(tc, K, wl)
    try:
        batched = K.vmap(single, vectorized_argnums=0)
        batched(torch.from_numpy(x[:1]), torch.from_numpy(w))
        how = "vmap"
    except Exception as err:  # noqa: BLE001 - fall back to a loop over the batch
        print(
            f"note: tensorcircuit pytorch vmap failed ({type(err).__name__}: {err}); looping over the batch",
            file=sys.stderr,
        )

        def batched(xb, wv):
            return torch.stack([single(xb[i], wv) for i in range(xb.shape[0])])

        how = "loop"
    xt = torch.from_numpy(x)
    wt = torch.from_numpy(w).clone().requires_grad_(True)

    def step():
        wt.grad = None
        batched(xt, wt).sum().backward()

    def forward():
        with torch.no_grad():
            return batched(xt, wt).double().numpy()

    def grad():
        return wt.grad.double().numpy()

    return step, forward, grad, f"c64 ({how})"


def build_tc_jax(wl, x, w):
    import jax
    import jax.numpy as jnp
    import tensorcircuit as tc

    tc.set_backend("jax")
    tc.set_dtype("complex64")
    K = tc.backend
    single = _tc_single(tc, K, wl)
    # values (batch,) of sum(outputs) per sample and their weight gradient summed over the batch
    vvag = K.jit(K.vectorized_value_and_grad(lambda xi, wv: K.sum(single(xi, wv)), argnums=1, vectorized_argnums=0))
    fwd = K.jit(K.vmap(single, vectorized_argnums=0))
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    state = {}

    def step():
        value, g = vvag(xj, wj)
        jax.block_until_ready((value, g))
        state["grad"] = g

    def forward():
        import numpy as np

        return np.asarray(jax.block_until_ready(fwd(xj, wj)), dtype=np.float64)

    def grad():
        import numpy as np

        return np.asarray(state["grad"], dtype=np.float64)

    return step, forward, grad, "c64"


def build_qml(wl, x, w, aer: bool, threads: int):
    import torch
    from qiskit_machine_learning.connectors import TorchConnector
    from qiskit_machine_learning.neural_networks import EstimatorQNN

    qc, xp, wp, obs = qiskit_circuit(wl)
    kwargs = {}
    if aer:
        from qiskit_aer.primitives import EstimatorV2 as AerEstimator
        from qiskit_machine_learning.gradients import ParamShiftEstimatorGradient

        est = AerEstimator(options={"default_precision": 0.0})
        kwargs = {"estimator": est, "gradient": ParamShiftEstimatorGradient(estimator=est)}
    # default_precision=0: exact expectation values (EstimatorQNN's default 1/64 would add
    # sampling noise on Aer's estimator and make the outputs differ from every other engine).
    qnn = EstimatorQNN(circuit=qc, observables=obs, input_params=xp, weight_params=wp, default_precision=0.0, **kwargs)
    model = TorchConnector(qnn, initial_weights=torch.from_numpy(w).double())
    xt = torch.from_numpy(x)

    def step():
        model.weight.grad = None
        model(xt).sum().backward()

    def forward():
        with torch.no_grad():
            return model(xt).double().numpy()

    def grad():
        return model.weight.grad.double().numpy()

    return step, forward, grad, "c128"


def build(impl: str, wl, x, w, threads: int):
    if impl == "exact":
        return build_qcore(wl, x, w, "exact")
    if impl == "exact128":
        return build_qcore(wl, x, w, "exact", complex128=True)
    if impl == "aer":
        return build_qcore(wl, x, w, "aer")
    if impl == "pennylane":
        return build_pennylane(wl, x, w)
    if impl == "lightning":
        return build_pennylane(wl, x, w, lightning=True)
    if impl == "qulacs":
        return build_qulacs(wl, x, w)
    if impl == "tc-torch":
        return build_tc_torch(wl, x, w)
    if impl == "tc-jax":
        return build_tc_jax(wl, x, w)
    if impl == "qml-estimator":
        return build_qml(wl, x, w, aer=False, threads=threads)
    if impl == "qml-aer":
        return build_qml(wl, x, w, aer=True, threads=threads)
    raise KeyError(impl)


# --------------------------------------------------------------------------------------------
# One cell, in a child process
# --------------------------------------------------------------------------------------------


def missing_packages(impl: str) -> list[str]:
    return [p for p in IMPL_BY_NAME[impl].packages if importlib.util.find_spec(p) is None]


def dist_versions(impl: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in VERSION_OF.get(impl, []):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def time_steps(step, *, slow: bool, quick: bool) -> dict:
    """Warm-up (excluded) then the median over the timed repetitions, in ms.

    Slow peers (EstimatorQNN, minutes per step on this workload) get no separate warm-up: their
    forward check has already run once, and their step time is dominated by per-circuit work.
    """
    first_ms = None
    if not slow:
        t0 = time.perf_counter()
        step()  # first step: tracing / compilation / caches; excluded
        first_ms = (time.perf_counter() - t0) * 1e3
    if slow:
        reps = 1 if quick else 2
        warmup, min_reps, target_s, budget_s, floor_reps, max_reps = 0, reps, 0.0, 0.0, reps, reps
    elif quick:
        warmup, min_reps, target_s, budget_s, floor_reps, max_reps = 1, 5, 0.3, 10.0, 1, 500
    else:
        warmup, min_reps, target_s, budget_s, floor_reps, max_reps = 3, 20, 1.0, 60.0, 3, 2000
    if first_ms is not None and first_ms > 2000:
        warmup = 0
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if len(times) >= max_reps:
            break
        if len(times) >= min_reps and elapsed >= target_s:
            break
        if len(times) >= floor_reps and elapsed >= budget_s:
            break
    ms = [t * 1e3 for t in times]
    return {
        "ms": statistics.median(ms),
        "reps": len(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "first_ms": first_ms if first_ms is not None else ms[0],
        "warmup": warmup + (0 if slow else 1),
    }


def kernel_bytes(step) -> dict:
    """What one step's aten kernels move: operand bytes read plus result bytes written, per kernel.

    Counted by a dispatch mode around one step (forward and backward); views (reshape, expand,
    transpose) move nothing and are skipped; a strided operand counts its elements, an expanded one
    its storage.  Caches are ignored, so this is the traffic of a machine without them: the step
    cannot beat ``bytes / copy bandwidth`` unless its operands stay in cache between kernels.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    def nbytes(tree) -> int:
        total = 0
        for t in tree_flatten(tree)[0]:
            if isinstance(t, torch.Tensor):
                total += min(t.numel(), t.untyped_storage().nbytes() // t.element_size()) * t.element_size()
        return total

    counts = {"read": 0, "written": 0, "kernels": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                counts["read"] += nbytes((args, kwargs))
                counts["written"] += nbytes(out)
                counts["kernels"] += 1
            return out

    with Count():
        step()
    return counts


def copy_bandwidth(nbytes: int) -> float:
    """GB/s of a torch copy between two ``nbytes`` buffers (read + write), best of repeats: what the
    machine can do, where the step's median also pays for whatever else shares the cores."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(max(5, min(50, (2 << 30) // nbytes))):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / min(times) / 1e9


def memory_traffic(step, wl, itemsize: int, step_ms: float) -> dict:
    """The step's kernel bytes against this machine's copy bandwidth, measured now."""
    n, _, batch = wl
    state = batch * 2**n * itemsize
    moved = kernel_bytes(step)
    total = moved["read"] + moved["written"]
    out = {"state_bytes": state, "bytes": total, "kernels": moved["kernels"], "passes": total / state}
    for key, size in (("bw_state", state), ("bw_dram", 256 << 20)):
        out[key] = copy_bandwidth(max(size, 1 << 20))
    out["step_ms"] = step_ms
    return out


def run_one(impl: str, wl, *, threads: int, quick: bool, seed: int, ref_path: str | None) -> dict:
    """Build, check and time one cell; return its result (a plain dict)."""
    res: dict[str, Any] = {"impl": impl, "workload": wl_name(wl), "threads": threads}
    miss = missing_packages(impl)
    if miss:
        res.update(status="skipped", note=f"not installed: {', '.join(miss)}")
        return res
    cpus = pin_threads(threads)
    res["cpus"] = cpus
    import numpy as np
    import qiskit  # noqa: F401  (the circuit / reference side; imported for every cell alike)

    for p in IMPL_BY_NAME[impl].packages:
        try:
            __import__(p)
        except Exception as err:  # noqa: BLE001
            res.update(status="skipped", note=f"import {p} failed: {type(err).__name__}: {err}")
            return res
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)
    if impl in ("exact", "exact128", "aer"):
        try:
            from qcore import QuantumLayer  # noqa: F401
        except ImportError as err:
            res.update(status="skipped", note=f"qcore.QuantumLayer not importable: {err}")
            return res
    res["versions"] = dist_versions(impl)
    x, w = make_data(wl, seed)
    base = maxrss_mb()
    t0 = time.perf_counter()
    step, forward, grad, precision = build(impl, wl, x, w, threads)
    res["build_s"] = time.perf_counter() - t0
    res["precision"] = precision
    out = forward()  # before timing (also a warm-up of the forward path)
    res.update(time_steps(step, slow=IMPL_BY_NAME[impl].slow, quick=quick))
    g = grad()
    peak = maxrss_mb()
    res["peak_mb"] = peak - base
    res["rss_baseline_mb"] = base
    res["rss_peak_mb"] = peak
    if impl in ("exact", "exact128") and wl[0] >= TRAFFIC_QUBITS:
        res["traffic"] = memory_traffic(step, wl, 16 if impl == "exact128" else 8, res["ms"])

    # correctness, after the memory reading (the reference allocates its own states)
    if ref_path:
        ref = np.load(ref_path)
        ref_out = ref["out"]
        ref_grad = ref["grad"] if "grad" in ref.files else None
    else:
        ref_out, ref_grad = reference_outputs(wl, x, w), None
    out = np.asarray(out, dtype=np.float64)
    if out.shape != ref_out.shape:
        res["fwd_err"] = float("inf")
        res["check_note"] = f"output shape {out.shape}, expected {ref_out.shape}"
    else:
        res["fwd_err"] = float(np.max(np.abs(out - ref_out)))
    tol = FWD_TOL if wl_name(wl) == REFERENCE else FWD_TOL_LARGE
    res["fwd_tol"] = tol
    ok = res["fwd_err"] <= tol
    if ref_grad is not None:
        g = np.asarray(g, dtype=np.float64).reshape(-1)
        if g.shape != ref_grad.shape:
            res["grad_err"] = float("inf")
        else:
            res["grad_err"] = float(np.max(np.abs(g - ref_grad)) / max(1.0, float(np.max(np.abs(ref_grad)))))
        ok = ok and res["grad_err"] <= GRAD_TOL
    res["check"] = bool(ok)
    res["status"] = "ok"
    return res


def child_main(args) -> int:
    impl, wl = args.one[0], parse_workload(args.one[1])
    if impl not in IMPL_BY_NAME:
        print(f"unknown implementation {impl!r}; known: {', '.join(IMPL_BY_NAME)}", file=sys.stderr)
        return 2
    try:
        res = run_one(impl, wl, threads=args.threads, quick=args.quick, seed=args.seed, ref_path=args.ref)
    except Exception as err:  # noqa: BLE001 - reported in the table, with the traceback on stderr
        import traceback

        traceback.print_exc()
        res = {"impl": impl, "workload": wl_name(wl), "status": "error", "note": f"{type(err).__name__}: {err}"[:300]}
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(res), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Parent: the cells, the table, the targets
# --------------------------------------------------------------------------------------------


def default_cells(workloads, impls, no_limits: bool):
    cells = []
    for wl in workloads:
        for name in impls:
            impl = IMPL_BY_NAME[name]
            if not no_limits:
                if impl.reference_only and wl_name(wl) != REFERENCE:
                    continue
                if impl.max_qubits is not None and wl[0] > impl.max_qubits:
                    continue
            cells.append((name, wl))
    return cells


def run_cell(impl, wl, args, ref_path, env) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        impl,
        wl_name(wl),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--ref",
        ref_path,
    ]
    if args.quick:
        cmd.append("--quick")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {
            "impl": impl,
            "workload": wl_name(wl),
            "status": "error",
            "note": f"timed out after {args.cell_timeout:.0f} s",
        }
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            res = json.loads(line[len(RESULT_MARK) :])
            res["cell_wall_s"] = wall
            if res.get("status") == "error" and args.verbose:
                print(proc.stderr[-3000:], file=sys.stderr)
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {
        "impl": impl,
        "workload": wl_name(wl),
        "status": "error",
        "note": f"child exited {proc.returncode}: " + " | ".join(tail)[-300:],
    }


def fmt_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.3f}"


def print_table(results: list[dict]) -> None:
    exact_ms = {r["workload"]: r["ms"] for r in results if r["impl"] == "exact" and r.get("status") == "ok"}
    header = ["workload", "implementation", "precision", "ms/step", "peer/exact", "peak MB", "check", "reps"]
    rows = []
    for r in results:
        wl = r["workload"]
        if r.get("status") != "ok":
            rows.append([wl, r["impl"], "", r.get("status", "?"), "", "", "", r.get("note", "")])
            continue
        ratio = f"{r['ms'] / exact_ms[wl]:,.1f}x" if wl in exact_ms else "n/a"
        if r["impl"] == "exact":
            ratio = "1.0x"
        err = f"{r['fwd_err']:.0e}"
        if "grad_err" in r:
            err += f", g {r['grad_err']:.0e}"
        check = ("✓ " if r["check"] else "✗ ") + err
        rows.append(
            [
                wl,
                r["impl"],
                r.get("precision", ""),
                fmt_ms(r["ms"]),
                ratio,
                f"{r['peak_mb']:.0f}",
                check,
                str(r["reps"]),
            ]
        )
    widths = [
        max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(len(header))
    ]
    # the last column (reps / notes) is not padded
    line = "  ".join(h.ljust(widths[i]) if i < len(header) - 1 else h for i, h in enumerate(header))
    print(line)
    print("-" * min(len(line) + 20, 140))
    prev = None
    for row in rows:
        if prev is not None and row[0] != prev:
            print()
        prev = row[0]
        cells = []
        for i, c in enumerate(row):
            if i == len(row) - 1:
                cells.append(c)
            elif i in (3, 4, 5):
                cells.append(c.rjust(widths[i]))
            else:
                cells.append(c.ljust(widths[i]))
        print("  ".join(cells))


def busy_process(cpu: int) -> subprocess.Popen:
    """One spinning Python process pinned to ``cpu``: "another process uses a core"."""
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.3)  # spinning before the cell starts
    return proc


def print_ratios(results: list[dict]) -> None:
    """peer ms / exact ms, one row per peer and one column per workload."""
    ok = {(r["workload"], r["impl"]): r["ms"] for r in results if r.get("status") == "ok"}
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    peers = [i for i in dict.fromkeys(r["impl"] for r in results) if i != "exact"]
    rows = []
    for impl in peers:
        cells = []
        for wl in workloads:
            a, b = ok.get((wl, "exact")), ok.get((wl, impl))
            cells.append(f"{b / a:,.1f}x" if a and b else "-")
        rows.append([impl, *cells])
    if not rows:
        return
    header = ["peer / exact", *workloads]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    print("  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)))
    for r in rows:
        print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))


def print_load_table(quiet: list[dict], loaded: list[dict], cpu: int) -> None:
    """Quiet and loaded medians of every cell, side by side, and their ratio."""
    print(f"quiet vs loaded: every cell run again beside one busy process pinned to CPU {cpu}")
    header = ["workload", "implementation", "quiet ms", "loaded ms", "loaded/quiet"]
    rows = []
    for q, ld in zip(quiet, loaded, strict=True):
        if q.get("status") != "ok" or ld.get("status") != "ok":
            continue
        rows.append([q["workload"], q["impl"], fmt_ms(q["ms"]), fmt_ms(ld["ms"]), f"{ld['ms'] / q['ms']:.2f}x"])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(5)]
    print("  ".join(h.ljust(widths[i]) if i < 2 else h.rjust(widths[i]) for i, h in enumerate(header)))
    for r in rows:
        print("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)))


def print_traffic(results: list[dict]) -> None:
    """How far the large exact steps are from the memory-traffic limit."""
    for r in results:
        t = r.get("traffic")
        if not t:
            continue
        mib = 1 << 20
        print(
            f"memory traffic, {r['impl']} {r['workload']}: the step's {t['kernels']} kernels move "
            f"{t['bytes'] / mib:,.0f} MiB ({t['passes']:.1f} passes over the {t['state_bytes'] / mib:,.0f} MiB "
            f"batch of states; operands read + results written per aten kernel, views excluded)"
        )
        for key, what in (("bw_state", "state-sized buffers"), ("bw_dram", "256 MiB buffers")):
            floor = t["bytes"] / (t[key] * 1e9) * 1e3
            print(
                f"  copy bandwidth ({what}, measured in this cell): {t[key]:.1f} GB/s -> traffic floor "
                f"{fmt_ms(floor)} ms; the step's {fmt_ms(t['step_ms'])} ms is {t['step_ms'] / floor:.1f}x that floor"
            )


def evaluate_targets(results: list[dict]) -> list[dict]:
    ok = {(r["workload"], r["impl"]): r for r in results if r.get("status") == "ok"}

    def ms(wl, impl):
        r = ok.get((wl, impl))
        return r["ms"] if r else None

    targets = []

    def ratio_target(text, wl, fast, slow, factor):
        a, b = ms(wl, fast), ms(wl, slow)
        if a is None or b is None:
            missing = [i for i, v in ((fast, a), (slow, b)) if v is None]
            targets.append({"target": text, "status": "n/a", "measured": f"not measured: {', '.join(missing)}"})
            return
        r = b / a
        targets.append(
            {
                "target": text,
                "status": "met" if r >= factor else "NOT met",
                "measured": f"{slow} {fmt_ms(b)} ms / {fast} {fmt_ms(a)} ms = {r:,.1f}x",
            }
        )

    ratio_target(
        "8/3/32: exact >= 10x faster than PennyLane default.qubit backprop", REFERENCE, "exact", "pennylane", 10
    )
    ratio_target(
        "8/3/32: exact >= 1000x faster than EstimatorQNN+TorchConnector", REFERENCE, "exact", "qml-estimator", 1000
    )
    ratio_target("8/3/32: exact faster than tensorcircuit-ng JAX jit+vmap", REFERENCE, "exact", "tc-jax", 1.0 + 1e-12)
    ratio_target("8/3/32: aer >= 10x faster than EstimatorQNN+TorchConnector on Aer", REFERENCE, "aer", "qml-aer", 10)
    for wl, limit in (("12/3/32", 74.0), ("16/2/8", 66.0), ("20/1/2", 330.0)):
        text = f"{wl}: exact under {limit:g} ms/step"
        m = ms(wl, "exact")
        if m is None:
            targets.append({"target": text, "status": "n/a", "measured": "not measured: exact"})
        else:
            targets.append(
                {"target": text, "status": "met" if m < limit else "NOT met", "measured": f"exact {fmt_ms(m)} ms"}
            )
    return targets


def parent_main(args) -> int:
    workloads = args.workloads or (
        [parse_workload(REFERENCE)] if args.quick else [parse_workload(w) for w in ALL_WORKLOADS]
    )
    impls = args.impls or [i.name for i in IMPLS]
    cells = default_cells(workloads, impls, args.no_limits)
    if not cells:
        print("nothing to run: no (implementation, workload) cell is selected", file=sys.stderr)
        return 2

    env = dict(os.environ)
    env.update(thread_env(args.threads))
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "ignore")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    avail = len(os.sched_getaffinity(0))
    print(
        f"qcore engine benchmark — one training step (forward + backward of outputs.sum()) per "
        f"workload n/L/B; {'quick' if args.quick else 'full'} mode; seed {args.seed}"
    )
    print(
        f"python {platform.python_version()} on {platform.machine()}, {avail} usable cores "
        f"(load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} at start)"
    )
    print(
        f"threads: {args.threads} for every implementation (torch.set_num_threads, "
        f"OMP/MKL/OPENBLAS/RAYON_NUM_THREADS={args.threads}, XLA_FLAGS intra_op_parallelism_threads="
        f"{args.threads}{', pinned to the first ' + str(args.threads) + ' cores' if args.threads < avail else ''})"
    )
    print(
        "each cell runs in a fresh subprocess; ms/step = median after warm-up (first step, i.e. "
        "tracing/JIT, excluded); peak MB = ru_maxrss after the run minus after the imports"
    )
    print(
        f"check: forward outputs vs qiskit Statevector, max abs err <= {FWD_TOL:g} on {REFERENCE} "
        f"(<= {FWD_TOL_LARGE:g} on larger workloads, for complex64 rounding); on {REFERENCE} also "
        f"the weight gradient vs a qiskit parameter-shift reference (rel err <= {GRAD_TOL:g})"
    )
    print()

    tmp = tempfile.TemporaryDirectory(prefix="qcore-bench-")
    ref_paths = {}
    import numpy as np

    for wl in workloads:
        if not any(c[1] == wl for c in cells):
            continue
        t0 = time.perf_counter()
        x, w = make_data(wl, args.seed)
        out = reference_outputs(wl, x, w)
        arrays = {"out": out}
        if wl_name(wl) == REFERENCE:
            arrays["grad"] = reference_grad(wl, x, w)
        path = os.path.join(tmp.name, f"ref-{wl_name(wl).replace('/', '_')}.npz")
        np.savez(path, **arrays)
        ref_paths[wl] = path
        print(
            f"[reference] {wl_name(wl)}: qiskit Statevector outputs"
            f"{' and gradient' if 'grad' in arrays else ''} in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )

    results, loaded = [], []
    busy_cpu = max(os.sched_getaffinity(0))
    for k, (impl, wl) in enumerate(cells, 1):
        runs = [("quiet", results)] + ([("loaded", loaded)] if args.with_load else [])
        for label, into in runs:
            tag = f" ({label})" if args.with_load else ""
            print(f"[{k}/{len(cells)}] {impl} {wl_name(wl)}{tag} ...", end=" ", file=sys.stderr, flush=True)
            miss = missing_packages(impl)
            if miss:
                res = {
                    "impl": impl,
                    "workload": wl_name(wl),
                    "status": "skipped",
                    "note": f"not installed: {', '.join(miss)}",
                }
            else:
                busy = busy_process(busy_cpu) if label == "loaded" else None
                try:
                    res = run_cell(impl, wl, args, ref_paths[wl], env)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
            into.append(res)
            if res.get("status") == "ok":
                print(
                    f"{fmt_ms(res['ms'])} ms/step ({res['reps']} reps), {res['peak_mb']:.0f} MB, "
                    f"check {'✓' if res['check'] else '✗'}  [{res.get('cell_wall_s', 0):.0f} s]",
                    file=sys.stderr,
                )
            else:
                print(f"{res['status']}: {res.get('note', '')}", file=sys.stderr)
    tmp.cleanup()

    print()
    print_table(results)
    for r in results:
        if r.get("status") == "skipped":
            print(f"note: {r['impl']} skipped on {r['workload']}: {r.get('note', '')}")
    versions = {}
    for r in results:
        versions.update(r.get("versions", {}))
    if versions:
        print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    print(
        "peer/exact = peer ms / exact ms (how many times faster exact is); numbers are noisy when "
        "other processes share the cores"
    )
    print()
    print_ratios(results)
    if args.with_load:
        print()
        print_load_table(results, loaded, busy_cpu)
    if any(r.get("traffic") for r in results):
        print()
        print_traffic(results)
    print(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")

    targets = evaluate_targets(results)
    print()
    print("targets:")
    for t in targets:
        mark = {"met": "✓ met", "NOT met": "✗ NOT met"}.get(t["status"], "- n/a")
        print(f"  {mark:10} {t['target']}   [{t['measured']}]")

    if args.json:
        payload = {
            "config": {
                "quick": args.quick,
                "threads": args.threads,
                "seed": args.seed,
                "workloads": [wl_name(w) for w in workloads],
                "impls": impls,
                "with_load": args.with_load,
                "python": platform.python_version(),
                "usable_cores": avail,
                "fwd_tol": FWD_TOL,
                "fwd_tol_large": FWD_TOL_LARGE,
                "grad_tol": GRAD_TOL,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "versions": versions,
            "results": results,
            "loaded": loaded,
            "targets": targets,
        }
        tmp_json = args.json + ".tmp"
        with open(tmp_json, "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp_json, args.json)
        print(f"\nwrote {args.json}")

    wrong = [r for r in results + loaded if r.get("status") == "ok" and not r["check"]]
    errors = [r for r in results + loaded if r.get("status") == "error"]
    if wrong or errors:
        for r in wrong:
            print(f"FAILED check: {r['impl']} on {r['workload']}", file=sys.stderr)
        for r in errors:
            print(f"ERROR: {r['impl']} on {r['workload']}: {r.get('note', '')}", file=sys.stderr)
        return 1
    if args.strict and any(t["status"] == "NOT met" for t in targets):
        return 3
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="reference workload only (unless --workloads), fewer repetitions"
    )
    p.add_argument(
        "--workloads",
        type=lambda s: [parse_workload(v) for v in s.split(",") if v],
        help=f"comma-separated qubits/layers/batch (default: {','.join(ALL_WORKLOADS)})",
    )
    p.add_argument(
        "--impls",
        type=lambda s: [v for v in s.split(",") if v],
        help=f"comma-separated subset of: {','.join(IMPL_BY_NAME)}",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="threads for every implementation (default: all usable cores)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--no-limits",
        action="store_true",
        help="also run aer above 12 qubits and the EstimatorQNN peers off the reference workload",
    )
    p.add_argument(
        "--with-load",
        action="store_true",
        help="run every cell twice: quiet, then beside one busy process pinned to the last usable CPU",
    )
    p.add_argument("--strict", action="store_true", help="exit 3 when a target is not met")
    p.add_argument("--cell-timeout", type=float, default=1800.0, help="seconds per cell (default 1800)")
    p.add_argument("--verbose", action="store_true", help="show a failed cell's traceback")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "WORKLOAD"), help=argparse.SUPPRESS)
    p.add_argument("--ref", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.impls:
        bad = [i for i in args.impls if i not in IMPL_BY_NAME]
        if bad:
            p.error(f"unknown implementation(s) {', '.join(bad)}; known: {', '.join(IMPL_BY_NAME)}")
    if args.one:
        # a child: cap the thread pools before numpy / torch / jax are imported
        for k, v in thread_env(args.threads).items():
            os.environ[k] = v
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
