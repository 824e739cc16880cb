"""A training whose Dask result nobody wants any more (its flow was cancelled or crashed, and its
client went away) stops at its next progress report instead of running to its last epoch."""

from __future__ import annotations

import threading
import time

from distributed import Client, LocalCluster

from tasks.train import Released, released, stop_when_released

OUTCOME: list[str] = []  # what the training below ended with (its worker is a thread of this process)
STARTED = threading.Event()


def _training(epochs: int) -> str:
    report = stop_when_released(lambda done, note: None)
    STARTED.set()
    try:
        for epoch in range(epochs):
            report(epoch, f"epoch {epoch}")
            time.sleep(0.01)
    except Released:
        OUTCOME.append("released")
        raise
    OUTCOME.append("finished")
    return "finished"


def test_a_released_training_stops_at_its_next_report() -> None:
    assert not released()  # not on a Dask worker
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        kept = client.submit(_training, 5, pure=False)
        assert kept.result(timeout=60) == "finished" and OUTCOME == ["finished"]  # a wanted one runs to its end

        STARTED.clear()
        future = client.submit(_training, 100_000, pure=False)  # some 20 minutes, unless stopped
        assert STARTED.wait(60)
        t0 = time.monotonic()
        future.release()
        worker = next(iter(cluster.workers.values()))
        while worker.state.executing_count and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        assert OUTCOME == ["finished", "released"], OUTCOME
        assert time.monotonic() - t0 < 5
