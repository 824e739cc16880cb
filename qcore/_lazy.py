"""Package names that load on first use (PEP 562), so a light module inside a package imports
without its heavy siblings: the parameter models read :mod:`qcore.devices` or a config, and
``qllm`` answers a refused command without loading torch or Qiskit."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The package's ``__getattr__``: ``name`` from the module ``where[name]`` names."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__
