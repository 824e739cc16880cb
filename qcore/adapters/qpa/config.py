"""QPA's settings, with the published values as defaults.

Quantum Parameter Adaptation: A Quantum Circuit-Based Compression Perspective for
Parameter-Efficient Learning, https://arxiv.org/abs/2410.09846 (code: github.com/CYLphysics/QPA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from qcore.adapters.base import AdapterConfig, AdapterError, positive_int
from qcore.names import CIRCUITS, PUBLISHED_HIDDEN

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
MAX_QUBITS = 20


@dataclass
class QPAConfig(AdapterConfig):
    """QPA: a circuit's basis-state probabilities, through a mapping model, generate ``A`` and ``B``.

    ``chunk_size`` is the paper's ``n_mlp`` (numbers the mapping model emits per basis state),
    ``depth`` the circuit's RY + CNOT-chain blocks, ``hidden_sizes`` the mapping model's hidden
    widths and ``activation`` the non-linearity between its layers: ``None`` as in the published
    code (the mapping is then affine), or one of ``relu``, ``gelu``, ``tanh``, ``silu`` for the
    MLP the paper names.

    ``zero_start``: as published (``False``), the update generated at initialisation is not zero
    and can be as large as the base weights themselves; ``True`` subtracts it (kept as two fixed
    low-rank factors), so the adapted model starts as the base model, as LoRA's does. The
    gradients are the same either way.

    ``circuit="classical"``: each layer's circuit replaced by
    :func:`~qcore.ablation.probability_standin` (as many trained numbers as the circuit's
    angles, through a fixed random map and a softmax to the ``2ⁿ`` probabilities), the rest
    unchanged: the ablation of what the circuit adds.
    """

    method: ClassVar[str] = "qpa"

    chunk_size: int = 2048
    depth: int = 8
    hidden_sizes: list[int] = field(default_factory=lambda: list(PUBLISHED_HIDDEN))
    activation: str | None = None
    zero_start: bool = False
    circuit: Literal["quantum", "classical"] = "quantum"

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int("chunk_size", self.chunk_size)
        positive_int("depth", self.depth)
        self.hidden_sizes = list(self.hidden_sizes)
        if not self.hidden_sizes:
            raise AdapterError("hidden_sizes is empty: the mapping model needs at least one hidden layer")
        for size in self.hidden_sizes:
            positive_int("hidden_sizes entry", size)
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise AdapterError(f"activation={self.activation!r} is unknown; use None or one of {list(ACTIVATIONS)}")
        if self.circuit not in CIRCUITS:
            raise AdapterError(f"circuit={self.circuit!r} is unknown; use one of {list(CIRCUITS)}")
