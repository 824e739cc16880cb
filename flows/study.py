"""Studies: a grid of configurations × seeds of one method, fanned out over the Dask cluster.

    qllm run study --method head --grid "qubits=4,6,8,10,12" --seeds 5 --fixed "per_label=64;epochs=20"

Every grid axis is a parameter of the method's flow (``HeadParams``, ``DistillParams``) and is
validated by it (:mod:`lab.params.study`), so adding an axis is a command-line change, not code;
the methods come from the registry (:mod:`lab.methods`), so a new feature method is a new entry
of :data:`STUDY_METHODS` (and its parameters one of :data:`lab.params.study.STUDY_PARAMS`).
Trainings are Prefect tasks, short ones grouped several to a task by their estimated cost so
that orchestration does not outweigh them (:func:`trained_points`); each is cached by content,
so a re-run trains only what did not finish. The points that share data (same data set, split
and encoder) share one preparation. The result is one MLflow parent run with a child per point
(and a grandchild per seed holding the model), logged as the point finishes, a table, and a
plot of the metric against the first axis with mean ± std bars and the classical baselines as
lines.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
from mlflow import ActiveRun
from mlflow.tracking import MlflowClient
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from lab import reporting, tracking
from lab.embedded import EmbeddedSplit
from lab.methods import METHODS, FeatureMethod
from lab.params.study import StudyParams
from lab.results import Outcome, Trained, TrainingResult
from lab.runtime import Runtime
from tasks.prepare import embedded_split
from tasks.train import baselines, chunks, train_chunk

from .runner import (
    CRASH_HOOKS,
    check_dask_address,
    chunk_results_or_failures,
    dask_runner,
    flow_run_tags,
    mlflow_hint,
    run_from_cli,
)

STUDY_METHODS = {"head": "pqc-head", "distill": "qdllm"}  # the --method value → registry id


def study_method(name: str) -> FeatureMethod[Any, Any]:
    method = METHODS[STUDY_METHODS[name]]
    assert isinstance(method, FeatureMethod), name
    return method


@flow(
    name="study",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def study(params: StudyParams = StudyParams()) -> dict[str, Any]:
    """Train every point × seed of the grid on the Dask cluster; summarise, plot and track them."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    root = runtime.artifact_root
    name = tracking.run_name("study", params.method, _data_set(params), **params.grid, seeds=params.seeds)
    tags = {"flow": "study", "method": params.method, **flow_run_tags()}
    with tracking.parent_run(
        runtime, params.experiment, name, params.model_dump(), tags, system_metrics=True
    ) as parent:
        method = study_method(params.method)
        points, point_params = params.points(), params.point_params()
        seeds = list(range(params.seeds))

        groups = data_groups(method, point_params)
        data_of: dict[int, EmbeddedSplit] = {}
        records: dict[str, tracking.DataRecord] = {}
        baseline_futures: dict[str, list[Any]] = {}
        for key, members in groups.items():
            data, split = embedded_split(method, point_params[members[0]], root)
            records[key] = tracking.data_record(data)
            baseline_futures[key] = baselines.map(
                unmapped(method.id), unmapped(point_params[members[0]]), unmapped(split), seeds
            )
            for i in members:
                data_of[i] = split
        record_of = {i: records[key] for key, members in groups.items() for i in members}

        # Each point is logged as soon as its trainings are back, while the others still train.
        trained: list[list[Outcome]] = [[] for _ in points]
        table: list[dict[str, Any]] = [{} for _ in points]
        for i, rows, figures in trained_points(method, groups, point_params, data_of, root, runtime.dask_workers):
            trained[i], table[i] = rows, _point_row(points[i], rows, params.metric)
            _log_point(parent, method, points[i], rows, figures, table[i], data_of[i], record_of[i])
        baseline_rows = {key: [r for f in fs for r in f.result()] for key, fs in baseline_futures.items()}

        lines = _baseline_lines(params, groups, baseline_rows, points)
        fig = reporting.sweep_plot(
            _plot_points(params, table),
            next(iter(params.grid)),
            params.metric,
            lines,
            f"{params.method} study: {params.metric} (mean ± std over {params.seeds} seeds)",
        )
        md = _markdown(params, table, lines)
        _log_summary(parent, baseline_rows, records, table, fig)
        run_id = parent.info.run_id
    create_table_artifact(key="study-results", table=table, description=f"{params.method} study")
    create_markdown_artifact(
        key="study-report",
        markdown=f"{tracking.run_markdown(runtime, parent)}\n\n{md}\n\n"
        + reporting.figure_markdown(fig, "metric against the grid axis"),
    )
    reporting.close(fig)
    cached = sum(r.cached for rows in trained for r in rows)
    return {
        "table": table,
        "baselines": lines,
        "markdown": md,
        "mlflow_run_id": run_id,
        "trainings": sum(len(rows) for rows in trained),
        "cached": cached,
        "failed": sum(r.status == "failed" for rows in trained for r in rows),
    }


def trained_points(
    method: FeatureMethod[Any, Any],
    groups: dict[str, list[int]],
    point_params: list[BaseModel],
    data_of: dict[int, EmbeddedSplit],
    root: str,
    workers: int,
) -> Iterator[tuple[int, list[Outcome], list[dict[str, bytes]]]]:
    """Each point's index, trainings (in its jobs' order) and trained models' figures, as soon
    as all its trainings are back.

    A data group's jobs are cut into tasks by their estimated cost (:func:`tasks.train.chunks`):
    short trainings share a task, which pays its orchestration once for all of them, long ones
    keep a task each. The tasks are awaited in the order they were submitted, longest first."""
    jobs_of = [method.jobs(p, data_of[i]) for i, p in enumerate(point_params)]
    submitted = []
    for members in groups.values():
        data = data_of[members[0]]
        keys = [(i, k) for i in members for k in range(len(jobs_of[i]))]
        for chunk in chunks([method.cost(jobs_of[i][k], data) for i, k in keys], workers):
            part = [keys[c] for c in chunk]
            jobs = [jobs_of[i][k] for i, k in part]
            name = jobs[0].name if len(jobs) == 1 else f"{jobs[0].name} … {jobs[-1].name}"
            submitted.append((part, jobs, train_chunk.submit(method.id, jobs, data, root, name)))
    done: dict[tuple[int, int], Trained] = {}
    for part, jobs, future in submitted:
        done.update(zip(part, chunk_results_or_failures(future, jobs, method.id), strict=True))
        for i in sorted({i for i, _ in part}):
            if all((i, k) in done for k in range(len(jobs_of[i]))):
                seeds = [done.pop((i, k)) for k in range(len(jobs_of[i]))]
                yield i, [t.outcome for t in seeds], [t.figures for t in seeds]


def data_groups(method: FeatureMethod[Any, Any], point_params: list[BaseModel]) -> dict[str, list[int]]:
    """Point indices by the parameters that shape their data: each group shares one preparation."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(point_params):
        groups[json.dumps({f: getattr(p, f) for f in method.data_fields}, sort_keys=True)].append(i)
    return groups


def _data_set(params: StudyParams) -> str:
    """The data set a study's run name shows: its grid axis, else its fixed value or the
    method's default."""
    if "dataset" in params.grid:
        return ""  # the axis itself names them
    model = study_method(params.method).params
    return str(params.fixed.get("dataset", model.model_fields["dataset"].default))


def _point_row(point: dict[str, Any], rows: list[Outcome], metric: str) -> dict[str, Any]:
    ok = [r for r in rows if isinstance(r, TrainingResult)]
    row: dict[str, Any] = {
        **point,
        "status": "ok" if len(ok) == len(rows) else ("failed" if not ok else "partial"),
        "seeds_ok": len(ok),
        "seeds_failed": len(rows) - len(ok),
    }
    for m in dict.fromkeys((metric, "accuracy", "train_seconds")):
        vals = [r.metrics[m] for r in ok if m in r.metrics]
        if vals:
            row[m], row[f"{m}_std"] = float(np.mean(vals)), float(np.std(vals))
    if ok:
        row["params_total"] = ok[0].params["total"]
        row["params_circuit"] = ok[0].params["circuit"]
    if failed := [r.error for r in rows if not isinstance(r, TrainingResult)]:
        row["error"] = failed[0][:300]
    return row


def _plot_points(params: StudyParams, table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """x = the first axis; one series per combination of the other axes."""
    x, *others = list(params.grid)
    return [
        {
            "axis": _number(r[x]),
            "series": ", ".join(f"{o}={r[o]}" for o in others),
            "mean": r[params.metric],
            "std": r[f"{params.metric}_std"],
        }
        for r in table
        if params.metric in r
    ]


def _number(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def _baseline_lines(
    params: StudyParams,
    groups: dict[str, list[int]],
    baselines: dict[str, list[TrainingResult]],
    points: list[dict[str, Any]],
) -> dict[str, tuple[float, float]]:
    """Classical baselines as (mean, std) of the metric over seeds; with several data groups
    (a data axis), one entry per kind and group."""
    lines = {}
    for key, members in groups.items():
        suffix = "" if len(groups) == 1 else " @ " + ", ".join(f"{k}={v}" for k, v in points[members[0]].items())
        by_kind: dict[str, list[float]] = defaultdict(list)
        for r in baselines[key]:
            if params.metric in r.metrics:
                by_kind[r.kind].append(r.metrics[params.metric])
        for kind, vals in by_kind.items():
            lines[kind + suffix] = (float(np.mean(vals)), float(np.std(vals)))
    return lines


def _markdown(params: StudyParams, table: list[dict[str, Any]], lines: dict[str, tuple[float, float]]) -> str:
    axes = list(params.grid)
    m = params.metric
    head = "| " + " | ".join(axes) + f" | {m} | seeds ok | failed | params (circuit) | train s |"
    out = [head, "|" + "---|" * (len(axes) + 5)]
    for r in table:
        value = f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if m in r else "–"
        size = f"{r['params_total']:,} ({r['params_circuit']})" if "params_total" in r else "–"
        secs = f"{r['train_seconds']:.1f}" if "train_seconds" in r else "–"
        out.append(
            "| "
            + " | ".join(str(r[a]) for a in axes)
            + f" | {value} | {r['seeds_ok']} | {r['seeds_failed']} | {size} | {secs} |"
        )
    out += ["", f"| classical baseline | {m} |", "|---|---|"]
    out += [f"| {k} | {mean:.4f} ± {std:.4f} |" for k, (mean, std) in lines.items()]
    return "\n".join(out)


def _log_point(
    parent: ActiveRun,
    method: FeatureMethod[Any, Any],
    point: dict[str, Any],
    rows: list[Outcome],
    figures: list[dict[str, bytes]],
    row: dict[str, Any],
    data: EmbeddedSplit,
    record: tracking.DataRecord,
) -> None:
    """A point's child run (its metrics over seeds, FAILED if no seed finished; no ``*_std``
    with one seed) with a grandchild per seed holding its model and the figures its worker drew."""
    name = "point " + ", ".join(f"{k}={v}" for k, v in point.items())
    numbers = tracking.without_spread(row, row["seeds_ok"])
    point_id = tracking.log_child(
        parent,
        name,
        kind="study point",
        data=record,
        params=point,
        metrics={k: v for k, v in numbers.items() if isinstance(v, float)},
        status="FAILED" if row["status"] == "failed" else "FINISHED",
        tags={"status": row["status"], **({"error": row["error"]} if "error" in row else {})},
    )
    point_run = tracking.with_retries(lambda: MlflowClient().get_run(point_id), what="get run")
    tracking.log_result_rows(
        point_run, rows, data.test_y, data.label_names, data=record, model_tag=method.model_tag, figures=figures
    )


def _log_summary(
    parent: ActiveRun,
    baselines: dict[str, list[TrainingResult]],
    records: dict[str, tracking.DataRecord],
    table: list[dict[str, Any]],
    fig: Any,
) -> None:
    """A child per classical baseline (on its data group's data); the table and plot on the parent."""
    for key, baseline_rows in baselines.items():
        tracking.log_result_rows(parent, baseline_rows, None, (), data=records[key], model_tag="")
    tracking.log_table(parent, table, "study.json")
    tracking.with_retries(lambda: tracking.mlflow.log_figure(fig, "study.png"), what="log figure")


def run_study(params: StudyParams) -> dict[str, Any]:
    """Run a study from the command line: every point was validated when ``params`` was built;
    each data group is read and split here, before any server starts."""
    method = study_method(params.method)
    point_params = params.point_params()
    for members in data_groups(method, point_params).values():
        method.check(point_params[members[0]])
    result = run_from_cli(study, params)
    print(result["markdown"])
    print(
        mlflow_hint(
            result["mlflow_run_id"],
            before=f"{result['trainings']} trainings ({result['cached']} reused "
            f"from earlier runs, {result['failed']} failed). ",
        )
    )
    return result
