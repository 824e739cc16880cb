"""The method layer: plain Python (no Prefect) between the flows' tasks and ``qcore``.

Data sets and corpora, the teacher, the artifact store, MLflow tracking and reports, and one
module per method in :mod:`lab.methods` behind one interface, returning typed results
(:mod:`lab.results`). Everything here runs and tests without an orchestrator.
"""
