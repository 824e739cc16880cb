"""A Dask cluster of Slurm jobs (dask-jobqueue) for qllm-lab flows: run it on a login node,

    pip install dask-jobqueue
    python infra/slurm/cluster.py --jobs 4 --cores 8 --memory 32GB --walltime 04:00:00

and point flows at the address it prints (``QLLM_DASK_ADDRESS=tcp://...``). It keeps the
cluster until Ctrl-C, then cancels the jobs. Each job runs ``--cores`` single-threaded worker
processes (quantum simulation scales by processes), started in the project's virtualenv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    from dask_jobqueue import SLURMCluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="Slurm jobs (each a node share of --cores)")
    parser.add_argument("--cores", type=int, default=4, help="cores per job = worker processes per job")
    parser.add_argument("--memory", default="16GB", help="memory per job")
    parser.add_argument("--walltime", default="02:00:00")
    parser.add_argument("--queue", help="Slurm partition")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--venv", default=str(Path(sys.prefix)), help="virtualenv the workers activate")
    parser.add_argument("--port", type=int, default=8786, help="scheduler port on this node")
    args = parser.parse_args()

    cluster = SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=args.cores,
        processes=args.cores,
        memory=args.memory,
        walltime=args.walltime,
        # Slurm passes this shell's variables on unless the site submits with --export=NONE:
        # activate the environment explicitly, and give the workers the flows' patient
        # timeouts (a CPU-starved worker must not be dropped).
        job_script_prologue=[
            f"source {args.venv}/bin/activate",
            "export DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=300s",
            "export DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP=300s",
        ],
        scheduler_options={"port": args.port, "dashboard_address": ":8787"},
    )
    cluster.scale(jobs=args.jobs)
    print(cluster.job_script())
    print(f"Dask scheduler: {cluster.scheduler_address}\n  export QLLM_DASK_ADDRESS={cluster.scheduler_address}")
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()


if __name__ == "__main__":
    main()
