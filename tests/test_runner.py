"""The flows' task runner (flows/runner.py) on a real Prefect server and the LocalCluster it
starts itself: several of a flow's threads submitting at once (``at_once``, as compare's
studies do) reach one cluster, not one each; a stopped flow's tasks are released at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import get_worker
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.runner import at_once, dask_runner, prefect_api
from tasks.train import released

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


@task
def until_released(marks: Path) -> None:
    """Mark that it runs, then wait (up to a minute) to be released, and mark how it ended."""
    (marks / "started").touch()
    t0 = time.monotonic()
    while not released() and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    (marks / ("released" if released() else "finished")).touch()


@flow(task_runner=dask_runner())
def cancelled_midway(marks: Path) -> float:
    """What Prefect's engine does as a cancelled flow unwinds: ``cancel_all`` on the flow's own
    runner (the engine runs the flow on a duplicate of it). The seconds until the task saw it."""
    until_released.submit(marks)
    while not (marks / "started").exists():
        time.sleep(0.05)
    t0 = time.monotonic()
    cancelled_midway.task_runner.cancel_all()
    while not any((marks / end).exists() for end in ("released", "finished")):
        time.sleep(0.05)
    return time.monotonic() - t0


def test_cancel_all_releases_the_running_tasks_of_a_flow(api: str, tmp_path: Path) -> None:
    """Released then, not once the flow's client closes after Prefect has reported the state (12 s
    later on a loaded machine): a training stops at its next epoch."""
    waited = cancelled_midway(tmp_path)
    assert (tmp_path / "released").exists() and not (tmp_path / "finished").exists()
    assert waited < 10, f"the task saw its release {waited:.1f} s after cancel_all"
