"""QTHA: quantum tensor hybrid adaptation (arXiv 2503.12790), as designed here."""

from qcore.adapters.qtha.config import QTHAConfig
from qcore.adapters.qtha.layer import QTHALayer
from qcore.adapters.qtha.model import QTHAModel
from qcore.adapters.qtha.mpo import MPO, factorize

__all__ = ["MPO", "QTHAConfig", "QTHALayer", "QTHAModel", "factorize"]
