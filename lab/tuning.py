"""Hyper-parameter search with Optuna, the same for every method, and the final evaluation.

A study tunes one method on one data set under one budget:

    view = method.tuning_view(data, fraction, seed)    # a training hold-out stands in for test
    study = open_study(root, key)                      # SQLite under the artifact root: resumable
    ask a batch of trials (TPE) → run each on a worker (:func:`run_trial`, median pruning on its
    held-out score as it trains: the method's :class:`~lab.methods.base.Objective`, accuracy or
    a language model's perplexity) → tell the study → … until ``trials`` have finished
    best values → the method's parameters → retrained per seed on the real split, scored on test

Tuning reads the held-out view only; the test split is touched once, by the final evaluation.
The study lives in ``<artifact root>/tuning/<key>.db`` (or, for an object-store root, in the
user's cache, copied to the root after each batch): a killed or repeated tune resumes where it
stopped, keeps every finished trial, and runs again only the trials that were cut off. The key
hashes the method, its base parameters, the space, the data and the sampler seed, so another
setting is another study.

The workers need no access to the study: each trial gets the finished trials' curves and prunes
against them in a private in-memory study; the flow reports the trial's curve into the real one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from .artifacts import hash_json, join_url, read_bytes
from .corpus import Corpus
from .data import Dataset, tuning_mask
from .methods import METHODS, Hooks, Method
from .methods.base import ACCURACY, Objective
from .params import Options
from .runtime import Runtime
from .search_space import Dimension

STUDY_VERSION = 2  # 2: each method's sampler draws from its own seed (sampler_seed_of)


class TuneError(ValueError):
    """A search space, budget or method tuning cannot use; the message names the value."""


@dataclass(frozen=True)
class Pruning:
    """Optuna's median pruner: after ``startup`` finished trials, a trial whose held-out score
    at its n-th report (past the first ``warmup`` reports) is worse than the median of the finished
    trials' n-th reports stops. Reports are counted, not steps, so one rule fits epochs and steps."""

    startup: int = 3
    warmup: int = 1

    def pruner(self) -> Any:
        import optuna

        return optuna.pruners.MedianPruner(n_startup_trials=self.startup, n_warmup_steps=self.warmup)


class TuningOptions(Options):
    """The tuning budget and its settings, the same for every method tuned under it."""

    trials: int = Field(
        8, ge=0, le=1000, description="trials of the search per method (0: no search, the method's defaults)"
    )
    tune_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of the training examples held out as the trials' test split"
    )
    parallel_trials: int = Field(2, ge=1, le=64, description="trials running at once (one per Dask worker suits)")
    sampler_seed: int = Field(
        0,
        ge=0,
        description="seed of the held-out split and of the TPE samplers (each method draws from its own derived seed)",
    )
    startup_trials: int = Field(3, ge=0, description="median pruning: finished trials before any is pruned")
    warmup_reports: int = Field(1, ge=0, description="median pruning: reports of a trial before it may be pruned")

    @property
    def pruning(self) -> Pruning:
        return Pruning(self.startup_trials, self.warmup_reports)


@dataclass(frozen=True)
class TrialTask:
    """One trial as a worker runs it: the method, its full parameters for this trial, the
    finished trials the pruner compares it with, and what it is scored by."""

    method: str
    number: int
    values: dict[str, Any]
    params: dict[str, Any]
    finished: list[Any] = field(default_factory=list)  # optuna FrozenTrials (COMPLETE)
    pruning: Pruning = Pruning()
    objective: Objective = ACCURACY

    @property
    def name(self) -> str:
        return f"{self.method}-trial-{self.number}"


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial came to: ``complete`` (``value`` is its held-out score), ``pruned`` (at
    its last report) or ``failed`` (``error`` says why); ``curve`` its reports ``(step, value)``."""

    number: int
    values: dict[str, Any]
    state: str
    value: float | None
    curve: list[tuple[int, float]]
    seconds: float
    error: str | None = None


def check_space(method: Method[Any, Any, Any], base: BaseModel, space: Mapping[str, Dimension]) -> None:
    """Refuse, before any trial, a parameter the method does not have or a bound its parameter
    model refuses (naming the value and what is allowed)."""
    if not space:
        raise TuneError(f"{method.id} declares nothing to tune: its search space is empty")
    fields = type(base).model_fields
    for name, dim in space.items():
        if name not in fields:
            raise TuneError(
                f"{name!r} is not a parameter of {method.id}; its search space names {', '.join(method.search_space)}"
            )
        for bound in dim.bounds:
            try:
                method.for_trial(base, {name: bound})
            except ValidationError as exc:
                why = "; ".join(e["msg"] for e in exc.errors())
                raise TuneError(f"{method.id}: search bound {name}={bound!r} is not allowed ({why})") from None


def check_fit(labels: Any, fraction: float, seed: int) -> None:
    """Refuse, before any work, a hold-out the training split cannot give (naming the sizes)."""
    tuning_mask(np.asarray(labels), fraction, seed)


def run_trial(task: TrialTask, data: Any, root: str, hooks: Hooks | None = None) -> TrialOutcome:
    """Train one trial on the held-out view; prune it against the finished trials as it goes.
    A failure is the trial's outcome (its text kept), not the study's end."""
    import optuna

    method = METHODS[task.method]
    curve: list[tuple[int, float]] = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per private study
    metric = task.objective.metric
    shadow = optuna.create_study(direction=task.objective.direction, pruner=task.pruning.pruner())
    shadow.add_trials(task.finished)
    probe = shadow.ask()

    def report(step: int, value: float) -> None:
        probe.report(value, len(curve))  # by report, not step: the pruner's warm-up counts reports
        curve.append((step, value))
        if probe.should_prune():
            raise optuna.TrialPruned(f"held-out {metric} {value:.4f} at step {step} is worse than the median")

    base = hooks or Hooks()
    trial_hooks = Hooks(
        log=base.log,
        warn=base.warn,
        progress=base.progress,
        dask_client=base.dask_client,
        report=report,
        save_models=False,  # a trial's model is never loaded: no merged folder, no ablation
    )
    t0 = time.perf_counter()
    params = method.params.model_validate(task.params)
    (job,) = method.jobs(params, data)
    try:
        result = method.train(job, data, root, trial_hooks)
    except optuna.TrialPruned:
        return TrialOutcome(task.number, task.values, "pruned", curve[-1][1], curve, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a failed trial is recorded with its error, the study goes on
        error = f"{type(exc).__name__}: {exc}"
        return TrialOutcome(task.number, task.values, "failed", None, curve, time.perf_counter() - t0, error)
    value = float(result.metrics[metric])
    return TrialOutcome(task.number, task.values, "complete", value, curve, time.perf_counter() - t0)


# --- the study ------------------------------------------------------------------------------------


def data_key(data: Any) -> str:
    """The content key of a method's data: a data set's or a corpus's hash, an embedded split's key."""
    return data.content_hash if isinstance(data, (Dataset, Corpus)) else str(data.key)


def study_key(method: str, base: BaseModel, space: Mapping[str, Dimension], data_key: str, seed: int) -> str:
    return hash_json(
        {
            "method": method,
            "base": base.model_dump(mode="json"),
            "space": {k: str(v) for k, v in space.items()},
            "data": data_key,
            "seed": seed,
            "v": STUDY_VERSION,
        }
    )


@dataclass
class StudyFile:
    """Where a study's SQLite database lives (``path``) and, for an object-store root, the copy
    kept at the root (``remote``)."""

    path: Path
    remote: str | None

    @classmethod
    def at(cls, root: str, key: str) -> StudyFile:
        runtime = Runtime(artifact_root=root)
        name = f"{key[:32]}.db"
        if runtime.root_is_local:
            return cls(runtime.local_root / "tuning" / name, None)
        local = Path.home() / ".cache" / "qllm-lab" / "tuning" / name
        remote = join_url(root, "tuning", name)
        if not local.exists() and (raw := read_bytes(remote)) is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(raw)
        return cls(local, remote)

    @property
    def url(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.path}"

    def sync(self) -> None:
        """Copy the database to the root (a snapshot taken through a temporary file)."""
        if self.remote is None:
            return
        from .artifacts import atomic_write_bytes

        snapshot = self.path.with_suffix(".snapshot")
        shutil.copyfile(self.path, snapshot)
        atomic_write_bytes(self.remote, snapshot.read_bytes())
        snapshot.unlink()


def sampler_seed_of(method: str, seed: int) -> int:
    """The TPE sampler's seed for ``method``'s study under ``sampler_seed`` ``seed``: one per
    method, so that methods whose spaces share a dimension's name (``adapter_lr``) do not draw
    the same values in the same order, which over a few trials ties them to one random grid."""
    return int(hash_json({"method": method, "sampler_seed": seed})[:8], 16)


def open_study(file: StudyFile, key: str, seed: int, pruning: Pruning, objective: Objective = ACCURACY) -> Any:
    """The study (created, or loaded to resume) with its sampler seeded by ``seed``, optimising
    in ``objective``'s direction; trials a
    killed run left running are marked failed and queued again with the same values, so the
    budget is spent in full."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=key[:32],
        storage=file.url,
        direction=objective.direction,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruning.pruner(),
    )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params)
    return study


@dataclass(frozen=True)
class TuneOutcome:
    """A finished study: the best trial's values and held-out score (``objective``'s metric), and every trial."""

    key: str
    storage: str
    best_values: dict[str, Any]
    best_value: float | None
    trials: list[TrialOutcome]
    resumed: int  # trials finished before this run
    objective: Objective = ACCURACY

    def table(self) -> list[dict[str, Any]]:
        return [
            {"trial": t.number, "state": t.state, "value": t.value, "seconds": t.seconds, **t.values}
            for t in sorted(self.trials, key=lambda t: t.number)
        ]


Execute = Callable[[list[TrialTask]], list[TrialOutcome]]


def tune(
    method: Method[Any, Any, Any],
    base: BaseModel,
    space: Mapping[str, Dimension],
    *,
    data_key: str,
    root: str,
    trials: int,
    parallel: int,
    seed: int,
    execute: Execute,
    pruning: Pruning = Pruning(),
    on_trial: Callable[[TrialOutcome], None] | None = None,
) -> TuneOutcome:
    """Run ``trials`` trials of ``method`` (``parallel`` at a time, through ``execute``), or the
    ones a stopped run of the same study has left; return the best values."""
    from optuna.trial import TrialState

    key = study_key(method.id, base, space, data_key, seed)
    file = StudyFile.at(root, key)
    objective = method.objective(base)
    study = open_study(file, key, sampler_seed_of(method.id, seed), pruning, objective)
    distributions = {name: dim.distribution() for name, dim in space.items()}
    outcomes = [_outcome_of(t) for t in study.get_trials(deepcopy=False) if _counts(t)]
    resumed = len(outcomes)
    while len(outcomes) < trials:
        asked = [study.ask(distributions) for _ in range(min(parallel, trials - len(outcomes)))]
        finished = study.get_trials(deepcopy=True, states=(TrialState.COMPLETE,))
        tasks = [
            TrialTask(
                method.id,
                t.number,
                dict(t.params),
                method.for_trial(base, t.params).model_dump(),
                finished,
                pruning,
                objective,
            )
            for t in asked
        ]
        for trial, outcome in zip(asked, execute(tasks), strict=True):
            for index, (_, value) in enumerate(outcome.curve):
                trial.report(value, index)
            trial.set_user_attr("seconds", outcome.seconds)
            if outcome.state == "complete":
                study.tell(trial, outcome.value)
            elif outcome.state == "pruned":
                study.tell(trial, state=TrialState.PRUNED)
            else:
                trial.set_user_attr("error", outcome.error)
                study.tell(trial, state=TrialState.FAIL)
            outcomes.append(outcome)
            if on_trial:
                on_trial(outcome)
        file.sync()
        if len(outcomes) >= 3 and all(o.state == "failed" for o in outcomes):
            raise RuntimeError(
                f"{method.id}: its first {len(outcomes)} trials all failed, the last with {outcome.error}"
            )
    complete = [t for t in outcomes if t.state == "complete" and t.value is not None]
    best = max(complete, key=lambda t: (objective.sign * (t.value or 0.0), -t.number)) if complete else None
    return TuneOutcome(
        key,
        file.remote or file.url,
        dict(best.values) if best else {},
        best.value if best else None,
        outcomes,
        resumed,
        objective,
    )


def _counts(t: Any) -> bool:
    """A trial that spent budget: finished, pruned, or failed on its own (not cut off by a kill)."""
    name = t.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and "error" in t.user_attrs)


def _outcome_of(t: Any) -> TrialOutcome:
    """A trial read back from the study."""
    state = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(t.state.name, "failed")
    curve = sorted(t.intermediate_values.items())  # (report index, value)
    value = t.value if state == "complete" else (curve[-1][1] if curve and state == "pruned" else None)
    seconds = float(t.user_attrs.get("seconds", 0.0))
    return TrialOutcome(t.number, dict(t.params), state, value, curve, seconds, t.user_attrs.get("error"))
