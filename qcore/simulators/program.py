"""A Qiskit circuit read into a flat list of gates whose angles are affine in the circuit's parameters.

Both simulators start from this form: the `exact` backend compiles it into a PyTorch program, the
`aer` backend uses it to give every gate angle its own parameter for the parameter-shift rule.
Every angle is ``const + sum_j a_j * x_j + sum_k b_k * w_k`` over the layer's inputs ``x`` and
weights ``w``; a product of two parameters (``x * w``) is refused, as is any parameter that is
neither an input nor a weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsFloat

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterExpression

# Gates the simulators understand, with their number of angles.
SUPPORTED_GATES: dict[str, int] = {
    # single-qubit, constant
    "id": 0,
    "h": 0,
    "x": 0,
    "y": 0,
    "z": 0,
    "s": 0,
    "sdg": 0,
    "t": 0,
    "tdg": 0,
    "sx": 0,
    "sxdg": 0,
    # single-qubit, parametrised
    "rx": 1,
    "ry": 1,
    "rz": 1,
    "p": 1,
    "u": 3,
    "u1": 1,
    "u2": 2,
    "u3": 3,
    "r": 2,
    # two-qubit
    "cx": 0,
    "cy": 0,
    "cz": 0,
    "ch": 0,
    "swap": 0,
    "iswap": 0,
    "ecr": 0,
    "crx": 1,
    "cry": 1,
    "crz": 1,
    "cp": 1,
    "cu1": 1,
    "rxx": 1,
    "ryy": 1,
    "rzz": 1,
    "rzx": 1,
    "cu": 4,
    "cu3": 3,
    # three-qubit
    "ccx": 0,
    "cswap": 0,
    "ccz": 0,
}
IGNORED = {"barrier", "delay"}


class CircuitError(ValueError):
    """A circuit the simulators cannot run, with what was found and what is allowed."""


@dataclass(frozen=True)
class Angle:
    """``const + inputs @ x_coeffs + weights @ w_coeffs`` (sparse coefficient tuples)."""

    const: float
    x_coeffs: tuple[tuple[int, float], ...] = ()
    w_coeffs: tuple[tuple[int, float], ...] = ()

    @property
    def depends_on_inputs(self) -> bool:
        return bool(self.x_coeffs)


@dataclass(frozen=True)
class Gate:
    """One gate: its Qiskit name, the qubits it acts on (Qiskit order) and its angles."""

    name: str
    qubits: tuple[int, ...]
    angles: tuple[Angle, ...] = ()


@dataclass(frozen=True)
class Program:
    """A circuit as gates on ``num_qubits`` qubits, driven by ``num_inputs`` and ``num_weights`` numbers."""

    num_qubits: int
    gates: tuple[Gate, ...]
    num_inputs: int
    num_weights: int

    def angle_matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All angles as dense ``(A_x, A_w, c)`` with ``angles = x @ A_x + w @ A_w + c``."""
        angles = [a for g in self.gates for a in g.angles]
        ax = np.zeros((self.num_inputs, len(angles)))
        aw = np.zeros((self.num_weights, len(angles)))
        c = np.zeros(len(angles))
        for col, a in enumerate(angles):
            c[col] = a.const
            for j, v in a.x_coeffs:
                ax[j, col] += v
            for k, v in a.w_coeffs:
                aw[k, col] += v
        return ax, aw, c


def _affine(
    value: SupportsFloat | ParameterExpression, x_index: dict[Parameter, int], w_index: dict[Parameter, int], gate: str
) -> Angle:
    """Read one gate angle as an affine function of the inputs and weights."""
    if not isinstance(value, ParameterExpression):
        return Angle(float(value))
    x_coeffs, w_coeffs = [], []
    for p in value.parameters:
        grad = value.gradient(p)
        if isinstance(grad, ParameterExpression) and grad.parameters:
            raise CircuitError(
                f"gate {gate!r} has angle {value}, which is not linear in {p} "
                "(products of parameters such as x*w are not supported); "
                "use angles of the form a*x + b*w + c"
            )
        coeff = complex(grad)
        if abs(coeff.imag) > 1e-12:
            raise CircuitError(f"gate {gate!r} has a complex angle {value}; angles must be real")
        if p in x_index:
            x_coeffs.append((x_index[p], coeff.real))
        else:
            w_coeffs.append((w_index[p], coeff.real))
    const = complex(value.bind({p: 0.0 for p in value.parameters}))
    return Angle(const.real, tuple(sorted(x_coeffs)), tuple(sorted(w_coeffs)))


def read_circuit(
    circuit: QuantumCircuit,
    inputs: Sequence[Parameter] = (),
    weights: Sequence[Parameter] = (),
) -> Program:
    """Read a Qiskit circuit into a :class:`Program`, refusing what the simulators cannot run.

    ``inputs`` and ``weights`` order the circuit's parameters: column ``j`` of the input tensor
    feeds ``inputs[j]``, entry ``k`` of the weight vector feeds ``weights[k]``.
    """
    inputs, weights = list(inputs), list(weights)
    overlap = set(inputs) & set(weights)
    if overlap:
        raise CircuitError(f"parameter(s) {sorted(map(str, overlap))} are given both as inputs and as weights")
    x_index = {p: i for i, p in enumerate(inputs)}
    w_index = {p: i for i, p in enumerate(weights)}
    if len(x_index) != len(inputs) or len(w_index) != len(weights):
        raise CircuitError("a parameter is listed twice in inputs or weights")
    missing = [p for p in circuit.parameters if p not in x_index and p not in w_index]
    if missing:
        raise CircuitError(
            f"circuit parameter(s) {sorted(map(str, missing))} are neither inputs nor weights; "
            "pass every circuit parameter in `inputs=` or `weights=`"
        )
    gates = []
    for inst in circuit.data:
        op = inst.operation
        name = op.name
        if name in IGNORED:
            continue
        if name not in SUPPORTED_GATES:
            raise CircuitError(
                f"unsupported gate {name!r}; supported gates are {sorted(SUPPORTED_GATES)} "
                "(decompose or transpile the circuit to them first)"
            )
        if getattr(op, "condition", None) is not None:
            raise CircuitError(f"gate {name!r} is classically conditioned, which is not supported")
        qubits = tuple(circuit.find_bit(q).index for q in inst.qubits)
        angles = tuple(_affine(v, x_index, w_index, name) for v in op.params)
        gates.append(Gate(name, qubits, angles))
    return Program(circuit.num_qubits, tuple(gates), len(inputs), len(weights))
