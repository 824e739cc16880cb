"""`QuantumLayer`: a Qiskit circuit as a differentiable PyTorch module.

    layer = QuantumLayer(circuit, inputs=x_params, weights=w_params, observables=obs, backend="exact")
    y = layer(x)   # (batch, len(x_params)) -> (batch, len(obs)), or (batch, 2**n) with output="probs"

The circuit stays a plain `QuantumCircuit`; the backend (``exact``, ``aer``) is chosen by name and
gets the same circuit, so a model trained on one can be evaluated on another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import Pauli, SparsePauliOp

from . import simulators  # noqa: F401  (registers the backends)
from .simulators.base import Simulator, build_simulator
from .simulators.exact import ExactSimulator

Observable: TypeAlias = SparsePauliOp | Pauli | str


def z_observables(num_qubits: int) -> list[SparsePauliOp]:
    """``⟨Z_i⟩`` for every qubit ``i`` (Qiskit labels are little-endian: qubit 0 is rightmost)."""
    return [SparsePauliOp("I" * (num_qubits - 1 - i) + "Z" + "I" * i) for i in range(num_qubits)]


def as_sparse_pauli_ops(observables: Sequence[Observable]) -> list[SparsePauliOp]:
    out = []
    for obs in observables:
        if isinstance(obs, SparsePauliOp):
            out.append(obs)
        elif isinstance(obs, (Pauli, str)):
            out.append(SparsePauliOp(obs))
        else:
            raise TypeError(
                f"observable {obs!r} has type {type(obs).__name__}; use SparsePauliOp, Pauli or a label string"
            )
    return out


class QuantumLayer(torch.nn.Module):
    """A parametrised circuit whose weights are one trainable tensor.

    Args:
        circuit: any Qiskit circuit whose parameters are all listed in ``inputs`` or ``weights``.
        inputs: circuit parameters fed from the input tensor, column by column.
        weights: circuit parameters trained by this layer (initialised uniformly in ``[0, 2π)``
            from ``seed``).
        observables: what ``output="expval"`` reads out; default ``⟨Z_i⟩`` on every qubit.
        backend: ``"exact"`` (PyTorch statevector, autograd) or ``"aer"`` (Qiskit Aer,
            parameter-shift gradients); extra keyword options go to the backend.
        output: ``"expval"`` or ``"probs"`` (all ``2**n`` basis-state probabilities).
        dtype: ``torch.complex64`` (default) or ``torch.complex128`` simulation precision.
    """

    def __init__(
        self,
        circuit: QuantumCircuit,
        *,
        inputs: Sequence[Parameter] = (),
        weights: Sequence[Parameter] = (),
        observables: Sequence[Observable] | None = None,
        backend: str = "exact",
        output: Literal["expval", "probs"] = "expval",
        dtype: torch.dtype = torch.complex64,
        seed: int | None = None,
        **backend_options: Any,
    ):
        super().__init__()
        if output not in ("expval", "probs"):
            raise ValueError(f"output {output!r} is not supported; use 'expval' or 'probs'")
        obs = as_sparse_pauli_ops(observables) if observables is not None else z_observables(circuit.num_qubits)
        self.circuit = circuit
        # Kept for running the circuit elsewhere (a quantum computer): what binds to what, and the readout.
        self.input_parameters = list(inputs)
        self.weight_parameters = list(weights)
        self.observables = obs
        self.backend = backend
        self.output = output
        self.dtype = dtype
        self.simulator = self.build_simulator(backend, **backend_options)
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init = torch.rand(len(weights), generator=gen, dtype=real) * (2 * math.pi)
        self.weights = torch.nn.Parameter(init)
        self.num_inputs = len(inputs)

    def build_simulator(self, backend: str, **backend_options: Any) -> Simulator:
        """A simulator of this layer's circuit on ``backend`` (the one it runs on, or another:
        :func:`qcore.ablation.circuits_on` evaluates a trained layer under shots and noise)."""
        return build_simulator(
            backend,
            self.circuit,
            inputs=self.input_parameters,
            weights=self.weight_parameters,
            observables=self.observables,
            dtype=self.dtype,
            **backend_options,
        )

    def forward(self, x: torch.Tensor | None = None, *, initial_state: torch.Tensor | None = None) -> torch.Tensor:
        """``initial_state`` (``(batch, 2**n)``, normalised; `exact` only) starts the circuit from
        that state instead of ``|0…0⟩``: how the PQC head amplitude-encodes embeddings exactly."""
        if x is None:
            batch = 1 if initial_state is None else initial_state.shape[0]
            x = torch.zeros(batch, 0, dtype=self.weights.dtype, device=self.weights.device)
        if initial_state is not None:
            exact = self.simulator
            if self.backend != "exact" or not isinstance(exact, ExactSimulator):
                raise ValueError(f"initial_state needs the exact backend, not {self.backend!r}")
            run_exact = exact.probs if self.output == "probs" else exact.expval
            return run_exact(x, self.weights, initial_state=initial_state)
        single = x.dim() == 1
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[-1] != self.num_inputs:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not fit this layer: it takes "
                f"(batch, {self.num_inputs}) — one column per input parameter"
            )
        run = self.simulator.probs if self.output == "probs" else self.simulator.expval
        y = run(x, self.weights)
        return y.squeeze(0) if single else y

    def extra_repr(self) -> str:
        return (
            f"qubits={self.circuit.num_qubits}, inputs={self.num_inputs}, "
            f"weights={self.weights.numel()}, backend={self.backend!r}, output={self.output!r}"
        )
