"""A study fanned out over the Dask workers against the same points run one after another in one
process, measured in the same invocation.

    python bench/study.py [--grid "qubits=3,4,5,6;layers=1,2,3,4,5"] [--seeds 5] [--fixed ...]

Run 1: the study flow on a LocalCluster of ``QLLM_DASK_WORKERS`` (default: one per core)
single-threaded workers. Run 2: the same study on one worker process given every core's torch
threads, so it trains the points one after another. Both start from the same cached embeddings
and neither finds a finished training. Prints wall times, the speed-up, the machine's mean CPU
use during each run (sampled every 0.5 s) and the peak memory in use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

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


def run(root: Path, workers: int, threads: int, args: argparse.Namespace) -> tuple[float, Sampler, dict]:
    from flows.study import StudyParams, run_study

    os.environ.update(QLLM_ARTIFACT_ROOT=str(root), QLLM_DASK_WORKERS=str(workers), QLLM_TASK_THREADS=str(threads))
    params = StudyParams(grid=args.grid, seeds=args.seeds, fixed=args.fixed, experiment="bench-study")
    with Sampler() as s:
        t0 = time.perf_counter()
        result = run_study(params)
        wall = time.perf_counter() - t0
    return wall, s, result


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
        # Embed once, so both measured runs start from the same cached embeddings.
        warm = base / "warm"
        run(
            warm,
            workers,
            1,
            argparse.Namespace(**{**vars(args), "seeds": 1, "grid": args.grid.split(";")[0].split(",")[0]}),
        )
        for name in ("parallel", "sequential"):
            shutil.copytree(warm / "teacher", base / name / "teacher")
        par_wall, par, par_result = run(base / "parallel", workers, 1, args)
        seq_wall, seq, seq_result = run(base / "sequential", 1, cores, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    n = par_result["trainings"]
    assert par_result["cached"] == 0 and seq_result["cached"] == 0, "a measured run found finished trainings"
    print(f"\n{n} trainings ({len(par_result['table'])} points x {args.seeds} seeds), {cores} cores")
    print("| run | wall s | mean CPU % | peak memory in use MB | failed |\n|---|---|---|---|---|")
    for label, wall, s, r in (
        (f"Dask, {workers} workers x 1 thread", par_wall, par, par_result),
        (f"one process, {cores} threads", seq_wall, seq, seq_result),
    ):
        print(f"| {label} | {wall:.1f} | {sum(s.cpu) / max(1, len(s.cpu)):.0f} | {s.peak_mb:.0f} | {r['failed']} |")
    print(f"speed-up: {seq_wall / par_wall:.2f}x")


if __name__ == "__main__":
    main()
