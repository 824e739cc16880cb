"""Test-wide environment: a private Prefect home (one per pytest-xdist worker), no telemetry, the
shared data sets, and the session's services for the flow tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Set before Prefect is imported anywhere: Prefect reads its settings from the environment.
_home = os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="qllm-test-prefect-"))
if worker := os.environ.get("PYTEST_XDIST_WORKER"):  # each pytest-xdist worker its own database
    os.environ["PREFECT_HOME"] = os.path.join(_home, worker)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Clusters the tests start themselves get the flows' patient Dask timeouts (see flows/runner.py):
# a busy CI machine must not make the scheduler forget its workers.
os.environ.setdefault("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "300s")
os.environ.setdefault("DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP", "300s")
os.environ.setdefault("DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL", "30 minutes")
# MLflow samples system metrics every 10 s and drops a run's last partial interval: the tests'
# tiny flows finish in seconds, so they sample every second.
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
_shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "QLLM_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["QLLM_DATA_DIR"] = str(_shared)


import pytest  # noqa: E402 - after the environment above, which Prefect reads on import

from tests.stack import Services, services_exported, started_services  # noqa: E402


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The session's Prefect server and Dask cluster (see tests/stack.py), started on first use."""
    with started_services() as s:
        yield s


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_xdist_worker() -> None:
    """Under pytest-xdist, each worker's own torch work runs at one thread, as the lab's Dask tasks
    do: at torch's default (every core) beside the other busy worker it collapses (a SetFit
    fine-tune here: 9 s at one thread, 26 s at two beside one busy process). Tests that need
    another count set it themselves."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _flow_services(request: pytest.FixtureRequest) -> Iterator[None]:
    """Modules marked ``flow`` run on the session's services; autouse, so they are in place
    before the module's own fixtures start a run."""
    if request.node.get_closest_marker("flow") is None:
        yield
        return
    with services_exported(request.getfixturevalue("services")):
        yield


# The slowest modules first (measured), so that the pytest-xdist workers of `make test`
# (``--dist loadfile``: a module stays on one worker) finish at about the same time.
SLOWEST_FIRST = (
    "test_distill_flow.py",
    "test_head_study_flow.py",
    "test_system.py",
    "test_stop.py",
    "test_compare_flow.py",
    "test_hardware.py",
    "test_federated_flow.py",
    "test_peft_flow.py",
    "test_tune_flow.py",
    "test_registry.py",
    "test_refusals.py",
    "test_pretrain.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules in the order above, then the rest; each module's tests keep their order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), position[id(item)]))
