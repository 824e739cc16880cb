"""A trained layer's circuit made ready for one quantum computer: transpiled once to the
device's instruction set (ISA), with one row of parameter values per test sample.

The trained weights are bound into the circuit before transpiling, so the only free parameters
left are the per-sample inputs: the ISA circuit is transpiled once and each sample is a binding of
it (a primitive "PUB" with a parameter-value array), not a circuit of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from qiskit import QuantumCircuit
from qiskit.primitives import PrimitiveResult
from qiskit.providers import BackendV2
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager

from qcore.layer import QuantumLayer

Primitive = Literal["sampler", "estimator"]

# Readout and reset between shots when the backend does not say (IBM's default rep_delay).
DEFAULT_REP_DELAY_S = 250e-6
# Fixed cost of one job on the QPU (loading, compilation on the control system): a rough figure.
JOB_OVERHEAD_S = 2.0


@dataclass(frozen=True)
class CircuitMetrics:
    """What the transpiled circuit costs on the device."""

    depth: int
    two_qubit_gates: int
    qubits_used: int
    duration_s: float  # one shot, from the backend's gate durations

    def as_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "two_qubit_gates": self.two_qubit_gates,
            "qubits_used": self.qubits_used,
            "duration_us": round(self.duration_s * 1e6, 3),
        }


@dataclass(frozen=True)
class CircuitPlan:
    """Everything a primitive needs: the ISA circuit, the observables laid out on the device's
    qubits (estimator) or the measured clbits (sampler), and the per-sample parameter values."""

    primitive: Primitive
    circuit: QuantumCircuit  # ISA, free parameters = the layer's inputs
    observables: tuple[SparsePauliOp, ...]  # laid out to the ISA circuit (estimator only)
    values: np.ndarray  # (samples, circuit.num_parameters), in circuit.parameters order
    metrics: CircuitMetrics
    rep_delay_s: float

    @property
    def samples(self) -> int:
        return int(self.values.shape[0])

    def pubs(self, start: int, stop: int) -> list[tuple[Any, ...]]:
        """The primitive's inputs for samples ``start:stop``: one PUB binding each sample."""
        values = self.values[start:stop]
        if self.primitive == "estimator":  # (samples, 1) bindings x (1, observables) -> (samples, observables)
            return [(self.circuit, [list(self.observables)], values[:, None, :])]
        return [(self.circuit, values)]

    def qpu_seconds(self, shots: int, jobs: int, *, noise_factors: int = 1) -> float:
        """A rough QPU-time estimate: every shot of every binding runs the circuit and waits
        ``rep_delay``; zero-noise extrapolation runs each binding once per noise factor."""
        per_shot = self.metrics.duration_s + self.rep_delay_s
        return self.samples * shots * noise_factors * per_shot + jobs * JOB_OVERHEAD_S


def build_plan(
    layer: QuantumLayer,
    angles: np.ndarray,
    backend: BackendV2,
    *,
    primitive: Primitive = "sampler",
    optimization_level: int = 2,
    seed: int = 0,
) -> CircuitPlan:
    """Bind ``layer``'s trained weights, transpile once for ``backend`` with a preset pass
    manager, and line the per-sample ``angles`` up with the ISA circuit's parameters."""
    weights = layer.weights.detach().cpu().numpy().astype(float)
    logical = layer.circuit.assign_parameters(dict(zip(layer.weight_parameters, weights, strict=True)))
    if primitive == "sampler":
        logical = logical.copy()
        # Only the qubits the observables read are measured: clbit i <- qubit i (layout-free).
        logical.measure_all()
    pm = generate_preset_pass_manager(optimization_level=optimization_level, backend=backend, seed_transpiler=seed)
    isa = pm.run(logical)
    index = {p: i for i, p in enumerate(layer.input_parameters)}
    columns = [index[p] for p in isa.parameters]  # ISA parameters are sorted by name
    values = np.asarray(angles, dtype=float)[:, columns]
    observables = tuple(o.apply_layout(isa.layout) for o in layer.observables) if primitive == "estimator" else ()
    return CircuitPlan(
        primitive,
        isa,
        observables,
        values,
        circuit_metrics(isa, backend),
        float(getattr(backend, "default_rep_delay", None) or DEFAULT_REP_DELAY_S),
    )


def circuit_metrics(isa: QuantumCircuit, backend: BackendV2) -> CircuitMetrics:
    ops = [inst for inst in isa.data if inst.operation.name not in ("barrier", "measure")]
    used = {isa.find_bit(q).index for inst in ops for q in inst.qubits}
    try:
        duration = float(isa.estimate_duration(backend.target, unit="s"))
    except Exception:  # noqa: BLE001 - a target without durations: the estimate falls back to gates only
        duration = 0.0
    return CircuitMetrics(
        depth=isa.depth(lambda inst: inst.operation.name != "barrier"),
        two_qubit_gates=sum(1 for inst in ops if inst.operation.num_qubits == 2),
        qubits_used=len(used),
        duration_s=duration,
    )


def expectation_values(plan: CircuitPlan, result: PrimitiveResult, observables: list[SparsePauliOp]) -> np.ndarray:
    """``(samples, observables)`` expectation values from one job's result.

    The estimator returns them directly. From sampler counts, each observable must be diagonal
    (a sum of I/Z Paulis): ⟨Z_S⟩ is the mean of (-1)^(parity of the measured bits in S).
    """
    if plan.primitive == "estimator":
        return np.asarray(result[0].data.evs, dtype=float).reshape(-1, len(observables))
    bits = result[0].data.meas.to_bool_array(order="little")  # (samples, shots, clbits)
    out = np.zeros((bits.shape[0], len(observables)))
    for k, obs in enumerate(observables):
        for pauli, coeff in zip(obs.paulis, obs.coeffs, strict=True):
            if pauli.x.any():
                raise ValueError(f"observable {obs} is not diagonal in Z; use --primitive estimator")
            parity = bits[..., pauli.z].sum(axis=-1) % 2
            out[:, k] += float(np.real(coeff)) * (1.0 - 2.0 * parity).mean(axis=-1)
    return out
