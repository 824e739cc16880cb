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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import LocalCluster
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
