"""The LLM-QFL client classifier: Qiskit-ML's VQC rebuilt on ``qcore`` circuits.

LLM-QFL (arXiv 2505.18656) trains ``qiskit_machine_learning.algorithms.VQC`` on every client:

    features (PCA to n, one per qubit) → ZZ feature map (reps 1) → real-amplitudes (reps 3)
      → measure all n qubits → class probabilities → cross-entropy

With the paper's 4 qubits the circuit has (3 + 1)·4 = 16 trained angles and nothing classical.

Readout. Qiskit-ML's VQC assigns basis state ``|i⟩`` to class ``i mod C`` (its ``parity``
interpret function is ``x % num_classes``), so with two classes only qubit 0 decides; that is
``readout="mod"``, the default. ``readout="parity"`` uses the true parity of all qubits,
``popcount(i) mod C``. Either way the class probabilities are sums of basis-state probabilities,
computed exactly (``exact``) or from shots (``aer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from qiskit import QuantumCircuit
from torch import nn

from qcore.ablation import classical_standin, constant_output
from qcore.circuits import ModelCircuit, compose, real_amplitudes, zz_feature_inputs, zz_feature_map
from qcore.layer import QuantumLayer
from qcore.names import CIRCUITS

READOUTS = ("mod", "parity")
_DTYPES = {"complex64": torch.complex64, "complex128": torch.complex128}
_PROB_FLOOR = 1e-10  # Qiskit-ML clips probabilities here before the logarithm, as we do


@dataclass(frozen=True)
class VQCConfig:
    """Everything that builds the circuit and its first weights.

    ``init_angle``: every angle starts at this value, as the paper's ``initial_point = [0.5] * 16``;
    ``None`` draws them uniformly in ``[0, 2π)`` from ``seed``. ``circuit="classical"`` trains
    :func:`~qcore.ablation.classical_standin` in the circuit's place. ``entanglement`` is the ZZ map's
    (Qiskit's default ``"full"``), ``ansatz_entanglement`` real-amplitudes' (Qiskit's default
    ``"reverse_linear"``).
    """

    num_classes: int = 2
    qubits: int = 4
    feature_reps: int = 1
    ansatz_reps: int = 3
    entanglement: str = "full"
    ansatz_entanglement: str = "reverse_linear"
    readout: str = "mod"
    circuit: Literal["quantum", "classical"] = "quantum"
    init_angle: float | None = 0.5
    backend: str = "exact"
    dtype: str = "complex64"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.qubits < 1 or self.feature_reps < 1 or self.ansatz_reps < 0:
            raise ValueError(f"need qubits >= 1, feature_reps >= 1, ansatz_reps >= 0; got {self}")
        if not 2 <= self.num_classes <= 2**self.qubits:
            raise ValueError(f"num_classes={self.num_classes} needs 2..{2**self.qubits} on {self.qubits} qubits")
        if self.readout not in READOUTS:
            raise ValueError(f"readout={self.readout!r} is unknown; choose one of {list(READOUTS)}")
        if self.circuit not in CIRCUITS:
            raise ValueError(f"circuit={self.circuit!r} is unknown; choose one of {list(CIRCUITS)}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def model_circuit(self) -> ModelCircuit:
        return compose(
            zz_feature_map(self.qubits, reps=self.feature_reps, entanglement=self.entanglement, params="x"),
            real_amplitudes(self.qubits, reps=self.ansatz_reps, entanglement=self.ansatz_entanglement, params="θ"),
        )

    def class_of_state(self) -> torch.Tensor:
        """``(2**qubits,)``: the class each basis state counts for."""
        states = torch.arange(2**self.qubits)
        if self.readout == "mod":
            return states % self.num_classes
        return torch.tensor([bin(i).count("1") for i in range(2**self.qubits)]) % self.num_classes


class VQCClassifier(nn.Module):
    """``forward`` maps ``(batch, qubits)`` features to ``(batch, classes)`` log-probabilities.

    Log-probabilities are valid logits (their softmax is the probabilities themselves), so
    ``cross_entropy`` on them is the VQC's cross-entropy. Extra keyword arguments are options of
    the quantum layer's backend (``shots=``, ``simulator_seed=`` for ``aer``). With
    ``circuit="classical"`` an MLP of about as many parameters as the circuit's angles, with a
    softmax output, gives the class probabilities instead (an ablation).
    """

    state_class: torch.Tensor  # buffer: the class of each basis state
    frozen_circuit: torch.Tensor | None = None  # set by qcore.ablation: the class probabilities

    def __init__(self, config: VQCConfig, **backend_options: Any):
        super().__init__()
        self.config = config
        circuit = config.model_circuit()
        cdtype = _DTYPES[config.dtype]
        self.real_dtype = torch.float64 if cdtype == torch.complex128 else torch.float32
        if config.circuit == "classical":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                params = len(circuit.weights)
                self.standin = classical_standin(
                    config.qubits, config.num_classes, params, nn.Softmax(-1), self.real_dtype
                )
            return
        self.quantum = QuantumLayer(
            circuit.circuit,
            inputs=circuit.inputs,
            weights=circuit.weights,
            output="probs",
            backend=config.backend,
            dtype=cdtype,
            seed=config.seed,
            **backend_options,
        )
        if config.init_angle is not None:
            with torch.no_grad():
                self.quantum.weights.fill_(config.init_angle)
        self.register_buffer("state_class", config.class_of_state(), persistent=False)

    def circuit_output(self, inputs: torch.Tensor | None) -> torch.Tensor:
        """``(batch, classes)`` class probabilities, each the sum of its basis states' (a
        :class:`~qcore.ablation.CircuitSite`: the mean of these is the mean of the ``2ⁿ``
        probabilities, summed the same way)."""
        if inputs is None:
            raise ValueError("the VQC's circuit reads the data: give the inputs to average over")
        x = inputs.to(self.real_dtype)
        if self.config.circuit == "classical":
            return self.standin(x)
        probs = torch.real(self.quantum(zz_feature_inputs(x)))
        return probs.new_zeros(len(probs), self.config.num_classes).index_add(1, self.state_class, probs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.frozen_circuit is None:
            per_class = self.circuit_output(features)
        else:
            per_class = constant_output(
                self.frozen_circuit, len(features), self.config.num_classes, dtype=self.real_dtype
            )
        return torch.log(per_class.clamp_min(_PROB_FLOOR))

    def circuit(self) -> QuantumCircuit:
        if self.config.circuit == "classical":
            raise ValueError("this VQC has a classical stand-in for its circuit (circuit='classical')")
        return self.config.model_circuit().circuit
