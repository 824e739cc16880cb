"""The conventions every circuit builder follows, and how built parts are stacked into a model.

Convention: a builder takes the number of qubits, its options and ``params`` (a name prefix or a
ready :class:`ParameterVector` of the documented length) and returns a :data:`Part`, the pair
``(circuit, params)``: a flat ``QuantumCircuit`` (only basic gates) and the one ``ParameterVector``
it added, in the order the builder documents. Which vector is an input and which a weight is
decided when parts are stacked: :func:`compose` takes the encoder first and ansätze after, and
returns a :class:`ModelCircuit` that names ``inputs`` and ``weights`` for ``QuantumLayer``.
"""

from __future__ import annotations

from dataclasses import dataclass

from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterVector

Part = tuple[QuantumCircuit, ParameterVector]
ROTATIONS = ("rx", "ry", "rz")


def parameter_vector(params: ParameterVector | str, size: int) -> ParameterVector:
    """``params`` if it is a vector of ``size`` parameters, else a new vector of that name."""
    if isinstance(params, str):
        return ParameterVector(params, size)
    if len(params) != size:
        raise ValueError(f"ParameterVector {params.name!r} has {len(params)} parameters; {size} needed")
    return params


@dataclass(frozen=True)
class ModelCircuit:
    """A circuit with its parameters split into classical inputs and trainable weights.

    ``inputs`` and ``weights`` are in the order a ``QuantumLayer`` feeds them: column ``j`` of the
    input batch drives ``inputs[j]``, entry ``k`` of the weight vector drives ``weights[k]``.
    """

    circuit: QuantumCircuit
    inputs: tuple[Parameter, ...]
    weights: tuple[Parameter, ...]


def stack(parts: list[Part]) -> QuantumCircuit:
    """The parts' circuits one after another.

    A vector may appear in several parts (shared parameters); two different vectors may not share
    a name, since Qiskit identifies parameters in a circuit by name.
    """
    num_qubits = {c.num_qubits for c, _ in parts}
    if len(num_qubits) != 1:
        raise ValueError(f"parts act on different numbers of qubits: {sorted(num_qubits)}")
    vectors: dict[str, ParameterVector] = {}
    for _, vec in parts:
        if vectors.setdefault(vec.name, vec) is not vec:
            raise ValueError(
                f"two different ParameterVectors are named {vec.name!r}; build the parts with distinct `params=` names"
            )
    circuit = QuantumCircuit(num_qubits.pop())
    for part, _ in parts:
        circuit.compose(part, inplace=True)
    return circuit


def distinct_parameters(vectors: list[ParameterVector]) -> tuple[Parameter, ...]:
    """The vectors' parameters concatenated, each vector once (the first time it appears)."""
    seen: list[ParameterVector] = []
    for vec in vectors:
        if not any(vec is s for s in seen):
            seen.append(vec)
    return tuple(p for vec in seen for p in vec)


def compose(encoder: Part, *ansatze: Part) -> ModelCircuit:
    """The encoder, then the ansätze: its vector is the inputs, theirs (concatenated) the weights.

    Passing the same ansatz part twice applies it twice with shared weights (listed once).
    """
    circuit = stack([encoder, *ansatze])
    weights = distinct_parameters([vec for _, vec in ansatze])
    if set(encoder[1]) & set(weights):
        raise ValueError("the encoder's parameters are also used as weights")
    return ModelCircuit(circuit, tuple(encoder[1]), weights)
