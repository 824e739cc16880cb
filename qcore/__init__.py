"""qcore: quantum circuits, simulators and quantum layers for PyTorch.

Plain Python: imports torch and qiskit, never prefect, mlflow, dask or s3fs.
"""

from .layer import QuantumLayer, z_observables
from .simulators import CircuitError, available_backends

__all__ = ["CircuitError", "QuantumLayer", "available_backends", "z_observables"]
