"""QPA: quantum parameter adaptation (arXiv 2410.09846)."""

from qcore.adapters.qpa.config import PUBLISHED_HIDDEN, QPAConfig
from qcore.adapters.qpa.layer import QPAGenerator, QPALayer
from qcore.adapters.qpa.model import QPAModel

__all__ = ["PUBLISHED_HIDDEN", "QPAConfig", "QPAGenerator", "QPALayer", "QPAModel"]
