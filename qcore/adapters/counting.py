"""Trainable parameters of LoRA, QPA and QTHA on a model built from its config alone.

The model is built on PyTorch's ``meta`` device: every layer has its shape but no storage, so
GPT-2 or a 2B-parameter model is "built" in a second and no weights are needed. The adapters
themselves are real (QPA's circuit and mapping model are constructed), so the counts are those
of the modules that train, not a formula that could drift from them.

``circuit`` counts circuit angles only: a classical stand-in in a circuit's place
(``circuit="classical"``) counts 0 there, its parameters being classical ones of the adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import torch
import transformers
from torch import nn

from qcore.adapters.base import AdapterConfig, AdapterError, AdapterLayer, find_modules_to_save
from qcore.adapters.lora import LoRAConfig
from qcore.adapters.methods import adapt
from qcore.layer import QuantumLayer


def skeleton(config: transformers.PretrainedConfig, auto_class: str | None = None) -> nn.Module:
    """The model of ``config`` on the meta device: ``auto_class`` (e.g.
    ``"AutoModelForSequenceClassification"``) if given, else the config's own architecture, else
    a causal LM where the model type has one (so GPT-2's ``lm_head`` exists), else the bare model."""
    if auto_class is None and config.architectures and hasattr(transformers, config.architectures[0]):
        build = getattr(transformers, config.architectures[0])
    else:
        causal = type(config) in transformers.MODEL_FOR_CAUSAL_LM_MAPPING
        build = getattr(transformers, auto_class or ("AutoModelForCausalLM" if causal else "AutoModel")).from_config
    try:
        with torch.device("meta"):
            return build(config)
    except ValueError as exc:
        raise AdapterError(f"a {config.model_type!r} model cannot be built as {auto_class}: {exc}") from exc


@dataclass(frozen=True)
class Count:
    """One method's trainable parameters on one model (``adapter`` excludes ``modules_to_save``;
    ``circuit``, within it, the circuits' angles: 0 for a classical stand-in)."""

    method: str
    trainable: int
    adapter: int
    circuit: int
    qubits: int  # of the widest circuit (0: none)
    layers: int
    lora: int  # LoRA's adapter parameters with the same targets and rank
    details: tuple[str, ...]

    @property
    def ratio_to_lora(self) -> float:
        return self.adapter / self.lora


class _Sizes(TypedDict):
    """The fields of :class:`Count` that one adapted model gives."""

    method: str
    trainable: int
    adapter: int
    circuit: int
    qubits: int
    layers: int
    details: tuple[str, ...]


def _sizes(model: nn.Module, config: AdapterConfig) -> _Sizes:
    """Adapt ``model`` (consumed: adapters are injected in place) and measure."""
    saved = sum(p.numel() for m in find_modules_to_save(model, config.modules_to_save) for p in m.parameters())
    adapted = adapt(model, config)
    trainable = sum(p.numel() for p in adapted.trainable_parameters().values())
    layers = adapted.adapter_layers()
    details = [layer.describe() for _, layer in layers if isinstance(layer, AdapterLayer)]
    circuits = [m for m in adapted.modules() if isinstance(m, QuantumLayer)]
    return {
        "method": config.method,
        "trainable": trainable,
        "adapter": trainable - saved,
        "circuit": sum(m.weights.numel() for m in circuits),
        "qubits": max((m.circuit.num_qubits for m in circuits), default=0),
        "layers": len(layers),
        "details": tuple(dict.fromkeys(d for d in details if d)),
    }


def compare(build: Callable[[], nn.Module], configs: list[AdapterConfig]) -> list[Count]:
    """Counts of ``configs``, each on a fresh model from ``build()``, with LoRA's adapter count
    beside them (LoRA with the first config's targets, rank, α and modules to save)."""
    if not configs:
        raise AdapterError("no method to count")
    first = configs[0]
    lora = LoRAConfig(
        target_modules=first.target_modules, r=first.r, alpha=first.alpha, modules_to_save=first.modules_to_save
    )
    lora_adapter = _sizes(build(), lora)["adapter"]
    return [Count(**_sizes(build(), c), lora=lora_adapter) for c in configs]
