"""Simulator backends, chosen by name: ``exact`` (PyTorch statevector) and ``aer`` (Qiskit Aer)."""

from . import exact  # noqa: F401  (registers "exact")
from .base import Simulator, available_backends, build_simulator
from .program import CircuitError, read_circuit

try:  # Aer is a hard dependency, but keep the exact path importable while it loads
    from . import aer  # noqa: F401  (registers "aer")
except ImportError:  # pragma: no cover - only while aer.py is being written
    pass

__all__ = ["Simulator", "available_backends", "build_simulator", "CircuitError", "read_circuit"]
