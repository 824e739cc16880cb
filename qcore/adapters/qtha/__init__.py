"""QTHA: quantum tensor hybrid adaptation (arXiv 2503.12790), as designed here: an MPO
low-rank update ``A·B`` whose factor ``B`` a QNN reparametrises (``B' = B + τ·F·(Q(B) − Q(0))``,
column by column). The QNN reads ``B``, not the data, and the trained update merges into the
base weight, so inference runs no circuit (:mod:`qcore.adapters.qtha.layer`)."""

from qcore.adapters.qtha.config import QTHAConfig
from qcore.adapters.qtha.layer import QTHALayer
from qcore.adapters.qtha.model import QTHAModel
from qcore.adapters.qtha.mpo import MPO, factorize

__all__ = ["MPO", "QTHAConfig", "QTHALayer", "QTHAModel", "factorize"]
