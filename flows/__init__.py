"""Prefect flows, one per method plus study, compare and hardware, and the ``qllm`` command line
(:mod:`flows.cli`). Each flow reads top to bottom as a list of tasks; no flow imports another."""
