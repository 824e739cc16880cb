"""The QD-LLM student: a small variational circuit distilled from a language-model teacher.

Quantum Knowledge Distillation for Large Language Models, https://arxiv.org/abs/2505.13205

    features (d) → Linear(d → n) → min-max scale to [0, 10] → RX(x_i) on n qubits
                 → QD-LLM ansatz (blocks) → ⟨Z_i⟩ on every qubit → Linear(n → classes) → logits

With the paper's 11 qubits and 2 blocks the circuit has 144 trained angles; the two dense layers
carry the rest of the parameters (4,235 + 24 for 384-d MiniLM features and 2 classes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from qiskit import QuantumCircuit
from torch import nn

from qcore.ablation import classical_standin
from qcore.circuits import ModelCircuit, angle_encoding, compose, qdllm_ansatz
from qcore.layer import QuantumLayer, z_observables
from qcore.models.base import DTYPES, QuantumModel, real_dtype, register_model
from qcore.names import CIRCUITS


@dataclass(frozen=True)
class QDLLMConfig:
    """Everything needed to rebuild a student (its weights aside); stored as ``config.json``.

    ``angle_range``: each sample's ``qubits`` pre-activations are min-max scaled to
    ``[0, angle_range]`` (the paper's ``[0, 10]``) before they become RX angles; ``scale_eps``
    is the smallest max − min divided by, so a sample whose values are all equal gets angles 0.
    ``circuit="classical"`` replaces the circuit by an MLP of about as many parameters
    (:func:`~qcore.ablation.classical_standin`, ``tanh`` output like ⟨Z⟩), an ablation.
    ``backend`` names the simulator the quantum layer runs on (``exact`` for training);
    ``dtype`` its precision; ``seed`` fixes the initial weights of all three layers.
    """

    in_features: int
    num_classes: int
    qubits: int = 11
    blocks: int = 2
    angle_range: float = 10.0
    scale_eps: float = 1e-6
    entanglement: str = "ring"
    circuit: Literal["quantum", "classical"] = "quantum"
    backend: str = "exact"
    dtype: str = "complex64"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.num_classes < 2:
            raise ValueError(
                f"need in_features >= 1 and num_classes >= 2, got {self.in_features} and {self.num_classes}"
            )
        if self.qubits < 2 or self.blocks < 1:
            raise ValueError(f"need qubits >= 2 and blocks >= 1, got {self.qubits} and {self.blocks}")
        if not self.angle_range > 0 or not self.scale_eps > 0:
            raise ValueError(f"angle_range and scale_eps must be positive, got {self.angle_range} and {self.scale_eps}")
        if self.circuit not in CIRCUITS:
            raise ValueError(f"circuit={self.circuit!r} is unknown; choose one of {list(CIRCUITS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QDLLMConfig:
        return cls(**json.loads(text))

    def model_circuit(self) -> ModelCircuit:
        """The RX encoding followed by the ansatz, with its input and weight parameters."""
        return compose(
            angle_encoding(self.qubits, "rx", params="x"),
            qdllm_ansatz(self.qubits, self.blocks, self.entanglement, params="θ"),
        )


@register_model
class QDLLMStudent(QuantumModel):
    """The hybrid student; ``forward`` maps ``(batch, in_features)`` to ``(batch, num_classes)`` logits.

    Extra keyword arguments are options of the quantum layer's backend (e.g. ``shots=`` for
    ``aer``); they are a run-time choice and are not saved with the model. Saving, loading and
    :meth:`with_backend` come from :class:`~qcore.models.base.QuantumModel`.
    """

    model_type = "qdllm"
    config_type = QDLLMConfig
    hardware_name = "quantum"

    def __init__(self, config: QDLLMConfig, **backend_options: Any):
        super().__init__()
        self.config = config
        complex_dtype = DTYPES[config.dtype]
        real = real_dtype(config.dtype)
        circuit = config.model_circuit()
        # Seed the dense layers' default initialisation without touching the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder = nn.Linear(config.in_features, config.qubits, dtype=real)
            self.head = nn.Linear(config.qubits, config.num_classes, dtype=real)
            if config.circuit == "classical":
                n = config.qubits
                self.standin = classical_standin(n, n, len(circuit.weights), nn.Tanh(), dtype=real)
                return
        self.quantum = QuantumLayer(
            circuit.circuit,
            inputs=circuit.inputs,
            weights=circuit.weights,
            observables=z_observables(config.qubits),
            backend=config.backend,
            dtype=complex_dtype,
            seed=config.seed,
            **backend_options,
        )

    def angles(self, features: torch.Tensor) -> torch.Tensor:
        """The RX angles: the encoder's outputs min-max scaled to ``[0, angle_range]`` per sample.

        Like the paper's code, each sample is scaled across its own ``qubits`` values, so its
        smallest value becomes angle 0 and its largest ``angle_range``; the dataset's scale does
        not matter. ``max − min`` is clamped to ``scale_eps`` so equal values give angles 0,
        not NaN.
        """
        a = self.encoder(features.to(self.encoder.weight.dtype))
        lo = a.min(dim=-1, keepdim=True).values
        hi = a.max(dim=-1, keepdim=True).values
        return self.config.angle_range * (a - lo) / (hi - lo).clamp_min(self.config.scale_eps)

    def circuits(self) -> dict[str, QuantumCircuit]:
        return {"circuit": self.config.model_circuit().circuit} if self.config.circuit == "quantum" else {}
