"""The small interface every simulator backend implements, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp


class Simulator(Protocol):
    """Runs one circuit for a batch of inputs and one weight vector, differentiably.

    ``x`` is ``(batch, num_inputs)``, ``w`` is ``(num_weights,)``; both are real tensors and
    gradients flow to both (autograd for `exact`, the parameter-shift rule for `aer`).
    """

    num_qubits: int

    def expval(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(batch, num_observables)`` expectation values."""
        ...

    def probs(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(batch, 2**num_qubits)`` basis-state probabilities, Qiskit's little-endian order."""
        ...


SimulatorFactory = Callable[..., Simulator]
_REGISTRY: dict[str, SimulatorFactory] = {}


def register(name: str) -> Callable[[SimulatorFactory], SimulatorFactory]:
    """Register a simulator factory under a backend name."""

    def wrap(factory: SimulatorFactory) -> SimulatorFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def check_observables(observables: Sequence[SparsePauliOp], num_qubits: int) -> None:
    """Refuse observables of the wrong width or that are not Hermitian (every backend)."""
    for i, obs in enumerate(observables):
        if obs.num_qubits != num_qubits:
            raise ValueError(f"observable {i} acts on {obs.num_qubits} qubits; the circuit has {num_qubits}")
        if not obs.simplify().adjoint().equiv(obs.simplify()):
            raise ValueError(f"observable {i} ({obs}) is not Hermitian; expectation values need Hermitian observables")


def build_simulator(
    backend: str,
    circuit: QuantumCircuit,
    *,
    inputs: Sequence[Parameter],
    weights: Sequence[Parameter],
    observables: Sequence[SparsePauliOp],
    dtype: torch.dtype,
    **options: Any,
) -> Simulator:
    """Build the named backend for one circuit; unknown names are refused with the known ones."""
    if backend not in _REGISTRY:
        raise ValueError(f"unknown backend {backend!r}; available backends: {available_backends()}")
    check_observables(observables, circuit.num_qubits)
    return _REGISTRY[backend](circuit, inputs=inputs, weights=weights, observables=observables, dtype=dtype, **options)
