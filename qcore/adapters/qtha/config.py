"""QTHA's settings. The paper publishes no code and no sizes; these defaults are ours.

Quantum-Enhanced LLM Efficient Fine Tuning (Quantum Tensor Hybrid Adaptation),
https://arxiv.org/abs/2503.12790
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from qcore.adapters.base import AdapterConfig, AdapterError, positive_int
from qcore.names import CIRCUITS

MAX_QUBITS = 16


@dataclass
class QTHAConfig(AdapterConfig):
    """QTHA: an MPO low-rank path and a QNN on its low-rank features, fused linearly: the QNN
    reparametrises the MPO factor ``B`` (it reads ``B``'s columns, not the data).

    ``qubits`` and ``layers`` size the QNN (RY encoding, then ``layers`` × (RY, RZ on every qubit,
    CNOT ring)); ``bond_dim`` and ``cores`` size the two MPOs (``A`` and ``B``).
    ``circuit="classical"`` replaces the QNN's circuit by an MLP of about as many parameters
    (:func:`~qcore.ablation.classical_standin`, ``tanh`` output like ⟨Z⟩), the same encoding and
    fusion around it: the ablation of what the circuit adds.
    """

    method: ClassVar[str] = "qtha"

    qubits: int = 4
    layers: int = 2
    bond_dim: int = 4
    cores: int = 3
    circuit: Literal["quantum", "classical"] = "quantum"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("qubits", "layers", "bond_dim"):
            positive_int(name, getattr(self, name))
        if self.qubits > MAX_QUBITS:
            raise AdapterError(f"qubits={self.qubits} is too many: at most {MAX_QUBITS}")
        if isinstance(self.cores, bool) or not isinstance(self.cores, int) or not 2 <= self.cores <= 6:
            raise AdapterError(f"cores={self.cores!r} is invalid: give 2 to 6 MPO cores")
        if self.circuit not in CIRCUITS:
            raise AdapterError(f"circuit={self.circuit!r} is unknown; use one of {list(CIRCUITS)}")
