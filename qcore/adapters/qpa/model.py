"""QPA applied to a whole model: the chosen layers become :class:`QPALayer` s."""

from __future__ import annotations

from qcore.adapters.base import AdapterModel
from qcore.adapters.qpa.config import QPAConfig
from qcore.adapters.qpa.layer import QPALayer


class QPAModel(AdapterModel):
    """``QPAModel(hf_model, QPAConfig(target_modules=["lm_head"]))``: see :mod:`qcore.adapters.base`."""

    config_class = QPAConfig
    layer_class = QPALayer
