"""The flows' task runner (flows/runner.py) on a real Prefect server and the LocalCluster it
starts itself: several of a flow's threads submitting at once (``at_once``, as compare's
studies do) reach one cluster, not one each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from distributed import get_worker
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.runner import at_once, dask_runner, prefect_api

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    mp.delenv("QLLM_DASK_ADDRESS", raising=False)
    mp.setenv("QLLM_DASK_WORKERS", "1")
    try:
        with prefect_api() as url, temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        mp.undo()


@task
def scheduler_of_this_worker(i: int) -> str:
    return str(get_worker().scheduler.address)


@flow(task_runner=dask_runner())
def from_threads(n: int) -> list[str]:
    return at_once([lambda i=i: scheduler_of_this_worker.submit(i).result() for i in range(n)])


def test_threads_of_a_flow_share_one_cluster(api: str) -> None:
    schedulers = from_threads(6)
    assert len(schedulers) == 6 and len(set(schedulers)) == 1
