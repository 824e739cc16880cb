"""Where things live at run time: one settings object, read from ``QLLM_`` environment variables.

| variable | default | what |
|---|---|---|
| ``QLLM_ARTIFACT_ROOT`` | ``./qllm-artifacts`` | any fsspec URL (``s3://bucket/prefix`` through s3fs) |
| ``QLLM_S3_ENDPOINT_URL`` | AWS S3 | an S3-compatible store (MinIO, Ceph, moto) for s3fs and MLflow's artifact uploads |
| ``QLLM_MLFLOW_URI`` | SQLite file under a local artifact root | an MLflow tracking server |
| ``QLLM_MLFLOW_UI_URL`` | the tracking URI if it is ``http(s)``, else ``http://127.0.0.1:5000`` (what ``mlflow ui`` serves) | the MLflow UI the flows' links point to |
| ``QLLM_PREFECT_API_URL`` | ``PREFECT_API_URL``, else a temporary local server | a Prefect server (``PREFECT_API_URL`` wins when both are set) |
| ``QLLM_DASK_ADDRESS`` | a temporary ``LocalCluster`` | ``tcp://scheduler:8786`` |
| ``QLLM_DASK_WORKERS`` | number of cores | workers of the temporary cluster |
| ``QLLM_TASK_THREADS`` | 1 | torch threads of each training task |
| ``QLLM_DATA_DIR`` | unset: download named sets | a folder holding the named data sets |
| ``QLLM_QPU_SERVICE`` | IBM Quantum Platform | ``module:factory`` of another service with the same interface (``qcore/hardware/service.py``) for ``ibm_*`` backends |

Secrets are deliberately not settings: S3 credentials come from the standard ``AWS_*``
variables (or ``~/.aws``) through botocore, MLflow's from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, Prefect Cloud's from ``PREFECT_API_KEY``, IBM Quantum's from
``QISKIT_IBM_TOKEN`` / ``QISKIT_IBM_INSTANCE`` or Prefect Secret blocks. This object therefore
holds nothing that must not be logged; the IBM token is read only where the service is built
(``tasks/hardware.py``) and is cut out of every error that passes through there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings, SettingsConfigDict

MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


class Runtime(BaseSettings):
    """Run-time locations; every field can be overridden per flow run."""

    model_config = SettingsConfigDict(env_prefix="QLLM_", extra="ignore")

    artifact_root: str = "./qllm-artifacts"
    s3_endpoint_url: str | None = None
    mlflow_uri: str | None = None
    mlflow_ui_url: str | None = None
    prefect_api_url: str | None = None
    dask_address: str | None = None
    dask_workers: int = max(1, os.cpu_count() or 1)
    task_threads: int = 1
    data_dir: str | None = None
    qpu_service: str | None = None

    @property
    def root_is_local(self) -> bool:
        return "://" not in self.artifact_root or self.artifact_root.startswith("file://")

    @property
    def local_root(self) -> Path:
        """The artifact root as a local path (only for local roots)."""
        return Path(self.artifact_root.removeprefix("file://")).resolve()

    def storage_options(self, url: str) -> dict[str, Any]:
        """fsspec options for ``url``: the S3 endpoint for ``s3://`` URLs when one is set."""
        if self.s3_endpoint_url and url.startswith(("s3://", "s3a://")):
            return {"endpoint_url": self.s3_endpoint_url}
        return {}

    def tracking_uri(self) -> str:
        """MLflow tracking URI: the configured one, else SQLite beside the artifacts."""
        if self.mlflow_uri:
            return self.mlflow_uri
        # An object store cannot hold SQLite: then the database lives in the user's cache.
        db = self.local_root / "mlflow.db" if self.root_is_local else Path.home() / ".cache" / "qllm-lab" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    def mlflow_ui(self) -> str:
        """The MLflow UI's address, where the flows' run links point: a tracking server serves
        its UI at its own address (any ``user:password@`` in it left out: the links are logged);
        a SQLite store is seen through ``mlflow ui``, on port 5000."""
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        if self.mlflow_uri and self.mlflow_uri.startswith(("http://", "https://")):
            url = urlsplit(self.mlflow_uri)
            return url._replace(netloc=url.netloc.rpartition("@")[2]).geturl().rstrip("/")
        return MLFLOW_UI_DEFAULT

    def mlflow_artifact_location(self) -> str:
        """Where new MLflow experiments put their artifacts."""
        if self.root_is_local:
            return (self.local_root / "mlruns").as_uri()
        return self.artifact_root.rstrip("/") + "/mlruns"
