"""The Prefect task of one tuning trial, the executor that sends a batch of trials to the Dask
cluster (thin wrappers around :mod:`lab.tuning`), :func:`search`, the study of one method, and
:func:`tuned`, which then submits its final trainings: what ``qllm run tune`` and a tuned
``compare`` share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from lab import tuning
from lab.methods import Hooks, Method
from lab.results import TrainingResult
from lab.search_space import Dimension

from .train import one_thread_per_task, train_task


# One retry: a lost worker is worth it. A trial whose training raised is not retried: it is the
# trial's outcome ("failed", with its error), recorded in the study and the trials table.
@task(name="trial", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="{trial.name}")
def run_trial(trial: tuning.TrialTask, data: Any, root: str) -> tuning.TrialOutcome:
    """Train one trial on the held-out view, pruned against the finished trials as it goes."""
    one_thread_per_task()
    log = get_run_logger()
    outcome = tuning.run_trial(trial, data, root, Hooks(log=log.info, warn=log.warning))
    log.info("%s: %s, held-out %s %s", trial.name, outcome.state, trial.objective.metric, outcome.value)
    if outcome.error:
        log.warning("%s failed: %s", trial.name, outcome.error)
    return outcome


def on_cluster(data: Any, root: str) -> tuning.Execute:
    """Run a batch of trials as Prefect tasks on the flow's task runner (the Dask cluster)."""

    def execute(trials: list[tuning.TrialTask]) -> list[tuning.TrialOutcome]:
        return [f.result() for f in run_trial.map(trials, unmapped(data), unmapped(root))]

    return execute


@dataclass(frozen=True)
class Tuned:
    """A method tuned and evaluated: the study (``None`` untuned), the parameters the final
    trainings used, and their results (one per seed), scored on the test split."""

    method: str
    study: tuning.TuneOutcome | None
    params: BaseModel
    results: list[TrainingResult]


def search(
    method: Method[Any, Any, Any],
    base: BaseModel,
    data: Any,
    root: str,
    *,
    options: tuning.TuningOptions,
    space: dict[str, Dimension],
    on_trial: Callable[[tuning.TrialOutcome], None] | None = None,
) -> tuple[tuning.TuneOutcome | None, BaseModel]:
    """The study of ``method`` on a hold-out of ``data``'s training split (``options.trials``
    trials on the cluster) over ``space``, and the parameters it chose (``base`` with
    ``trials`` 0): what the final trainings use, whoever runs them (a comparison runs its
    federated rounds in the flow)."""
    if options.trials == 0:
        return None, base
    view = method.split(base, method.tuning_view(data, options.tune_fraction, options.sampler_seed))
    study = tuning.tune(
        method,
        base,
        space,
        data_key=tuning.data_key(view),
        root=root,
        trials=options.trials,
        parallel=options.parallel_trials,
        seed=options.sampler_seed,
        execute=on_cluster(view, root),
        pruning=options.pruning,
        on_trial=on_trial,
    )
    return study, method.for_trial(base, study.best_values)


def tuned(
    method: Method[Any, Any, Any],
    base: BaseModel,
    data: Any,
    root: str,
    *,
    options: tuning.TuningOptions,
    space: dict[str, Dimension],
    seeds: list[int],
    on_trial: Callable[[tuning.TrialOutcome], None] | None = None,
) -> Tuned:
    """Tune ``method`` (:func:`search`), then train its best parameters once per seed on the
    whole split and score them on the test split: the only time the test split is read."""
    study, best = search(method, base, data, root, options=options, space=space, on_trial=on_trial)
    own = method.split(best, data)
    jobs = [job for s in seeds for job in method.jobs(method.seeded(best, s), own)]
    futures = train_task(method.id).map(unmapped(method.id), jobs, unmapped(own), unmapped(root))
    return Tuned(method.id, study, best, [f.result() for f in futures])
