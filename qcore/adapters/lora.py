"""The LoRA baseline: the installed ``peft`` package's own LoRA, behind the interface of
:class:`~qcore.adapters.base.AdapterModel`, so the three methods are trained, counted, merged and
saved by the same code. Targets and ranks are checked by the same rules as QPA's and QTHA's.
``peft`` takes seconds to import, so it is imported only when LoRA is used.

LoRA: Low-Rank Adaptation of Large Language Models, https://arxiv.org/abs/2106.09685
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from qcore.adapters.base import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterConfig,
    AdapterError,
    check_rank,
    find_modules_to_save,
    find_targets,
    seeded,
    untie,
)

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer


@contextmanager
def _known_warnings() -> Iterator[None]:
    """Silence two peft warnings that do not concern the user here: tied weights in the adapter
    (they are untied before any merge, see :func:`~qcore.adapters.base.untie`) and a transformers
    helper peft still calls, deprecated in transformers 5."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tie_word_embeddings")
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing", category=FutureWarning)
        yield


@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA with the shared settings: ``ΔW = (α/r)·B·A`` with peft's initialisation (B = 0)."""

    method: ClassVar[str] = "lora"

    def peft_config(self, fan_in_fan_out: bool) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            # peft annotates lora_alpha as int but only divides by it; a fractional α must stay fractional
            lora_alpha=self.scaling * self.r,  # type: ignore[arg-type]
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=self.modules_to_save or None,
            fan_in_fan_out=fan_in_fan_out,
        )


class LoRAModel(nn.Module):
    """``LoRAModel(hf_model, LoRAConfig(target_modules=[...]))``: peft's LoRA, our interface."""

    def __init__(self, model: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        if not isinstance(config, LoRAConfig):
            raise AdapterError(f"{type(self).__name__} needs a LoRAConfig, got {type(config).__name__}")
        targets = find_targets(model, config.target_modules)
        for name, layer in targets:
            check_rank(name, layer, config.r)
        find_modules_to_save(model, config.modules_to_save)
        conv1d = any(isinstance(layer, Conv1D) for _, layer in targets)  # GPT-2 stores (in, out)
        from peft import get_peft_model

        with seeded(config.seed), _known_warnings():
            self.peft = get_peft_model(model, config.peft_config(fan_in_fan_out=conv1d))
        self.config = config

    @property
    def model(self) -> nn.Module:
        return self.peft.base_model.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.peft(*args, **kwargs)

    def adapter_layers(self) -> list[tuple[str, LoraLayer]]:
        from peft.tuners.lora import LoraLayer

        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LoraLayer)]

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.peft.named_parameters() if p.requires_grad}

    def merge(self) -> None:
        layers = [layer for _, layer in self.adapter_layers()]
        untie(self.model, [layer.get_base_layer() for layer in layers])
        for layer in layers:
            layer.merge()

    def unmerge(self) -> None:
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        untie(self.model, [layer.get_base_layer() for _, layer in self.adapter_layers()])
        with _known_warnings():
            return self.peft.merge_and_unload()

    def save_pretrained(self, folder: str | Path) -> Path:
        """peft's own format, so ``peft.PeftModel.from_pretrained`` reads it too. The embedding of
        a tied lm_head is the base model's, unchanged by LoRA, so it is not saved again."""
        self.peft.save_pretrained(str(folder), save_embedding_layers=False)
        return Path(folder)

    @classmethod
    def from_pretrained(cls, model: nn.Module, folder: str | Path) -> LoRAModel:
        folder = Path(folder)
        saved = json.loads((folder / CONFIG_FILE).read_text())
        config = LoRAConfig(
            target_modules=saved["target_modules"],
            r=saved["r"],
            alpha=saved["lora_alpha"],
            dropout=saved["lora_dropout"],
            modules_to_save=saved.get("modules_to_save") or [],
        )
        adapted = cls(model, config)
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(adapted.peft, load_file(folder / WEIGHTS_FILE))
        return adapted
