"""A clean stop (issue 17 item 4): a signal ends a ``qllm run`` within seconds, its temporary
Prefect server and Dask workers stopped, its MLflow runs KILLED, no traceback on stderr.

Each case runs ``python -m flows.cli run distill`` in a session of its own, as a terminal or
``timeout`` would, with its own temporary Prefect server and LocalCluster (what a stop must clean
up; not the test session's services). The signal goes out, to the whole process group as a
terminal's Ctrl-C and ``timeout`` send it or to the run alone, once the MLflow parent run is
open and the Dask cluster trains its student. All cases start at once, side by side: on a 2-core
machine each takes 50 s alone, some 110 s beside the others, to import and start its servers,
then 2-3 s to stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.system  # starts its own servers; `flow` would start the session's too

STOP_SECONDS = 10.0
LIBRARY_CHATTER = re.compile(r"INFO mlflow\.|distributed\.[a-z_.]+ - INFO|Loading weights|Downloading artifacts")
READY_SECONDS = 240.0  # imports, the temporary Prefect server, the data and the cluster
REPO = Path(__file__).resolve().parents[1]
# A run that is still training when the signal comes: one student, many epochs.
ARGV = [
    "run",
    "distill",
    "--train-size",
    "120",
    "--test-size",
    "40",
    "--teacher-shard-size",
    "200",
    "--seeds",
    "0",
    "--epochs",
    "1000",
    "--qubits",
    "5",
    "--blocks",
    "1",
    "--eval-noise",
    "none",
    "--eval-shots",
    "none",
    "--experiment",
    "test-stop",
]
# (case id, signal, to the whole process group as a terminal's Ctrl-C and `timeout` send it)
CASES = [
    ("ctrl-c", signal.SIGINT, True),
    ("timeout", signal.SIGTERM, True),
    ("kill", signal.SIGTERM, False),
]


@dataclass
class Run:
    """A ``qllm run`` started in its own session, its output in files."""

    popen: subprocess.Popen[bytes]
    root: Path
    stdout: Path
    stderr: Path

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")


def start(root: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "QLLM_", "DASK_"))}
    env |= {
        "PYTHONPATH": str(REPO),
        "QLLM_ARTIFACT_ROOT": str(root / "artifacts"),
        "QLLM_DASK_WORKERS": "1",
        "QLLM_DATA_DIR": os.environ.get("QLLM_DATA_DIR", ""),
        "PREFECT_HOME": str(root / "prefect"),
    }
    stdout, stderr = root / "stdout.txt", root / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *ARGV],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Run(popen, root / "artifacts", stdout, stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    started = {case: start(tmp_path_factory.mktemp(case)) for case, _, _ in CASES}
    yield started
    for run in started.values():  # whatever a failed case left behind
        for proc in family(run):
            proc.kill()
        run.popen.kill()
        run.popen.wait()


def family(run: Run) -> list[psutil.Process]:
    """The run's processes still alive: its own, its descendants, and any other process of its
    session (a server started in a session of its own is found as a descendant)."""
    found: dict[int, psutil.Process] = {}
    try:
        leader = psutil.Process(run.popen.pid)
        found |= {p.pid: p for p in [leader, *leader.children(recursive=True)]}
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == run.popen.pid:
                found[proc.pid] = proc
        except (ProcessLookupError, PermissionError):
            continue
    return [p for p in found.values() if alive(p)]


def alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (a zombie has ended: init reaps it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def mlflow_run_id(run: Run) -> str | None:
    match = re.search(r"MLflow run ([0-9a-f]{32}):", run.out() + run.err())
    return match.group(1) if match else None


def wait_until_training(run: Run) -> tuple[str, list[psutil.Process]]:
    """The run's MLflow parent id, once that run is open and the cluster trains its student; and
    the run's processes then (the flow, the Prefect server, the Dask workers)."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert run.popen.poll() is None, f"the run ended early:\n{run.out()[-3000:]}\n{run.err()[-3000:]}"
        run_id = mlflow_run_id(run)
        if run_id and "epoch 2/" in run.out() + run.err():
            client = MlflowClient(f"sqlite:///{run.root / 'mlflow.db'}")
            assert client.get_run(run_id).info.status == "RUNNING"
            return run_id, family(run)
        time.sleep(0.5)
    pytest.fail(f"no training within {READY_SECONDS:.0f} s:\n{run.out()[-3000:]}\n{run.err()[-3000:]}")


@pytest.mark.parametrize(("case", "signum", "group"), CASES, ids=[c[0] for c in CASES])
def test_a_signal_stops_the_run_cleanly(runs: dict[str, Run], case: str, signum: int, group: bool) -> None:
    run = runs[case]
    run_id, processes = wait_until_training(run)
    assert len(processes) >= 3, [p.cmdline() for p in processes]  # the flow, its server, its worker
    t0 = time.monotonic()
    if group:
        os.killpg(run.popen.pid, signum)
    else:
        run.popen.send_signal(signum)
    try:
        code = run.popen.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_SECONDS:.0f} s after {signal.Signals(signum).name}:\n{run.err()[-3000:]}")
    seconds = time.monotonic() - t0
    print(f"{case}: exit code {code} after {seconds:.1f} s")
    err = run.err()
    assert code == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "ConnectError" not in err, err[-5000:]
    assert f"stopped by {signal.Signals(signum).name}: MLflow run {run_id} marked KILLED" in run.out() + err
    # Quiet without --verbose: no library INFO lines nor Hugging Face bars (the teacher loaded MiniLM)
    chatter = [line for line in (run.out() + err).splitlines() if LIBRARY_CHATTER.search(line)]
    assert chatter == [], chatter[:5]
    time.sleep(0.5)  # a worker process killed last may take a moment to go
    assert [p.pid for p in processes if alive(p)] == []
    assert family(run) == []
    client = MlflowClient(f"sqlite:///{run.root / 'mlflow.db'}")
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert {r.info.status for r in [parent, *children]} == {"KILLED"}
