"""What every adapter of this package shares, in the manner of peft's tuners.

An adapter replaces chosen ``nn.Linear`` or GPT-2 ``Conv1D`` modules of any Hugging Face model
(picked by name, as peft's ``target_modules``) with an :class:`AdapterLayer`: the frozen base
layer plus a low-rank update ``ΔW = (α/r)·A·B`` (``A``: out × r, ``B``: r × in) whose factors a
method *generates* from its own trainable parameters (QPA from circuit probabilities, QTHA from
tensor-network cores and a QNN). Because the update is a fixed matrix once trained, it can be
added into the base weight (:meth:`AdapterModel.merge`) and the result shipped as a plain model
that needs neither this package nor a quantum computer::

    model = QPAModel(hf_model, QPAConfig(target_modules=["lm_head"], r=4))
    ...                                  # train: only adapter parameters require grad
    model.save_pretrained("adapter/")    # adapter_config.json + adapter_model.safetensors
    plain = model.merge_and_unload()     # the Hugging Face model, ΔW added to its weights
    plain.save_pretrained("merged/")     # loads with from_pretrained, no qcore needed

``target_modules`` follows peft: a list matches a module whose name equals an entry or ends in
``"." + entry``; a string is a regular expression the whole name must match.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SUPPORTED_LAYERS = (nn.Linear, Conv1D)
TargetLayer: TypeAlias = nn.Linear | Conv1D  # a layer an adapter can replace


class AdapterError(ValueError):
    """A bad adapter setting or target; the message names the value and what is allowed."""


@dataclass
class AdapterConfig:
    """Settings every method shares; a method's config adds its own fields.

    ``alpha=None`` means ``2·r``, the QPA paper's choice, so the update is scaled by ``α/r = 2``.
    ``modules_to_save`` names modules (same matching as ``target_modules``) trained in full and
    saved with the adapter, such as a new classification head.
    """

    method: ClassVar[str] = ""

    target_modules: list[str] | str = field(default_factory=list)
    r: int = 4
    alpha: float | None = None
    dropout: float = 0.05
    modules_to_save: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (tuple, list)):
            self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise AdapterError("target_modules is empty: name the modules to adapt, e.g. ['query', 'value']")
        self.modules_to_save = list(self.modules_to_save)
        positive_int("r", self.r)
        if self.alpha is not None and not self.alpha > 0:
            raise AdapterError(f"alpha={self.alpha!r} is invalid: give a positive number, or None for 2·r")
        if not 0 <= self.dropout < 1:
            raise AdapterError(f"dropout={self.dropout!r} is invalid: it must lie in [0, 1)")

    @property
    def scaling(self) -> float:
        return (2 * self.r if self.alpha is None else self.alpha) / self.r

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterConfig:
        values = dict(values)
        if values.pop("method", cls.method) != cls.method:
            raise AdapterError(f"{values} is not a {cls.method} adapter config")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise AdapterError(f"unknown {cls.method} adapter settings {unknown}; known: {sorted(known)}")
        return cls(**values)


def positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdapterError(f"{name}={value!r} is invalid: give a positive integer")


# --- finding and shaping target layers ---------------------------------------------------------


def name_matches(name: str, patterns: Sequence[str] | str) -> bool:
    """peft's rule: a regular expression matches the whole name; a list entry the name or its tail."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def find_targets(model: nn.Module, patterns: Sequence[str] | str) -> list[tuple[str, TargetLayer]]:
    """The ``(name, module)`` pairs ``patterns`` selects; refuses no match and unsupported types."""
    found = [(n, m) for n, m in model.named_modules() if n and name_matches(n, patterns)]
    if not found:
        layers = [n for n, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)]
        raise AdapterError(
            f"target_modules {patterns!r} match no module of {type(model).__name__}; its Linear/Conv1D "
            f"modules are named like {_examples(layers)}"
        )
    if bad := [(n, type(m).__name__) for n, m in found if not isinstance(m, SUPPORTED_LAYERS)]:
        raise AdapterError(
            f"target_modules {patterns!r} select {bad[:5]}: only nn.Linear and GPT-2 Conv1D layers can be adapted"
        )
    return [(n, m) for n, m in found if isinstance(m, SUPPORTED_LAYERS)]  # all of them, as checked above


def _examples(names: list[str], k: int = 6) -> str:
    """A few distinct names (layer indices collapsed), so the message stays short."""
    seen: dict[str, str] = {}
    for n in names:
        seen.setdefault(re.sub(r"\.\d+\.", ".N.", n), n)
    shown = list(seen)[:k]
    return ", ".join(shown) + (", …" if len(seen) > k else "")


def layer_shape(layer: TargetLayer) -> tuple[int, int]:
    """``(in_features, out_features)``; GPT-2's Conv1D stores its weight as (in, out)."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features


def check_rank(name: str, layer: TargetLayer, r: int) -> None:
    fan_in, fan_out = layer_shape(layer)
    if r > min(fan_in, fan_out):
        raise AdapterError(
            f"rank r={r} exceeds layer {name!r} ({fan_in} → {fan_out}): r must be at most {min(fan_in, fan_out)}"
        )


def layer_seed(seed: int, name: str) -> int:
    """A seed per layer from the config's seed and the layer's name, so a layer's initial values
    do not depend on which other layers are adapted or in what order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Initialise from ``seed`` without touching the caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def untie(model: nn.Module, layers: Iterable[nn.Module]) -> None:
    """Give each layer's weight its own copy where the model ties it to another parameter.

    GPT-2's ``lm_head.weight`` *is* the token embedding: adding ΔW to it in place would change
    the embedding too, and the merged model would differ from the adapted one. The copy is made
    before merging and the config told, so ``save_pretrained``/``from_pretrained`` keep both.
    """
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    tied = [layer for layer in layers if uses[id(layer.weight)] > 1]
    for layer in tied:
        weight = layer.get_parameter("weight")
        layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    if tied and hasattr(model, "config"):
        hf_config: Any = model.config  # a transformers PretrainedConfig (Module.__getattr__ says Tensor | Module)
        hf_config.tie_word_embeddings = False


# --- the adapted layer and model ---------------------------------------------------------------


class AdapterLayer(nn.Module):
    """A frozen base layer plus ``scaling · A·B``, with ``A, B`` from :meth:`factors`.

    The forward pass never forms ΔW: it computes ``x·Bᵀ·Aᵀ`` (input dropout on the adapter path,
    as LoRA and the QPA code do), so its cost is that of LoRA plus generating the factors.
    ``saved_buffers`` names buffers (dotted paths under the layer) saved with the adapter beside
    the trainable parameters (those that exist; e.g. fixed factors drawn at initialisation).
    """

    saved_buffers: ClassVar[tuple[str, ...]] = ()
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None  # set by factors_fixed: (A, B) made once

    def __init__(self, base_layer: TargetLayer, config: AdapterConfig, *, name: str) -> None:
        super().__init__()
        check_rank(name, base_layer, config.r)
        self.base_layer = base_layer
        self.in_features, self.out_features = layer_shape(base_layer)
        self.r, self.scaling = config.r, config.scaling
        self.dropout = nn.Dropout(config.dropout)
        self.merged = False

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)``: ``(out_features, r)`` and ``(r, in_features)``."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the count table shows about this layer, e.g. its qubits."""
        return ""

    def delta_weight(self) -> torch.Tensor:
        """ΔW, ``(out_features, in_features)`` (nn.Linear's layout)."""
        a, b = self.factors()
        return self.scaling * (a @ b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        a, b = self.factors() if self.fixed is None else self.fixed
        update = (self.dropout(x).to(b.dtype) @ b.T) @ a.T
        return y + (self.scaling * update).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        self._add(+1)

    @torch.no_grad()
    def unmerge(self) -> None:
        self._add(-1)

    def _add(self, sign: int) -> None:
        if self.merged == (sign > 0):
            raise AdapterError(f"the layer is already {'merged' if self.merged else 'unmerged'}")
        weight = self.base_layer.weight
        delta = self.delta_weight()
        if isinstance(self.base_layer, Conv1D):
            delta = delta.T
        weight += sign * delta.to(weight.dtype)
        self.merged = sign > 0


class AdapterModel(nn.Module):
    """A Hugging Face model with adapters injected in place; peft's ``PeftModel`` for our methods.

    Every base parameter is frozen; the adapter layers' parameters and those of
    ``modules_to_save`` are the only trainable ones. Subclasses name their config and layer class.
    """

    config_class: ClassVar[type[AdapterConfig]]
    layer_class: ClassVar[type[AdapterLayer]]

    def __init__(self, model: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise AdapterError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        targets = find_targets(model, config.target_modules)
        saved = find_modules_to_save(model, config.modules_to_save)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model, self.config = model, config
        for name, layer in targets:
            with seeded(layer_seed(config.seed, name)):
                model.set_submodule(name, self.layer_class(layer, config, name=name))
        for module in saved:
            module.requires_grad_(True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def adapter_layers(self) -> list[tuple[str, AdapterLayer]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, AdapterLayer)]

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """What :meth:`save_pretrained` saves: the trainable parameters and the saved buffers."""
        buffers = {
            f"{name}.{b}": buffer
            for name, layer in self.adapter_layers()
            for b in layer.saved_buffers
            if (buffer := registered_buffer(layer, b)) is not None
        }
        return {**self.trainable_parameters(), **buffers}

    def merge(self) -> None:
        """Add every ΔW into its base weight (tied weights are untied first: see :func:`untie`)."""
        layers = self.adapter_layers()
        untie(self.model, [layer.base_layer for _, layer in layers])
        for _, layer in layers:
            layer.merge()

    def unmerge(self) -> None:
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """The Hugging Face model with every ΔW merged and the adapter layers removed."""
        layers = self.adapter_layers()
        if not any(layer.merged for _, layer in layers):
            self.merge()
        for name, layer in layers:
            self.model.set_submodule(name, layer.base_layer)
        return self.model

    def save_pretrained(self, folder: str | Path) -> Path:
        """``adapter_config.json`` and the trainable tensors as ``adapter_model.safetensors``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.detach().cpu().contiguous() for n, t in self.adapter_tensors().items()}
        save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt", "method": self.config.method})
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, model: nn.Module, folder: str | Path) -> AdapterModel:
        """``model`` with the adapter saved in ``folder``; refuses missing or extra tensors."""
        folder = Path(folder)
        config = cls.config_class.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        adapted = cls(model, config)
        tensors = load_file(folder / WEIGHTS_FILE)
        own = adapted.adapter_tensors()
        if set(tensors) != set(own):
            raise AdapterError(
                f"{folder / WEIGHTS_FILE} does not fit the model: missing "
                f"{sorted(set(own) - set(tensors))[:5]}, unexpected {sorted(set(tensors) - set(own))[:5]}"
            )
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(tensors[name])
        return adapted


def registered_buffer(module: nn.Module, path: str) -> torch.Tensor | None:
    """The buffer at the dotted ``path`` under ``module``; ``None`` where there is none."""
    try:
        return module.get_buffer(path)
    except AttributeError:
        return None


@contextmanager
def factors_fixed(model: nn.Module) -> Iterator[None]:
    """Every adapted layer's ``(A, B)`` generated once on entry and used by each forward pass
    inside, as the merged model uses one ΔW: evaluated under shots or device noise
    (:func:`qcore.ablation.circuits_on`), the circuits run once, not once per batch with fresh
    shot noise each time. On exit each layer generates its factors again."""
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.fixed = layer.factors()
        yield
    finally:
        for layer in layers:
            layer.fixed = None


def find_modules_to_save(model: nn.Module, patterns: Sequence[str]) -> list[nn.Module]:
    if not patterns:
        return []
    found = [m for n, m in model.named_modules() if n and name_matches(n, patterns)]
    if not found:
        raise AdapterError(f"modules_to_save {list(patterns)!r} match no module of {type(model).__name__}")
    return found
