"""Prefect side of the hardware flow: credentials from Prefect Secret blocks, and the task that
runs a plan on a QPU (its retries resume the same jobs, through the ledger of :mod:`lab.hardware`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lab.hardware import JobFailedError, Ledger, ibm_credentials, make_service, run_chunks
from qcore.hardware.plan import CircuitPlan
from qcore.hardware.service import HardwareError, Mitigation, QPUService

QPU_TAG = "qpu"  # Prefect tag of every task that talks to a QPU; limit it with `prefect concurrency-limit`

__all__ = ["QPU_TAG", "JobFailedError", "credentials", "run_on_qpu", "service_for"]


def secret_block(name: str) -> str | None:
    """The Prefect Secret block ``name``, or ``None`` (no API, or no such block)."""
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)  # a Secret in this synchronous context, not a coroutine
        return str(block.get())
    except Exception:  # noqa: BLE001 - no API, or no such block: the caller says what to set
        return None


def credentials() -> tuple[str, str | None]:
    """IBM Quantum credentials from the environment, else from Prefect Secret blocks."""
    return ibm_credentials(secret_block)


def service_for(backend: str) -> QPUService:
    return make_service(backend, secret_block)


def _not_a_failed_job(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient errors (network, service hiccups, the task's timeout); never a job the
    service ran and failed or cancelled, nor a refusal: those need a person."""
    try:
        state.result()
    except HardwareError:
        return False
    except Exception:  # noqa: BLE001 - anything else is worth another try
        return True
    return True


@task(
    name="run-on-qpu",
    tags=[QPU_TAG],
    retries=3,
    retry_delay_seconds=[10, 60, 300],
    retry_condition_fn=_not_a_failed_job,
    cache_policy=NO_CACHE,
    timeout_seconds=6 * 3600,
)
def run_on_qpu(
    plan: CircuitPlan,
    service: QPUService,
    backend: Any,
    ledger: Ledger,
    *,
    shots: int,
    job_size: int,
    mitigation: Mitigation,
    observables: list[Any],
    on_job_ids: Callable[[list[str]], None],
    poll_max_seconds: float = 60.0,
) -> np.ndarray:
    """``(samples, observables)`` expectation values of every sample, measured on ``backend``
    (see :func:`lab.hardware.run_chunks`)."""
    return run_chunks(
        plan,
        service,
        backend,
        ledger,
        shots=shots,
        job_size=job_size,
        mitigation=mitigation,
        observables=observables,
        on_job_ids=on_job_ids,
        poll_max_seconds=poll_max_seconds,
        log=get_run_logger().info,
    )
