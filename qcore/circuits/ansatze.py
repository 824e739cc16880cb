"""Ansätze: the trainable circuits of the five methods.

Every builder returns ``(circuit, params)`` (see :mod:`qcore.circuits.base`): a flat circuit of
basic gates and its one ``ParameterVector`` of weights, whose length is the formula in the
builder's docstring and whose order the docstring gives.
"""

from __future__ import annotations

from collections.abc import Sequence

from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.circuit import library as qiskit_library

from qcore.circuits.base import ROTATIONS, Part, parameter_vector


def cnot_pairs(n: int, entanglement: str) -> list[tuple[int, int]]:
    """CNOT (control, target) pairs: ``"chain"`` is ``(0,1), (1,2), …, (n-2,n-1)``; ``"ring"`` adds
    ``(n-1, 0)`` when ``n > 2`` (for two qubits it would repeat the pair's link)."""
    chain = [(i, i + 1) for i in range(n - 1)]
    if entanglement == "chain":
        return chain
    if entanglement == "ring":
        return [*chain, (n - 1, 0)] if n > 2 else chain
    raise ValueError(f"entanglement must be 'ring' or 'chain', got {entanglement!r}")


def hardware_efficient(
    n: int,
    layers: int,
    rotations: Sequence[str] = ("ry", "rz"),
    entanglement: str = "ring",
    params: ParameterVector | str = "θ",
) -> Part:
    """Rotation layers and CNOT entanglers; ``layers * n * len(rotations)`` parameters.

    Each layer applies every rotation of ``rotations`` in turn on every qubit, then the CNOTs of
    :func:`cnot_pairs`. ``params[(l * len(rotations) + r) * n + q]`` is layer ``l``, rotation
    ``r``, qubit ``q``. The generic hardware-efficient ansatz (Kandala et al., arXiv 1704.05018),
    for methods that do not publish their circuit (QTHA, arXiv 2503.12790).
    """
    bad = [r for r in rotations if r not in ROTATIONS]
    if bad:
        raise ValueError(f"rotations must be among {ROTATIONS}, got {bad}")
    theta = parameter_vector(params, layers * n * len(rotations))
    circuit = QuantumCircuit(n, name="hardware_efficient")
    angles = iter(theta)
    for _ in range(layers):
        for rotation in rotations:
            for q in range(n):
                getattr(circuit, rotation)(next(angles), q)
        for control, target in cnot_pairs(n, entanglement):
            circuit.cx(control, target)
    return circuit, theta


def qdllm_ansatz(n: int = 11, blocks: int = 2, entanglement: str = "ring", params: ParameterVector | str = "θ") -> Part:
    """The QD-LLM student's ansatz (arXiv 2505.13205); ``blocks * (7n - 5)`` parameters.

    144 for the paper's 11 qubits and 2 blocks: 72 per block = ``3*10 + 9 + 3*11``.

    Each block, as the paper describes it: RY·RY·RY on qubits ``0 … n-2`` (``3(n-1)``), RZZ on the
    neighbouring pairs ``(1,2) … (n-2,n-1)`` (``n-2``), RZ·RZ·RZ on all ``n`` qubits (``3n``), then
    a CNOT ring segment, which the paper does not spell out: we use :func:`cnot_pairs`, by default
    the ring ``(0,1), …, (n-2,n-1), (n-1,0)``. The parameters are in that gate order, block by
    block. Three RYs (or RZs) in a row compose into one rotation, so the circuit is reparametrised
    (fewer effective angles) but keeps the paper's parameter count.
    """
    if n < 2:
        raise ValueError(f"the QD-LLM ansatz needs at least 2 qubits, got {n}")
    theta = parameter_vector(params, blocks * (7 * n - 5))
    circuit = QuantumCircuit(n, name="qdllm")
    angles = iter(theta)
    for _ in range(blocks):
        for q in range(n - 1):
            for _ in range(3):
                circuit.ry(next(angles), q)
        for q in range(1, n - 1):
            circuit.rzz(next(angles), q, q + 1)
        for q in range(n):
            for _ in range(3):
                circuit.rz(next(angles), q)
        for control, target in cnot_pairs(n, entanglement):
            circuit.cx(control, target)
    return circuit, theta


def default_offsets(n: int, layers: int) -> list[int]:
    """Connectivity offsets ``1, 2, …, n-1, 1, 2, …``: growing by layer, cycling past ``n-1``."""
    return [1 + layer % (n - 1) for layer in range(layers)]


def cnot_ry_blocks(
    n: int, layers: int, offsets: Sequence[int] | None = None, params: ParameterVector | str = "θ"
) -> Part:
    """The PQC head's long-range CNOT-RY blocks (arXiv 2504.08732); ``layers * n`` parameters.

    Layer ``l`` has offset ``d = offsets[l]`` (default :func:`default_offsets`: 1, 2, …) and, for
    ``i = 0 … n-1``, a block ``CX(i, t)`` then ``RY(θ)`` on ``t = (i + d) mod n``: distance-1 links
    first, then ever longer ones. ``params[l * n + i]`` is layer ``l``, block ``i``.
    """
    if n < 2:
        raise ValueError(f"CNOT-RY blocks need at least 2 qubits, got {n}")
    offsets = default_offsets(n, layers) if offsets is None else list(offsets)
    if len(offsets) != layers:
        raise ValueError(f"{len(offsets)} offsets given for {layers} layers")
    if any(d % n == 0 for d in offsets):
        raise ValueError(f"offsets must not be multiples of n={n} (a qubit cannot target itself): {offsets}")
    theta = parameter_vector(params, layers * n)
    circuit = QuantumCircuit(n, name="cnot_ry")
    angles = iter(theta)
    for d in offsets:
        for i in range(n):
            target = (i + d) % n
            circuit.cx(i, target)
            circuit.ry(next(angles), target)
    return circuit, theta


def real_amplitudes(
    n: int, reps: int = 3, entanglement: str = "reverse_linear", params: ParameterVector | str = "θ"
) -> Part:
    """Qiskit's ``real_amplitudes`` (RY layers and CX entanglers); ``(reps + 1) * n`` parameters.

    The LLM-QFL clients' classifier (arXiv 2505.18656) with ``reps=3``; ``entanglement`` is passed
    to Qiskit (``"reverse_linear"``, ``"linear"``, ``"full"``, ``"circular"``, …). Parameters are in
    Qiskit's order.
    """
    theta = parameter_vector(params, (reps + 1) * n)
    circuit = qiskit_library.real_amplitudes(n, entanglement=entanglement, reps=reps)
    return circuit.assign_parameters(list(theta)), theta


def qpa_chain(n: int, depth: int, params: ParameterVector | str = "θ") -> Part:
    """QPA's circuit (arXiv 2410.09846); ``n * depth`` parameters (56 for 7 qubits, depth 8).

    Each of the ``depth`` blocks is RY on every qubit then the CNOT chain ``(0,1), …, (n-2,n-1)``
    (not a ring, as in the paper's code). ``params[b * n + q]`` is block ``b``, qubit ``q``.
    """
    theta = parameter_vector(params, n * depth)
    circuit = QuantumCircuit(n, name="qpa")
    angles = iter(theta)
    for _ in range(depth):
        for q in range(n):
            circuit.ry(next(angles), q)
        for control, target in cnot_pairs(n, "chain"):
            circuit.cx(control, target)
    return circuit, theta
