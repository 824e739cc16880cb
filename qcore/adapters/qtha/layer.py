"""QTHA's layer: a tensor-network low-rank path and a quantum network on its low-rank features.

The paper (arXiv 2503.12790) fuses an MPO path and a QNN path linearly but publishes no code,
sizes or placement. Our design, chosen so the trained update is a fixed matrix that merges into
the base weight (the paper runs its QNN at inference, on a QPU):

* ``B`` (r × in) and ``A`` (out × r) are MPOs (:class:`~qcore.adapters.qtha.mpo.MPO`): the
  low-rank map, with far fewer numbers than LoRA's dense factors.
* Column ``j`` of ``B`` is the low-rank feature vector of input direction ``e_j``. The QNN reads
  it (RY angle encoding, feature ``k`` on qubit ``k mod n``, in units of ``τ``, the features'
  initial standard deviation, so angles are of order one), runs ``layers`` hardware-efficient
  layers and returns ``⟨Z_i⟩`` on every qubit.
* Linear fusion: ``B' = B + τ·F·(Q(B) − Q(0))`` with a trainable ``F`` (r × n). Subtracting
  ``Q(0)`` keeps the zero direction at zero, as a linear map must.
* ``ΔW = (α/r)·A·B'``. This is the paper's hybrid path applied to every input basis vector and
  extended linearly, so ``ΔW·x`` needs no circuit once trained. ``A`` starts at zero (its last
  MPO core is zero), so, like LoRA, the adapted model starts as the base model.

All ``in + 1`` QNN inputs go through the circuit as one batch per step.

What the quantum part is, and is not: the QNN *reparametrises ``B``*, the low-rank factor.
Its inputs are ``B``'s columns, never the layer's activations or the data, and its output only
changes ``B`` into ``B'``; ``A`` is classical throughout. It is a trainable non-linear map on
the adapter's own weights, evaluated once per step for the whole layer, not a quantum feature
map of the input, and it does not run at inference: ``ΔW`` merges into the base weight.
``qcore.ablation`` replaces its features by their mean over ``B``'s columns, or removes them
(``B' = B``), to measure what it adds over the MPO path alone; ``circuit="classical"`` trains an
MLP of about the circuit's size in its place (the same encoding, ``Q(0)`` and fusion), to
measure what it adds over a classical network as small.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qcore.ablation import ClassicalStandin, classical_standin, constant_output
from qcore.adapters.base import AdapterLayer, TargetLayer
from qcore.adapters.qtha.config import QTHAConfig
from qcore.adapters.qtha.mpo import MPO
from qcore.circuits import angle_encoding, compose, hardware_efficient
from qcore.layer import QuantumLayer


class LowRankQNN(nn.Module):
    """``(batch, r)`` low-rank features → ``(batch, qubits)`` expectation values ``⟨Z_i⟩``, or
    (``classical``) a ``tanh`` MLP's outputs in the same range, from the same encoded angles."""

    encoding: torch.Tensor  # buffer
    circuit: QuantumLayer
    standin: ClassicalStandin  # with classical, in place of the circuit

    def __init__(self, rank: int, qubits: int, layers: int, *, classical: bool = False) -> None:
        super().__init__()
        model = compose(angle_encoding(qubits, "ry"), hardware_efficient(qubits, layers))
        encoding = torch.zeros(rank, qubits)
        encoding[torch.arange(rank), torch.arange(rank) % qubits] = 1.0  # feature k → qubit k mod n
        self.classical = classical
        if classical:
            self.standin = classical_standin(qubits, qubits, len(model.weights), nn.Tanh(), dtype=encoding.dtype)
        else:
            self.circuit = QuantumLayer(model.circuit, inputs=model.inputs, weights=model.weights, backend="exact")
        self.register_buffer("encoding", encoding, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        angles = features @ self.encoding
        return self.standin(angles) if self.classical else self.circuit(angles)


class QTHALayer(AdapterLayer):
    """A Linear/Conv1D layer plus QTHA's fused MPO + QNN low-rank update."""

    frozen_circuit: torch.Tensor | None = None  # set by qcore.ablation: the QNN's features

    def __init__(self, base_layer: TargetLayer, config: QTHAConfig, *, name: str) -> None:
        super().__init__(base_layer, config, name=name)
        self.tau = 1 / math.sqrt(3 * self.in_features)  # LoRA's initial std of its down-projection
        cores, bond_dim = config.cores, config.bond_dim
        self.down = MPO(self.r, self.in_features, cores=cores, bond_dim=bond_dim, std=self.tau)
        self.up = MPO(self.out_features, self.r, cores=cores, bond_dim=bond_dim, std=1.0, zero_last=True)
        self.qnn = LowRankQNN(self.r, config.qubits, config.layers, classical=config.circuit == "classical")
        bound = 1 / math.sqrt(config.qubits)
        self.fusion = nn.Parameter(torch.empty(self.r, config.qubits).uniform_(-bound, bound))
        self.qubits, self.layers, self.bond_dim = config.qubits, config.layers, config.bond_dim

    def qnn_features(self, b: torch.Tensor) -> torch.Tensor:
        """``(in, qubits)``: ``Q(B_j) − Q(0)`` for every column ``B_j`` of ``b`` (one circuit batch)."""
        q = self.qnn(torch.cat([b.T / self.tau, b.new_zeros(1, self.r)]))  # every e_j, then 0
        return q[:-1] - q[-1]

    def circuit_output(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The QNN's features of the current ``B`` (a :class:`~qcore.ablation.CircuitSite`; its
        inputs are ``B``'s columns, not data, so ``inputs`` is ignored)."""
        return self.qnn_features(self.down.matrix())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.down.matrix()
        if self.frozen_circuit is None:
            features = self.qnn_features(b)
        else:
            features = constant_output(self.frozen_circuit, self.in_features, self.qubits, dtype=b.dtype)
        correction = features @ self.fusion.T  # (in, r)
        return self.up.matrix(), b + self.tau * correction.T

    def describe(self) -> str:
        qnn = f"{'MLP for ' if self.qnn.classical else ''}{self.qubits} qubits × {self.layers} layers"
        return f"{qnn}, bond {self.bond_dim}"
