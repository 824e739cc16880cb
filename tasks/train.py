"""Prefect tasks that train and evaluate: one training of any method, a chunk of short trainings,
the classical baselines of one seed, and chunks of noisy evaluation. Each is a thin wrapper
around :mod:`lab.methods` / :mod:`lab.noise`: retries on the decorator (a chunk retries each of
its trainings itself), one torch thread per task, the run logger and a progress artifact lent to
the training."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from prefect import Task, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from lab import noise, reporting
from lab.methods import METHODS, Hooks
from lab.methods.base import Job
from lab.params.noise import NoiseSetting
from lab.results import FailedTraining, Outcome, Trained, TrainingResult, job_record
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
RETRY_DELAY = 2  # seconds before a failed training is tried again


def progress_artifact(name: str, total: int, every: float = 0.0) -> Progress:
    """A Prefect progress artifact for one training (or chunk), keyed by its name, so the task's
    page and the UI's Artifacts page show how far it is while it runs; returns ``report(done,
    note)``. The artifact is made by the first report (a training reused from the store makes
    none); later reports update it at most every ``every`` seconds, and always on reaching
    ``total``: a chunk of short trainings would otherwise call the API every few milliseconds. A
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
    sent = [0.0]  # when the artifact was last written

    def report(done: int, note: str) -> None:
        percent, description = 100.0 * min(done, total) / total, f"{name}: {note}"
        now = time.monotonic()
        if not made:
            made.append(safe(lambda: create_progress_artifact(percent, key=key, description=description)))
        elif made[0] is not None and (done >= total or now - sent[0] >= every):
            safe(lambda: update_progress_artifact(made[0], percent, description=description))
        else:
            return
        sent[0] = now

    return report


class Released(BaseException):
    """The Dask task running this training was released: the flow that wanted its result has
    stopped (a Prefect cancellation, a crash, a Ctrl-C) and closed its client. A BaseException,
    so neither a chunk's own retries nor Prefect's take it for a failure to try again."""


def released() -> bool:
    """Whether this thread runs a Dask task whose result nobody wants any more. A running task
    cannot be interrupted from outside: without this, a cancelled flow's training went on to its
    last epoch on a shared cluster, holding a worker that other runs were waiting for."""
    from distributed import get_worker
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    try:
        worker = get_worker()
    except ValueError:  # not on a Dask worker
        return False
    task = worker.state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released", "forgotten")


def stop_when_released(progress: Progress) -> Progress:
    """``progress`` that first raises :class:`Released` once this task's Dask result is no longer
    wanted: a training reports progress every epoch or step, so it stops within one."""

    def report(done: int, note: str) -> None:
        if released():
            raise Released("the flow that submitted this training has stopped")
        progress(done, note)

    return report


def _total(job: Job) -> int:
    """What a job's progress counts to: its epochs or steps."""
    for attr in ("epochs", "steps"):
        if hasattr(job, attr):
            return int(getattr(job, attr))
    return 1


@task(name="train", retries=2, retry_delay_seconds=RETRY_DELAY, cache_policy=NO_CACHE, task_run_name="{job.name}")
def train(method: str, job: Job, data: Any, root: str) -> TrainingResult:
    """Train and evaluate one job of ``method`` (a registry id), or read it back if it finished
    before; a progress artifact shows its epochs or steps. Submit it through :func:`train_task`,
    which gives it the method's retries."""
    one_thread_per_task()
    return _train_one(method, job, data, root, progress_artifact(job.name, _total(job)))


def _train_one(method: str, job: Job, data: Any, root: str, progress: Progress) -> TrainingResult:
    """One training in this task, with the run logger, ``progress`` and (``aer``) a Dask client."""
    with dask_client_for(getattr(job, "backend", "exact")) as client:
        if client is not None:
            get_run_logger().info(
                "%s: parameter-shift batches split across %d Dask workers",
                job.name,
                len(client.scheduler_info()["workers"]),
            )
        log = get_run_logger()
        hooks = Hooks(log=log.info, warn=log.warning, progress=stop_when_released(progress), dask_client=client)
        return METHODS[method].train(job, data, root, hooks)


def train_task(method: str) -> Task[..., TrainingResult]:
    """The :func:`train` task with ``method``'s retries (a fine-tune that failed fails alike)."""
    return train.with_options(retries=METHODS[method].retries)


# --- chunks of short trainings --------------------------------------------------------------------

# A task's own cost on this 2-core machine, 2 workers: 0.22 s of wall per task that only takes a
# 1 MB split, 0.56 s with an 8-epoch training's log lines and progress updates (100 tasks, load
# about 7). Chunks of this many seconds of training make that a few percent.
CHUNK_SECONDS = 6.0
TASKS_PER_WORKER = 4  # at least, while the work allows: small last tasks keep the workers balanced


def chunks(costs: Sequence[float | None], workers: int) -> list[list[int]]:
    """Jobs (by index, in order) grouped into tasks by their estimated seconds (``None``:
    unknown), longest task first, so that a long one does not start last. A task takes
    consecutive short jobs while they add up to at most :data:`CHUNK_SECONDS`, or less when the
    whole list would then give fewer than :data:`TASKS_PER_WORKER` tasks per worker; a job as
    long as that, or of unknown cost, is a task of its own."""
    total = sum(c for c in costs if c is not None)
    target = min(CHUNK_SECONDS, total / (TASKS_PER_WORKER * max(1, workers)))
    out: list[list[int]] = []
    current: list[int] = []
    held = 0.0
    for i, cost in enumerate(costs):
        if cost is None or cost >= target:
            out.append([i])
            continue
        if held + cost > target:
            out.append(current)
            current, held = [], 0.0
        current.append(i)
        held += cost
    if current:
        out.append(current)

    def seconds(chunk: list[int]) -> float:
        return sum(math.inf if c is None else c for c in (costs[i] for i in chunk))

    return sorted(out, key=seconds, reverse=True)


@task(name="train-chunk", cache_policy=NO_CACHE, task_run_name="{name}")
def train_chunk(method: str, jobs: list[Any], data: Any, root: str, name: str) -> list[Trained]:
    """Train ``jobs`` of ``method`` one after another in one task, each as :func:`train` would:
    read back if it finished before, tried again up to the method's retries, and, failing still,
    recorded as its own :class:`FailedTraining` while the rest go on. One progress artifact,
    ``name``'s, counts the chunk's epochs or steps; each trained model's figures
    (:func:`lab.reporting.result_figures`) are drawn here, beside the other workers' trainings."""
    one_thread_per_task()
    totals = [_total(job) for job in jobs]
    report = progress_artifact(name, sum(totals), every=2.0)
    ran = False
    out = []
    for k, job in enumerate(jobs):

        def progress(done: int, note: str, offset: int = sum(totals[:k]), job: Any = job) -> None:
            nonlocal ran
            ran = True
            report(offset + done, f"{job.name}: {note}")

        outcome = _with_retries(method, job, data, root, progress)
        figures = {}
        if isinstance(outcome, TrainingResult) and outcome.model_url is not None:
            figures = reporting.result_figures(outcome, data.test_y, data.label_names)
        out.append(Trained(outcome, figures))
    if ran:  # the last jobs may have been reused, which report nothing
        fresh = sum(not t.outcome.cached for t in out)
        report(sum(totals), f"done: {fresh} trained, {len(out) - fresh} reused")
    return out


def _with_retries(method: str, job: Any, data: Any, root: str, progress: Progress) -> Outcome:
    """One training, tried again after :data:`RETRY_DELAY` up to the method's retries, as Prefect
    retries a :func:`train` task; then its last error as the job's :class:`FailedTraining`."""
    log = get_run_logger()
    retries = METHODS[method].retries
    for attempt in range(retries + 1):
        try:
            return _train_one(method, job, data, root, progress)
        except Exception as exc:  # noqa: BLE001 - any error fails this training only
            message = f"{type(exc).__name__}: {exc}"
            if attempt == retries:
                log.error("%s failed: %s", job.name, message)
                return FailedTraining(method, job.name, job.seed, job_record(job), message)
            log.warning(
                "%s failed (attempt %d of %d), retrying in %d s: %s",
                job.name,
                attempt + 1,
                retries + 1,
                RETRY_DELAY,
                message,
            )
            time.sleep(RETRY_DELAY)
    raise AssertionError("unreachable")


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
    result: TrainingResult, data: Any, settings: list[NoiseSetting], samples: int
) -> list[dict[str, Any]]:
    """A stored fine-tune's accuracy with ΔW generated by its circuits under each noise setting."""
    from lab.methods import peft  # only a fine-tune's flow loads peft and transformers

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
    setting: NoiseSetting,
    samples: int,
    workers: int,
    seed: int = 0,
) -> list[Any]:
    """Futures of one model's noisy evaluation on ``samples`` test examples, one chunk per worker."""
    return [
        noisy_evaluation.submit(model_url, test_x, setting.label, start, stop, seed, setting.options)
        for start, stop in noise.chunk_bounds(samples, len(test_y), workers)
    ]
