"""Simulator backends, chosen by name: ``exact`` (PyTorch statevector) and ``aer`` (Qiskit Aer)."""

from . import aer, exact  # noqa: F401  (importing registers "aer" and "exact")
from .base import Simulator, available_backends, build_simulator
from .program import CircuitError, read_circuit

__all__ = ["CircuitError", "Simulator", "available_backends", "build_simulator", "read_circuit"]
