"""A study fanned out over the Dask workers against the same points run one after another in one
worker process, measured in the same invocation, two ways:

    python bench/study.py [--grid "qubits=3,4,5,6;layers=1,2,3,4,5"] [--seeds 5] [--fixed ...]

* ``qllm run``: every run starts its own Prefect server and LocalCluster, as the command line
  does, so their start-up (and the workers' imports) is part of each run's time.
* running services: a Prefect server and a cluster are up before the run, as a deployment's
  worker with ``QLLM_DASK_ADDRESS`` has them; each cluster did one small warm-up study first.

The parallel runs use ``QLLM_DASK_WORKERS`` (default: one per core) single-threaded workers;
the sequential ones one worker process given every core's torch threads, which trains the
points one after another. All start from the same cached embeddings and none finds a finished
training. Prints wall times, the speed-up, the machine's mean CPU use during each run (sampled
every 0.5 s) and the peak memory in use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psutil

DEFAULT_FIXED = "per_label=64;test_size=500;epochs=8;patience=3;encoders=1;encoder_layers=1;reuploads=2"


class Sampler:
    """Mean CPU use (% of all cores) and peak memory in use while the block runs."""

    def __enter__(self) -> Sampler:
        self.cpu: list[float] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()
        psutil.cpu_percent()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.cpu.append(psutil.cpu_percent())
            self.peak_mb = max(self.peak_mb, psutil.virtual_memory().used / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(root: Path, workers: int, threads: int, args: argparse.Namespace) -> tuple[float, Sampler, dict[str, Any]]:
    """One study into ``root``; with no ``QLLM_DASK_ADDRESS``, on a cluster of its own."""
    from flows.study import StudyParams, run_study

    os.environ.update(QLLM_ARTIFACT_ROOT=str(root), QLLM_DASK_WORKERS=str(workers), QLLM_TASK_THREADS=str(threads))
    params = StudyParams(grid=args.grid, seeds=args.seeds, fixed=args.fixed, experiment="bench-study")
    with Sampler() as s:
        t0 = time.perf_counter()
        result = run_study(params)
        wall = time.perf_counter() - t0
    return wall, s, result


def tiny(args: argparse.Namespace) -> argparse.Namespace:
    """The first value of the first axis, one seed: a warm-up."""
    return argparse.Namespace(**{**vars(args), "seeds": 1, "grid": args.grid.split(";")[0].split(",")[0]})


@contextmanager
def running_services(workers: int, threads: int) -> Iterator[None]:
    """A Prefect server and a cluster of ``workers`` processes (``threads`` torch threads per
    task), exported as a deployment's worker has them."""
    from distributed import LocalCluster
    from prefect.events.worker import EventsWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=180)
    saved = dict(os.environ)
    os.environ.update(PREFECT_API_URL=server.api_url, QLLM_TASK_THREADS=str(threads))  # the workers inherit them
    try:
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
            temporary_settings({PREFECT_API_URL: server.api_url}),
        ):
            os.environ["QLLM_DASK_ADDRESS"] = cluster.scheduler_address
            yield
            EventsWorker.drain_all()  # the runs' last events reach the server before it stops
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def measure(base: Path, running: bool, workers: int, cores: int, args: argparse.Namespace) -> list[tuple]:
    """The parallel and the sequential run, each on fresh services when ``running``."""
    rows = []
    for name, n, threads in (("parallel", workers, 1), ("sequential", 1, cores)):
        root = base / f"{name}-{'running' if running else 'cli'}"
        shutil.copytree(base / "warm" / "teacher", root / "teacher")
        with running_services(n, threads) if running else nullcontext():
            if running:
                warm = base / f"warm-{name}"
                shutil.copytree(base / "warm" / "teacher", warm / "teacher")
                run(warm, n, threads, tiny(args))
            wall, sampler, result = run(root, n, threads, args)
        assert result["cached"] == 0, "a measured run found finished trainings"
        label = f"Dask, {n} workers x 1 thread" if name == "parallel" else f"one process, {threads} threads"
        rows.append((label, wall, sampler, result))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="qubits=3,4,5,6;layers=1,2,3,4,5")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fixed", default=DEFAULT_FIXED)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    workers = int(os.environ.get("QLLM_DASK_WORKERS", cores))
    base = Path(tempfile.mkdtemp(prefix="qllm-bench-study-"))
    try:
        run(base / "warm", workers, 1, tiny(args))  # embed once: every measured run starts from it
        tables = {
            "qllm run (own Prefect server and cluster)": measure(base, False, workers, cores, args),
            "running services (a deployment's worker)": measure(base, True, workers, cores, args),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for title, rows in tables.items():
        result = rows[0][3]
        points = len(result["table"])
        print(f"\n{title}: {result['trainings']} trainings ({points} points x {args.seeds} seeds), {cores} cores")
        print("| run | wall s | mean CPU % | peak memory in use MB | failed |\n|---|---|---|---|---|")
        for label, wall, s, r in rows:
            print(f"| {label} | {wall:.1f} | {sum(s.cpu) / max(1, len(s.cpu)):.0f} | {s.peak_mb:.0f} | {r['failed']} |")
        print(f"speed-up: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
