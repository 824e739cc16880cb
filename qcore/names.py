"""Names the configs accept, declared without torch or Qiskit so that a config (and the parameter
models built from it) imports in a light process: ``qllm`` refuses bad values before loading
either."""

from __future__ import annotations

CIRCUITS = ("quantum", "classical")  # a config's ``circuit``: the circuit, or its classical stand-in
COMPLEX_DTYPES = ("complex64", "complex128")  # a model's statevector precision
ADAPTERS = ("lora", "qpa", "qtha")  # the adapter methods of :mod:`qcore.adapters`
# QPA: the mapping model of the published code: n+1 → 32 → 64 → 128 → 128 → 64 → 32 → 32, then → chunk.
PUBLISHED_HIDDEN = (32, 64, 128, 128, 64, 32, 32)
