"""Prefect tasks that train and evaluate: one training of any method, the classical baselines
of one seed, and chunks of noisy evaluation. Each is a thin wrapper around :mod:`lab.methods` /
:mod:`lab.noise`: retries on the decorator, one torch thread per task, the run logger and a
progress artifact lent to the training."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from prefect import Task, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from lab import noise
from lab.methods import METHODS, Hooks, peft
from lab.methods.base import Job
from lab.results import TrainingResult
from lab.runtime import Runtime
from qcore.simulators.threads import set_threads


@contextmanager
def dask_client_for(backend: str) -> Iterator[Any]:
    """On a Dask worker and for `aer`, a client that lets the parameter-shift batches of this
    training spread over all workers (``worker_client`` secedes from the worker's thread pool,
    so the chunks can run beside it); otherwise ``None``."""
    if backend != "aer":
        yield None
        return
    from distributed import get_worker, worker_client

    try:
        get_worker()
    except ValueError:  # not running on a Dask worker
        yield None
        return
    with worker_client() as client:
        yield client


def one_thread_per_task() -> None:
    """``QLLM_TASK_THREADS`` torch threads (default 1): the Dask workers, one per core, already
    use every core between them; a single worker may be given more. ``set_threads``, so that no
    other thread's engine scope can replace the count in a fresh worker thread."""
    set_threads(Runtime().task_threads)


Progress = Callable[[int, str], None]


def progress_artifact(name: str, total: int) -> Progress:
    """A Prefect progress artifact for one training, keyed by its name, so the task's page and
    the UI's Artifacts page show how far it is while it runs; returns ``report(done, note)``.
    The artifact is made by the first report (a training reused from the store makes none). A
    failed update is logged, never raised: watching must not stop a training."""
    log = get_run_logger()

    def safe(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - any API error; the training goes on
            log.warning("progress artifact of %s not updated: %s", name, exc)
            return None

    key = re.sub(r"[^a-z0-9]+", "-", f"progress-{name}".lower()).strip("-")
    made: list[Any] = []  # the artifact's id, once the first report made it

    def report(done: int, note: str) -> None:
        percent, description = 100.0 * min(done, total) / total, f"{name}: {note}"
        if not made:
            made.append(safe(lambda: create_progress_artifact(percent, key=key, description=description)))
        elif made[0] is not None:
            safe(lambda: update_progress_artifact(made[0], percent, description=description))

    return report


def _total(job: Job) -> int:
    """What a job's progress counts to: its epochs or steps."""
    for attr in ("epochs", "steps"):
        if hasattr(job, attr):
            return int(getattr(job, attr))
    return 1


@task(name="train", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="{job.name}")
def train(method: str, job: Job, data: Any, root: str) -> TrainingResult:
    """Train and evaluate one job of ``method`` (a registry id), or read it back if it finished
    before; a progress artifact shows its epochs or steps. Submit it through :func:`train_task`,
    which gives it the method's retries."""
    one_thread_per_task()
    with dask_client_for(getattr(job, "backend", "exact")) as client:
        if client is not None:
            get_run_logger().info(
                "%s: parameter-shift batches split across %d Dask workers",
                job.name,
                len(client.scheduler_info()["workers"]),
            )
        log = get_run_logger()
        hooks = Hooks(
            log=log.info, warn=log.warning, progress=progress_artifact(job.name, _total(job)), dask_client=client
        )
        return METHODS[method].train(job, data, root, hooks)


def train_task(method: str) -> Task[..., TrainingResult]:
    """The :func:`train` task with ``method``'s retries (a fine-tune that failed fails alike)."""
    return train.with_options(retries=METHODS[method].retries)


@task(name="classical-baselines", retries=1, cache_policy=NO_CACHE, task_run_name="{method}-baselines-s{seed}")
def baselines(method: str, params: Any, data: Any, seed: int) -> list[TrainingResult]:
    """The classical models ``method`` is compared with on the same data, for one seed."""
    one_thread_per_task()
    return METHODS[method].baselines(params, data, seed)


@task(name="noisy-evaluation", retries=1, cache_policy=NO_CACHE, task_run_name="noisy-{label}-{start}")
def noisy_evaluation(
    model_url: str, test_x: np.ndarray, label: str, start: int, stop: int, seed: int, backend_options: dict[str, Any]
) -> dict[str, Any]:
    """Noisy beside exact predictions of a stored model for test samples ``start:stop``."""
    one_thread_per_task()
    return noise.noisy_predictions(model_url, test_x, label, start, stop, seed, backend_options)


@task(name="noisy-finetune", retries=1, cache_policy=NO_CACHE, task_run_name="finetune-{label}")
def noisy_finetune(
    model_url: str,
    label: str,
    options: dict[str, Any],
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_x: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """A stored model fine-tuned under the noise itself, then its predictions under it."""
    one_thread_per_task()
    with dask_client_for("aer") as client:
        out = noise.noisy_finetune(
            model_url,
            label,
            options,
            train_x,
            train_y,
            eval_x,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            dask_client=client,
        )
    get_run_logger().info("fine-tuned under %s for %d steps in %.1fs", label, steps, out["seconds"])
    return out


@task(name="adapter-noise", retries=1, cache_policy=NO_CACHE, task_run_name="noisy-{result.name}")
def adapter_noise(
    result: TrainingResult, data: Any, settings: list[noise.NoiseSetting], samples: int
) -> list[dict[str, Any]]:
    """A stored fine-tune's accuracy with ΔW generated by its circuits under each noise setting."""
    one_thread_per_task()
    rows = peft.noisy_evaluation(result, data, settings, samples)
    get_run_logger().info(
        "%s under noise: %s",
        result.name,
        ", ".join(f"{r['label']} {r['accuracy']:.4f} ({r['seconds']:.1f} s)" for r in rows),
    )
    return rows


def evaluate_under_noise(
    model_url: str,
    test_x: np.ndarray,
    test_y: np.ndarray,
    setting: noise.NoiseSetting,
    samples: int,
    workers: int,
    seed: int = 0,
) -> list[Any]:
    """Futures of one model's noisy evaluation on ``samples`` test examples, one chunk per worker."""
    return [
        noisy_evaluation.submit(model_url, test_x, setting.label, start, stop, seed, setting.options)
        for start, stop in noise.chunk_bounds(samples, len(test_y), workers)
    ]
