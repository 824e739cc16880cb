"""QTHA applied to a whole model: the chosen layers become :class:`QTHALayer` s."""

from __future__ import annotations

from qcore.adapters.base import AdapterModel
from qcore.adapters.qtha.config import QTHAConfig
from qcore.adapters.qtha.layer import QTHALayer


class QTHAModel(AdapterModel):
    """``QTHAModel(hf_model, QTHAConfig(target_modules=["query", "value"]))``."""

    config_class = QTHAConfig
    layer_class = QTHALayer
