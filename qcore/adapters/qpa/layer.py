"""QPA's layer: LoRA's ``A`` and ``B`` generated from one circuit's probabilities.

For a layer ``in → out`` and rank ``r`` the LoRA vector has ``m = out·r + r·in`` numbers. It is
cut into ``⌈m / chunk⌉`` chunks, one per basis state of ``n = ⌈log₂⌈m / chunk⌉⌉`` qubits. Each
step:

1. the circuit (RY on every qubit, then a CNOT chain; ``depth`` blocks; no inputs) runs *once*
   on the ``exact`` backend, giving all ``2ⁿ`` probabilities ``p`` (in a :class:`QPAModel
   <qcore.adapters.qpa.model.QPAModel>`, the circuits of all its layers of one shape run as one
   batch);
2. ``p ↦ (0.6·tanh(0.1·2ⁿ⁻¹·p))^0.15``, mean-centred over all ``2ⁿ`` states (published code);
3. chunk ``i``'s input row is basis state ``i`` written as ``n`` numbers ±1 (qubit ``q`` is bit
   ``q`` of ``i``, 0 → −1) followed by its transformed probability;
4. the mapping model runs on all rows as one batch, giving ``(chunks, chunk)`` numbers;
5. they are concatenated, cut to ``m``, mean-centred, and read as ``A`` (out × r) then
   ``B`` (r × in).

Departure from the published code, which pairs ``p_i`` with the bit string of a *randomly drawn*
basis state, redrawn at every step: here row ``i`` always carries its own state ``i``, as the
paper describes, so training is deterministic. As published (and unlike LoRA), ΔW is not zero
at initialisation: the adapted model starts away from the base model, unless ``zero_start``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from qcore.ablation import ClassicalStandin, constant_output, probability_standin
from qcore.adapters.base import AdapterError, AdapterLayer, TargetLayer
from qcore.adapters.qpa.config import MAX_QUBITS, QPAConfig
from qcore.circuits import qpa_chain
from qcore.layer import QuantumLayer

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def lora_size(in_features: int, out_features: int, r: int) -> int:
    """``m``: the numbers of LoRA's ``A`` (out × r) and ``B`` (r × in) together."""
    return out_features * r + r * in_features


def transform_probabilities(p: torch.Tensor, num_qubits: int) -> torch.Tensor:
    """The published ``(0.6·tanh(0.1·2ⁿ⁻¹·p))^0.15``, mean-centred.

    The clamp keeps the gradient of ``x^0.15`` finite where a probability is exactly zero.
    """
    x = (0.6 * torch.tanh(0.1 * 2 ** (num_qubits - 1) * p)).clamp_min(torch.finfo(p.dtype).tiny)
    x = x**0.15
    return x - x.mean()


def basis_states(num_qubits: int, count: int) -> torch.Tensor:
    """``(count, num_qubits)``: row ``i`` holds bit ``q`` of ``i`` in column ``q``, as ±1."""
    bits = (torch.arange(count)[:, None] >> torch.arange(num_qubits)) & 1
    return bits.float() * 2 - 1


def mapping_model(in_features: int, hidden: list[int], out_features: int, activation: str | None) -> nn.Sequential:
    """Linear layers ``in → hidden… → out``, with ``activation`` between them (none: published)."""
    widths = [in_features, *hidden, out_features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        if i and activation is not None:
            layers.append(_ACTIVATIONS[activation]())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class QPAGenerator(nn.Module):
    """Generates the ``size`` numbers of one layer's LoRA vector (steps 1–5 of the module doc);
    with ``circuit="classical"`` step 1's probabilities come from :attr:`standin` instead."""

    states: torch.Tensor  # buffer
    circuit: QuantumLayer
    standin: ClassicalStandin  # with config.circuit == "classical", in place of the circuit
    frozen_circuit: torch.Tensor | None = None  # set by qcore.ablation: the probabilities
    batched: torch.Tensor | None = None  # set by QPAModel for one pass: this circuit's row of its batch

    def __init__(self, size: int, config: QPAConfig, *, name: str) -> None:
        super().__init__()
        self.size = size
        self.chunks = math.ceil(size / config.chunk_size)
        if self.chunks < 2:
            raise AdapterError(
                f"chunk_size={config.chunk_size} does not divide layer {name!r} sensibly: its "
                f"{size:,} LoRA numbers fit in one chunk, leaving 0 qubits; choose chunk_size at "
                f"most {math.ceil(size / 2):,} (two chunks or more)"
            )
        self.num_qubits = math.ceil(math.log2(self.chunks))
        if self.num_qubits > MAX_QUBITS:
            raise AdapterError(
                f"chunk_size={config.chunk_size} cuts layer {name!r}'s {size:,} LoRA numbers into "
                f"{self.chunks:,} chunks, which needs {self.num_qubits} qubits (at most {MAX_QUBITS}); "
                f"choose chunk_size at least {math.ceil(size / 2**MAX_QUBITS):,}"
            )
        self.depth = config.depth
        self.classical = config.circuit == "classical"
        circuit, theta = qpa_chain(self.num_qubits, config.depth)
        if self.classical:
            self.standin = probability_standin(2**self.num_qubits, len(theta), dtype=torch.float32)
        else:
            self.circuit = QuantumLayer(circuit, weights=list(theta), output="probs", backend="exact")
        self.register_buffer("states", basis_states(self.num_qubits, self.chunks), persistent=False)
        self.mapping = mapping_model(self.num_qubits + 1, config.hidden_sizes, config.chunk_size, config.activation)

    def circuit_output(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """``(2ⁿ, 1)``: the probabilities, a row per basis state (a :class:`~qcore.ablation.CircuitSite`).

        The circuit reads no data (``inputs`` is ignored), so the mean ablation replaces the
        vector by its mean entry, ``2⁻ⁿ``. After the published mean-centring (step 2) any
        constant vector becomes 0: every chunk's row keeps only its basis-state bits, and the
        generated weights are the mapping model's reading of the bit strings alone.
        """
        return self.probabilities()[:, None]

    def probabilities(self) -> torch.Tensor:
        """``(2ⁿ,)``: the circuit's basis-state probabilities (one run, or its row of the model's
        batch: see :class:`~qcore.adapters.qpa.model.CircuitGroup`), or its stand-in's."""
        if self.classical:
            return self.standin(self.states.new_ones(1, 1))[0]
        if self.batched is not None:
            return self.batched
        return self.circuit()[0]

    def forward(self) -> torch.Tensor:
        if self.frozen_circuit is None:
            probs = self.probabilities()
        else:
            probs = constant_output(self.frozen_circuit, 2**self.num_qubits, dtype=self.states.dtype)
        p = transform_probabilities(probs, self.num_qubits)
        rows = torch.cat([self.states, p[: self.chunks, None]], dim=1)
        out = self.mapping(rows).reshape(-1)[: self.size]
        return out - out.mean()


class QPALayer(AdapterLayer):
    """A Linear/Conv1D layer plus QPA's generated low-rank update.

    With ``zero_start`` the factors generated at initialisation, ``A₀`` and ``B₀``, are kept and
    the update is ``A·B − A₀·B₀``: the factors returned are ``[A, −A₀]`` and ``[B; B₀]``.
    """

    # with ``zero_start``; the stand-in's fixed map, with ``circuit="classical"``
    saved_buffers = ("start_a", "start_b", "generator.standin.map.weight")
    # buffers, registered only with ``zero_start``
    start_a: torch.Tensor
    start_b: torch.Tensor

    def __init__(self, base_layer: TargetLayer, config: QPAConfig, *, name: str) -> None:
        super().__init__(base_layer, config, name=name)
        size = lora_size(self.in_features, self.out_features, self.r)
        self.generator = QPAGenerator(size, config, name=name)
        self.zero_start = config.zero_start
        if self.zero_start:
            with torch.no_grad():
                start_a, start_b = self.generated()
            self.register_buffer("start_a", start_a)
            self.register_buffer("start_b", start_b)

    def generated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` as the generator makes them now."""
        v = self.generator()
        split = self.out_features * self.r
        return v[:split].view(self.out_features, self.r), v[split:].view(self.r, self.in_features)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.generated()
        if not self.zero_start:
            return a, b
        return torch.cat([a, -self.start_a], dim=1), torch.cat([b, self.start_b], dim=0)

    def describe(self) -> str:
        g = self.generator
        shape = f"{g.num_qubits} qubit{'s' * (g.num_qubits != 1)}, {g.chunks} chunks"
        return f"classical stand-in for {shape}" if g.classical else shape
