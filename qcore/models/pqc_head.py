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
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from qiskit import QuantumCircuit
from torch import nn

from qcore.ablation import CIRCUITS, classical_standin
from qcore.circuits import ModelCircuit, angle_encoding, cnot_ry_blocks, data_reuploading, default_offsets
from qcore.layer import QuantumLayer, z_observables
from qcore.models.base import DTYPES, QuantumModel, real_dtype, register_model

MAX_ENCODERS = 2
READOUT_SCALES = ("none", "sqrt_dim")
INIT_SPREAD = 0.1  # rad: the std across samples of module 2's initial angles (readout_scale="none")


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
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def encoder_qubits(self) -> int:
        """q = ⌈log₂ d⌉: the embedding, zero-padded to 2^q, is the encoder's statevector."""
        return max(1, math.ceil(math.log2(self.in_features)))

    def encoder_circuit(self) -> ModelCircuit:
        q = self.encoder_qubits
        circuit, theta = cnot_ry_blocks(q, self.encoder_layers, params="θ")
        return ModelCircuit(circuit, (), tuple(theta))

    def module2_circuit(self) -> ModelCircuit:
        """RY encoding and PQC-1 repeated ``reuploads`` times with shared weights, then PQC-2."""
        offsets = list(self.offsets) if self.offsets else default_offsets(self.qubits, self.layers)
        return data_reuploading(
            angle_encoding(self.qubits, "ry", params="x"),
            cnot_ry_blocks(self.qubits, self.layers, offsets, params="θ"),
            repeats=self.reuploads,
            head=cnot_ry_blocks(self.qubits, self.final_layers, params="φ"),
        )


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
