"""Test-wide environment: a private Prefect home, no telemetry, and the shared data sets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before Prefect is imported anywhere: Prefect reads its settings from the environment.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="qllm-test-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Clusters the tests start themselves get the flows' patient Dask timeouts (see flows/runner.py):
# a busy CI machine must not make the scheduler forget its workers.
os.environ.setdefault("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "300s")
os.environ.setdefault("DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP", "300s")
os.environ.setdefault("DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL", "30 minutes")
# MLflow samples system metrics every 10 s and drops a run's last partial interval: the tests'
# tiny flows finish in seconds, so they sample every second.
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
_shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "QLLM_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["QLLM_DATA_DIR"] = str(_shared)
