"""One Prefect server and one Dask cluster for every flow test of a session, configured as at
scale: the server's address in Prefect's settings and the scheduler's in ``QLLM_DASK_ADDRESS``,
so every run finds them and its workers are warm.

Starting a Prefect server and a cluster of two worker processes costs tens of seconds on two
cores; each flow run used to start its own. The services start with the first flow module
(``conftest.py`` requests them for modules marked ``flow``) and their addresses are exported
only while such a module runs, so other tests, and the system tests' own stacks, never see them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from distributed import LocalCluster
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings


@dataclass(frozen=True)
class Services:
    prefect_api: str
    dask_address: str


@contextmanager
def started_services() -> Iterator[Services]:
    """A temporary Prefect server, then a 2-worker cluster whose workers know its address."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=180)
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("PREFECT_API_URL", server.api_url)  # inherited by the worker processes
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        mp.undo()
        with cluster:
            yield Services(server.api_url, cluster.scheduler_address)
    finally:
        mp.undo()
        server.stop()


@contextmanager
def services_exported(services: Services) -> Iterator[None]:
    """The services as a flow run looks for them, for the duration of one test module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_API_URL", services.prefect_api)
    mp.setenv("QLLM_DASK_ADDRESS", services.dask_address)
    try:
        with temporary_settings({PREFECT_API_URL: services.prefect_api}):
            yield
    finally:
        mp.undo()


@contextmanager
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``(artifact root, Prefect API URL)`` of a flow test module: its own artifact root on the
    session's services."""
    path = tmp_path_factory.mktemp("artifacts")
    mp = pytest.MonkeyPatch()
    mp.setenv("QLLM_ARTIFACT_ROOT", str(path))
    try:
        yield path, os.environ["PREFECT_API_URL"]
    finally:
        mp.undo()


# What a flow's log says of its MLflow run (the browser test looks for exactly this shape).
def child_runs(parent: Run, where: str = "") -> list[Run]:
    """The child runs of ``parent`` in the current tracking store, optionally filtered further
    (``where``: an MLflow search clause such as ``tags.kind = 'quantum student'``)."""
    clause = f"tags.mlflow.parentRunId = '{parent.info.run_id}'" + (f" and {where}" if where else "")
    return MlflowClient().search_runs([parent.info.experiment_id], clause)


MLFLOW_LINK = re.compile(r"MLflow run ([0-9a-f]{32}): (\S+#/experiments/\d+/runs/[0-9a-f]{32})")


def assert_linked(mlflow_run_id: str, report_key: str, *, timeout: float = 60) -> Run:
    """The flow run and its MLflow parent run name each other, read back from the Prefect server
    and the MLflow store the flow used: the parent's tags hold the flow run's id and page, the
    flow run's log holds exactly one ``MLflow run <id>: <link>`` line (logs arrive in batches,
    so it is awaited), and its report artifact ``report_key`` names the run and the link.
    Returns the parent run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import LogSort

    from lab import tracking
    from lab.runtime import Runtime

    settings = Runtime()
    parent = MlflowClient(settings.tracking_uri()).get_run(mlflow_run_id)
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    assert parent.data.tags["prefect.flow_run_url"] == f"{ui}/runs/flow-run/{flow_run_id}"
    link = tracking.run_url(settings, parent.info.experiment_id, mlflow_run_id)
    with get_client(sync_client=True) as client:

        def lines() -> list[str]:
            logs: list[Any] = []
            while True:  # pages of the server's largest limit; limit and offset explicit, it refuses nulls
                page = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)])),
                    limit=200,
                    offset=len(logs),
                    sort=LogSort.TIMESTAMP_ASC,
                )
                logs += page
                if len(page) < 200:
                    return [log.message for log in logs]

        deadline = time.monotonic() + timeout
        while not (found := [m for line in lines() for m in MLFLOW_LINK.findall(line)]) and time.monotonic() < deadline:
            time.sleep(1)
        assert found == [(mlflow_run_id, link)]
        [report] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)]), key=ArtifactFilterKey(any_=[report_key])
            ),
            limit=10,
        )
    assert f"MLflow run `{mlflow_run_id}`: [{link}]({link})" in str(report.data)
    return parent
