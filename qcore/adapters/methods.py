"""The three methods by name: build a config, adapt a model, load a saved adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeAlias

from torch import nn

from qcore.adapters.base import CONFIG_FILE, AdapterConfig, AdapterError, AdapterModel
from qcore.adapters.lora import LoRAConfig, LoRAModel
from qcore.adapters.qpa import QPAConfig, QPAModel
from qcore.adapters.qtha import QTHAConfig, QTHAModel
from qcore.names import ADAPTERS

CONFIGS: dict[str, type[AdapterConfig]] = {"lora": LoRAConfig, "qpa": QPAConfig, "qtha": QTHAConfig}
METHODS = tuple(CONFIGS)
assert METHODS == ADAPTERS, "the adapters and the names the parameter models offer must agree"
MODELS: dict[str, type[AdapterModel] | type[LoRAModel]] = {"lora": LoRAModel, "qpa": QPAModel, "qtha": QTHAModel}
Adapted: TypeAlias = AdapterModel | LoRAModel


def adapter_config(method: str, **fields: Any) -> AdapterConfig:
    """The config of ``method`` (``lora``, ``qpa`` or ``qtha``) from its fields."""
    if method not in CONFIGS:
        raise AdapterError(f"method {method!r} is unknown; methods are {list(METHODS)}")
    return CONFIGS[method](**fields)


def adapt(model: nn.Module, config: AdapterConfig) -> Adapted:
    """``model`` with the adapters ``config`` describes injected; only they (and
    ``modules_to_save``) are trainable."""
    return MODELS[config.method](model, config)


def load_adapter(model: nn.Module, folder: str | Path) -> Adapted:
    """``model`` with the adapter saved in ``folder`` (by any of the three methods)."""
    saved = json.loads((Path(folder) / CONFIG_FILE).read_text())
    method = "lora" if saved.get("peft_type") == "LORA" else saved.get("method")  # peft's own format
    if method not in MODELS:
        raise AdapterError(f"{Path(folder) / CONFIG_FILE} names method {method!r}; known: {list(METHODS)}")
    return MODELS[method].from_pretrained(model, folder)
