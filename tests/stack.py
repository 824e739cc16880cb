"""One Prefect server and one Dask cluster shared by a test module's flow runs, configured as at
scale: the server's address in Prefect's settings and the scheduler's in ``QLLM_DASK_ADDRESS``,
so every run finds them and its workers are warm."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from distributed import LocalCluster
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.runner import prefect_api


@contextmanager
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``(artifact root, Prefect API URL)``; the API starts first, so the workers inherit it."""
    path = tmp_path_factory.mktemp("artifacts")
    mp = pytest.MonkeyPatch()
    mp.setenv("QLLM_ARTIFACT_ROOT", str(path))
    try:
        with (
            prefect_api() as url,
            temporary_settings({PREFECT_API_URL: url}),
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        ):
            mp.setenv("QLLM_DASK_ADDRESS", cluster.scheduler_address)
            yield path, url
    finally:
        mp.undo()
