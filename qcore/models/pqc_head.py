"""The hybrid PQC classification head for sentence embeddings.

Fine-tuning Large Language Models on Quantum Computers, https://arxiv.org/abs/2504.08732

    embedding (d) ─┬─ module 1, encoder e (exact): amplitude-encode on q = ⌈log₂ d⌉ qubits
                   │    → CNOT-RY PQC → ⟨Z⟩ on all q qubits                      (E ≤ 2 encoders)
                   └→ concat (E·q) → Linear → π·tanh → RY angles on Q qubits
    module 2 (meant for a QPU): [RY(x) · PQC-1(θ)] × N (same θ: data re-uploading) → PQC-2(φ)
                   → ⟨Z⟩ on the first Q_m qubits → Linear(Q_m → classes) → logits

Module 1 runs only on the exact simulator: the amplitude encoding is the embedding itself used
as the initial statevector (an exact state preparation would be ~2^q gates per sample, which is
why the paper keeps module 1 off the QPU). :meth:`with_backend` swaps module 2's simulator only.

Choices the paper leaves open, and ours:

- *How two encoders are fused*: both read the whole embedding (their PQCs start from different
  seeds, so they learn different features); their ⟨Z⟩ readouts are concatenated and one learned
  linear layer maps them to module 2's ``qubits`` angles, squashed by ``π·tanh`` so an angle
  cannot wrap around. With ``encoders=0`` that linear layer reads the embedding directly (module
  2 alone, an ablation).
- *How module 2 starts* (``readout_scale``): ⟨Z⟩ of a spread-out state in ``2^q`` dimensions is
  ``O(2^(-q/2))``. By default (``"none"``) the readouts are used as they are and the fusion
  layer is drawn so that module 2's angles start spread by about ``INIT_SPREAD`` = 0.1 rad
  across unit-norm inputs, around 0: module 2 starts as a smooth, nearly constant function and
  training bends it. ``"sqrt_dim"``, the previous default, multiplies the readouts by
  ``2^(q/2)`` and keeps PyTorch's default fusion initialisation; its angles start spread by
  about 1.8 rad, a strongly oscillating random function that often failed to train (train
  accuracy 0.5 for the first epochs; on SetFit-tuned MiniLM two of three seeds did not train).
- *The width of the final layer*: ``Linear(measured → num_classes)``, with a bias; the paper
  measures ``Q_m = 1`` qubit, the default here.
- *Which qubits are measured*: qubits ``0 … measured-1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from qiskit import QuantumCircuit
from torch import nn

from qcore.ablation import classical_standin
from qcore.layer import QuantumLayer, z_observables
from qcore.models.base import DTYPES, QuantumModel, real_dtype, register_model
from qcore.models.pqc_head_config import MAX_ENCODERS, PQCHeadConfig

INIT_SPREAD = 0.1  # rad: the std across samples of module 2's initial angles (readout_scale="none")


def small_start(fusion: nn.Linear, dim: int) -> None:
    """Draw ``fusion`` so module 2's angles start near 0, spread by ``INIT_SPREAD`` across inputs.

    The encoders' state is real (amplitude encoding, CNOT and RY), so each ⟨Z_i⟩ of a random
    unit-norm input has variance ``2/(dim + 2)``; weights of std ``σ`` then give ``w·z`` a std of
    ``σ·sqrt(2·fan_in/(dim + 2))``, and near 0 the angle ``π·tanh(w·z)`` is ``π`` times that.
    The bias starts at 0 so that the angles' centre is 0 rather than a random offset.
    """
    fan_in = fusion.in_features
    with torch.no_grad():
        fusion.weight.normal_(0.0, INIT_SPREAD / math.pi * math.sqrt((dim + 2) / (2 * fan_in)))
        fusion.bias.zero_()


@register_model
class PQCHead(QuantumModel):
    """``forward`` maps ``(batch, in_features)`` embeddings to ``(batch, num_classes)`` logits.

    Extra keyword arguments are options of module 2's backend (e.g. ``shots=`` for ``aer``).
    """

    model_type = "pqc_head"
    config_type = PQCHeadConfig
    hardware_name = "module2"

    def __init__(self, config: PQCHeadConfig, **backend_options: Any):
        super().__init__()
        self.config = config
        cdtype, real = DTYPES[config.dtype], real_dtype(config.dtype)
        enc = config.encoder_circuit()
        self.encoders = nn.ModuleList(
            QuantumLayer(
                enc.circuit, weights=enc.weights, backend="exact", dtype=cdtype, seed=config.seed * MAX_ENCODERS + e
            )
            for e in range(config.encoders)
        )
        m2 = config.module2_circuit()
        fused = config.encoders * config.encoder_qubits if config.encoders else config.in_features
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.fusion = nn.Linear(fused, config.qubits, dtype=real)
            self.head = nn.Linear(config.measured, config.num_classes, dtype=real)
            if config.encoders and config.readout_scale == "none":
                small_start(self.fusion, 2**config.encoder_qubits)
            if config.circuit == "classical":
                q, params = config.qubits, len(m2.weights)
                self.standin = classical_standin(q, config.measured, params, nn.Tanh(), dtype=real)
                return
        self.module2 = QuantumLayer(
            m2.circuit,
            inputs=m2.inputs,
            weights=m2.weights,
            observables=z_observables(config.qubits)[: config.measured],
            backend=config.backend,
            dtype=cdtype,
            seed=config.seed,
            **backend_options,
        )

    @classmethod
    def saved_config(cls, raw: dict[str, Any]) -> PQCHeadConfig:
        """Heads saved before ``readout_scale`` existed were trained with the ``"sqrt_dim"`` rescale."""
        return PQCHeadConfig(**{"readout_scale": "sqrt_dim", **raw})

    def module1(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, E·q)`` ⟨Z⟩ readouts of the amplitude-encoded encoders, times ``2^(q/2)`` with
        ``readout_scale="sqrt_dim"`` (or the features themselves when E=0)."""
        x = features.to(self.fusion.weight.dtype)
        if not self.config.encoders:
            return x
        dim = 2**self.config.encoder_qubits
        state = F.normalize(F.pad(x, (0, dim - x.shape[-1])), dim=-1)
        z = torch.cat([torch.real(enc(initial_state=state)) for enc in self.encoders], dim=-1)
        return z * math.sqrt(dim) if self.config.readout_scale == "sqrt_dim" else z

    def angles(self, features: torch.Tensor) -> torch.Tensor:
        """Module 2's RY angles, in ``(-π, π)``."""
        return math.pi * torch.tanh(self.fusion(self.module1(features).to(self.fusion.weight.dtype)))

    def circuits(self) -> dict[str, QuantumCircuit]:
        out = {"module2": self.config.module2_circuit().circuit} if self.config.circuit == "quantum" else {}
        if self.config.encoders:
            out["encoder"] = self.config.encoder_circuit().circuit
        return out
