"""The PQC head's config: everything that rebuilds a head (its weights aside), in a module of its
own that imports neither torch nor Qiskit, so the head flow's parameter model (its defaults and
:meth:`PQCHeadConfig` checks) loads in a light process. The head itself is :mod:`qcore.models.pqc_head`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qcore.names import CIRCUITS, COMPLEX_DTYPES

if TYPE_CHECKING:
    from qcore.circuits import ModelCircuit

MAX_ENCODERS = 2
READOUT_SCALES = ("none", "sqrt_dim")


@dataclass(frozen=True)
class PQCHeadConfig:
    """Everything that rebuilds a head (its weights aside); stored as ``config.json``.

    ``offsets``: PQC-1's connectivity offset per layer (default 1, 2, …: ever longer links);
    ``readout_scale``: how module 2 starts (module docstring; ``"sqrt_dim"`` was the default
    before ``"none"``, and a saved head without the field loads as ``"sqrt_dim"``);
    ``circuit="classical"``: module 2 replaced by an MLP of about as many parameters
    (:func:`~qcore.ablation.classical_standin`, ``tanh`` output like ⟨Z⟩), an ablation;
    ``backend``: module 2's simulator (module 1 is always ``exact``); ``seed`` fixes every
    initial weight.
    """

    in_features: int
    num_classes: int
    encoders: int = 2
    encoder_layers: int = 2
    qubits: int = 8
    layers: int = 2
    reuploads: int = 3
    final_layers: int = 1
    measured: int = 1
    offsets: tuple[int, ...] | None = None
    readout_scale: Literal["none", "sqrt_dim"] = "none"
    circuit: Literal["quantum", "classical"] = "quantum"
    backend: str = "exact"
    dtype: str = "complex64"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.in_features < 2 or self.num_classes < 2:
            raise ValueError(
                f"need in_features >= 2 and num_classes >= 2, got {self.in_features} and {self.num_classes}"
            )
        if not 0 <= self.encoders <= MAX_ENCODERS:
            raise ValueError(f"encoders={self.encoders} is invalid; allowed 0..{MAX_ENCODERS}")
        if self.qubits < 2:
            raise ValueError(f"qubits={self.qubits} is invalid; module 2 needs at least 2")
        for name in ("encoder_layers", "layers", "reuploads", "final_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; it must be at least 1")
        if not 1 <= self.measured <= self.qubits:
            raise ValueError(f"measured={self.measured} is invalid; allowed 1..qubits={self.qubits}")
        if self.offsets is not None:
            object.__setattr__(self, "offsets", tuple(self.offsets))
            if len(self.offsets) != self.layers or any(d % self.qubits == 0 for d in self.offsets):
                raise ValueError(
                    f"offsets={list(self.offsets)} must give one offset per layer "
                    f"({self.layers}), none a multiple of qubits={self.qubits}"
                )
        if self.readout_scale not in READOUT_SCALES:
            raise ValueError(f"readout_scale={self.readout_scale!r} is unknown; choose one of {list(READOUT_SCALES)}")
        if self.circuit not in CIRCUITS:
            raise ValueError(f"circuit={self.circuit!r} is unknown; choose one of {list(CIRCUITS)}")
        if self.dtype not in COMPLEX_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(COMPLEX_DTYPES)}, got {self.dtype!r}")

    @property
    def encoder_qubits(self) -> int:
        """q = ⌈log₂ d⌉: the embedding, zero-padded to 2^q, is the encoder's statevector."""
        return max(1, math.ceil(math.log2(self.in_features)))

    def encoder_circuit(self) -> ModelCircuit:
        from qcore.circuits import ModelCircuit, cnot_ry_blocks  # Qiskit: only where a circuit is built

        q = self.encoder_qubits
        circuit, theta = cnot_ry_blocks(q, self.encoder_layers, params="θ")
        return ModelCircuit(circuit, (), tuple(theta))

    def module2_circuit(self) -> ModelCircuit:
        """RY encoding and PQC-1 repeated ``reuploads`` times with shared weights, then PQC-2."""
        from qcore.circuits import angle_encoding, cnot_ry_blocks, data_reuploading, default_offsets

        offsets = list(self.offsets) if self.offsets else default_offsets(self.qubits, self.layers)
        return data_reuploading(
            angle_encoding(self.qubits, "ry", params="x"),
            cnot_ry_blocks(self.qubits, self.layers, offsets, params="θ"),
            repeats=self.reuploads,
            head=cnot_ry_blocks(self.qubits, self.final_layers, params="φ"),
        )
