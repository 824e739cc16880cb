"""Quantum parameter-efficient fine-tuning beside LoRA, for any Hugging Face model.

    from qcore.adapters import QPAConfig, adapt
    model = adapt(hf_model, QPAConfig(target_modules=["lm_head"], r=4))   # or QTHAConfig, LoRAConfig
    ...train...
    model.save_pretrained("adapter/")
    model.merge_and_unload().save_pretrained("merged/")   # plain weights: no quantum computer needed

* QPA, quantum parameter adaptation (https://arxiv.org/abs/2410.09846): :mod:`qcore.adapters.qpa`.
* QTHA, quantum tensor hybrid adaptation (https://arxiv.org/abs/2503.12790): :mod:`qcore.adapters.qtha`.
* LoRA (https://arxiv.org/abs/2106.09685) through the ``peft`` package: :mod:`qcore.adapters.lora`.
* :mod:`qcore.adapters.counting`: trainable parameters from a model config alone.
"""

from qcore.adapters.base import AdapterConfig, AdapterError, AdapterLayer, AdapterModel
from qcore.adapters.lora import LoRAConfig, LoRAModel
from qcore.adapters.methods import METHODS, Adapted, adapt, adapter_config, load_adapter
from qcore.adapters.qpa import QPAConfig, QPAModel
from qcore.adapters.qtha import QTHAConfig, QTHAModel

__all__ = [
    "METHODS",
    "Adapted",
    "AdapterConfig",
    "AdapterError",
    "AdapterLayer",
    "AdapterModel",
    "LoRAConfig",
    "LoRAModel",
    "QPAConfig",
    "QPAModel",
    "QTHAConfig",
    "QTHAModel",
    "adapt",
    "adapter_config",
    "load_adapter",
]
