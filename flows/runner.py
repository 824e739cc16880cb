"""The Dask task runner every flow uses: an existing scheduler, or a temporary LocalCluster."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from prefect.settings import PREFECT_API_URL
from prefect_dask import DaskTaskRunner

from tasks.settings import Settings


def dask_runner(address: str | None = None) -> DaskTaskRunner:
    """``address`` (or ``QLLM_DASK_ADDRESS``) if set, else a LocalCluster of single-threaded
    worker processes, one per core: quantum simulation scales by processes, not threads."""
    settings = Settings()
    address = address or settings.dask_address
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": settings.dask_workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": ":0",
    })


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API this process and its Dask workers share.

    With ``PREFECT_API_URL`` set (a Prefect server or Cloud) it is used as is. Otherwise one
    temporary local server is started and its address exported, so worker processes report to
    it instead of each starting a server of their own on the same database.
    """
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # send the last log lines before the server goes away
        del os.environ["PREFECT_API_URL"]
        server.stop()
