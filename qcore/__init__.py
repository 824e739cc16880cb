"""qcore: quantum circuits, simulators and quantum layers for PyTorch.

Plain Python: imports torch and qiskit, never prefect, mlflow, dask or s3fs. The package's own
names load on first use (:mod:`qcore._lazy`), so a light module of it (:mod:`qcore.devices`, a
config) imports without torch or Qiskit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qcore._lazy import lazy_names

if TYPE_CHECKING:
    from qcore.layer import QuantumLayer, z_observables
    from qcore.simulators import CircuitError, available_backends

__getattr__ = lazy_names(
    __name__,
    {
        "QuantumLayer": "qcore.layer",
        "z_observables": "qcore.layer",
        "CircuitError": "qcore.simulators",
        "available_backends": "qcore.simulators",
    },
)
__all__ = ["CircuitError", "QuantumLayer", "available_backends", "z_observables"]
