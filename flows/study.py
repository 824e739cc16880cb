"""Studies: a grid of configurations × seeds of one method, fanned out over the Dask cluster.

    qllm run study --method head --grid "qubits=4,6,8,10,12" --seeds 5 --fixed "per_label=64;epochs=20"

Every grid axis is a parameter of the method's flow (``HeadParams``, ``DistillParams``) and is
validated by it, so adding an axis is a command-line change, not code. Each training is one
Prefect task (cached by content, so a re-run trains only the points that did not finish); the
points that share data (same data set, split and encoder) share one preparation. The result is
one MLflow parent run with a child per point (and a grandchild per seed holding the model), a
table, and a plot of the metric against the first axis with mean ± std bars and the classical
baselines as lines.
"""

from __future__ import annotations

import itertools
import json
import typing
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
from mlflow import ActiveRun
from mlflow.tracking import MlflowClient
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks import reporting, tracking
from tasks.heads import train_head
from tasks.settings import Settings
from tasks.train import train_student

from .distill import DistillParams, prepare_distill_data, submit_baselines
from .head import HeadParams, prepare_head_data, submit_classical_heads
from .runner import check_dask_address, dask_runner, mlflow_hint, results_or_failures, run_from_cli


@dataclass(frozen=True)
class StudyMethod:
    """What a study needs from a method: its parameters, which of them shape the data (points
    that agree on those share one preparation), which cannot be axes, and its tasks."""

    params: type[BaseModel]
    data_fields: tuple[str, ...]
    not_axes: tuple[str, ...]
    prepare: Callable[[Any, str], Any]  # (params, artifact root) -> what the trainings read
    train: Any  # the Prefect task training one job
    baselines: Callable[[Any, Any, list[int]], list[Any]]  # (params, data, seeds) -> futures


_RUN_SETTINGS = ("seeds", "experiment", "dask_address")
METHODS: dict[str, StudyMethod] = {
    "head": StudyMethod(
        HeadParams,
        ("dataset", "text_column", "label_column", "per_label", "val_fraction", "test_size", "split_seed",
         "encoder"),
        _RUN_SETTINGS + ("encoder_batch_size", "shard_size", "noise_shots", "noise_depolarizing",
                         "noise_devices", "device_shots", "noise_samples", "noise_finetune_steps"),
        prepare_head_data, train_head, submit_classical_heads),
    "distill": StudyMethod(
        DistillParams,
        ("dataset", "text_column", "label_column", "train_size", "test_size", "split_seed", "teacher",
         "teacher_model"),
        _RUN_SETTINGS + ("teacher_batch_size", "teacher_shard_size", "eval_shots", "eval_noise",
                         "eval_samples", "noise_samples"),
        lambda params, root: prepare_distill_data(params, root)[1], train_student, submit_baselines),
}
METRICS = ("accuracy", "macro_f1", "train_seconds")


def parse_assignments(text: str, what: str) -> dict[str, list[str]]:
    """``"a=1,2;b=3"`` (``;`` or spaces between axes) → ``{"a": ["1", "2"], "b": ["3"]}``."""
    out: dict[str, list[str]] = {}
    for part in text.replace(";", " ").split():
        name, sep, values = part.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"{what} entry {part!r} is not name=value[,value...]")
        out[name.strip().replace("-", "_")] = [v for v in values.split(",") if v]
    return out


class StudyParams(BaseModel):
    """Parameters of the study flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["head", "distill"] = Field("head", description="the method whose flow parameters the grid sweeps")
    grid: dict[str, list[Any]] = Field({"qubits": [4, 6, 8, 10, 12]},
                                       description='axes and values, e.g. "qubits=4,6,8;layers=1,2": every '
                                                   "combination is one point; the first axis is the plot's x axis")
    seeds: int = Field(5, ge=1, le=100, description="seeds per point (0 … seeds-1)")
    fixed: dict[str, Any] = Field({}, description='other method parameters, the same for every point, '
                                                  'e.g. "per_label=64;epochs=20"')
    metric: Literal[METRICS] = Field("accuracy", description="the metric plotted against the grid axis")  # type: ignore[valid-type]
    experiment: str = Field("qllm-study", min_length=1, description="MLflow experiment name")
    dask_address: str | None = Field(None, description="Dask scheduler address (default: a temporary LocalCluster)")

    @field_validator("grid", mode="before")
    @classmethod
    def _parse_grid(cls, v: Any) -> Any:
        return parse_assignments(v, "grid") if isinstance(v, str) else v

    @field_validator("fixed", mode="before")
    @classmethod
    def _parse_fixed(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return {k: vals if len(vals) > 1 else vals[0] for k, vals in parse_assignments(v, "fixed").items()}

    @model_validator(mode="after")
    def _points_valid(self) -> "StudyParams":
        """Every axis is a parameter of the method and every point validates: refused up front."""
        method = METHODS[self.method]
        fields = method.params.model_fields
        allowed = sorted(set(fields) - set(method.not_axes))
        if not self.grid:
            raise ValueError("the grid is empty; give at least one axis, e.g. qubits=4,6,8")
        for name in list(self.grid) + list(self.fixed):
            if name not in allowed:
                raise ValueError(f"{name!r} is not a parameter a {self.method} study can set; allowed: "
                                 f"{', '.join(allowed)}")
        if overlap := set(self.grid) & set(self.fixed):
            raise ValueError(f"{sorted(overlap)} given both as grid axes and as fixed")
        for name, values in self.grid.items():
            if not values:
                raise ValueError(f"grid axis {name!r} has no values")
        self.point_params()  # raises, naming the field and value, if any point is invalid
        return self

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the axes' values, in grid order."""
        names = list(self.grid)
        return [dict(zip(names, combo)) for combo in itertools.product(*self.grid.values())]

    def point_params(self) -> list[BaseModel]:
        """The method's parameters at each point (seeds 0 … seeds-1; list fields get one value)."""
        model = METHODS[self.method].params
        out = []
        for point in self.points():
            values = {**self.fixed, **point}
            values = {k: _as_field_value(model, k, v) for k, v in values.items()}
            try:
                out.append(model.model_validate({**values, "seeds": list(range(self.seeds))}))
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'point'}: {e['msg']} (got {e.get('input')!r})"
                                     for e in err.errors())
                raise ValueError(f"point {point}: {problems}") from None
        return out


def _as_field_value(model: type[BaseModel], name: str, value: Any) -> Any:
    """A grid value for a field: one-element lists for the list-typed fields that sweep in the
    method's own flow (e.g. distill's ``qubits``), ``None`` from the text ``none``."""
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    annotation = model.model_fields[name].annotation
    is_list = typing.get_origin(annotation) is list
    if is_list and isinstance(value, str):
        return [v for v in value.split(",") if v]
    if is_list and not isinstance(value, list):
        return [value]
    return value


@flow(name="study", task_runner=dask_runner(), log_prints=True)
def study(params: StudyParams = StudyParams()) -> dict[str, Any]:
    """Train every point × seed of the grid on the Dask cluster; summarise, plot and track them."""
    check_dask_address(params.dask_address)
    settings = Settings()
    root = settings.artifact_root
    with tracking.parent_run(settings, params.experiment, f"study-{params.method}", params.model_dump(),
                             tags={"flow": "study", "method": params.method}, system_metrics=True) as parent:
        method = METHODS[params.method]
        points, point_params = params.points(), params.point_params()
        seeds = list(range(params.seeds))

        groups: dict[str, list[int]] = defaultdict(list)  # data key → point indices
        for i, p in enumerate(point_params):
            groups[json.dumps({f: getattr(p, f) for f in method.data_fields}, sort_keys=True)].append(i)
        data_of: dict[int, Any] = {}
        baseline_futures: dict[str, list[Any]] = {}
        for key, members in groups.items():
            data = method.prepare(point_params[members[0]], root)
            baseline_futures[key] = method.baselines(point_params[members[0]], data, seeds)
            for i in members:
                data_of[i] = data

        submitted = []
        for i, p in enumerate(point_params):
            jobs = p.jobs()
            submitted.append((jobs, method.train.map(jobs, unmapped(data_of[i]), unmapped(root))))
        trained = [results_or_failures(futures, [j.name for j in jobs], jobs) for jobs, futures in submitted]
        baselines = {key: [r for f in fs for r in f.result()] for key, fs in baseline_futures.items()}

        table = [_point_row(point, rows, params.metric) for point, rows in zip(points, trained)]
        lines = _baseline_lines(params, groups, baselines, points)
        fig = reporting.sweep_plot(_plot_points(params, table), next(iter(params.grid)), params.metric, lines,
                                   f"{params.method} study: {params.metric} (mean ± std over {params.seeds} seeds)")
        md = _markdown(params, table, lines) + "\n\n" + reporting.figure_markdown(fig, "metric against the grid axis")
        _log_mlflow(parent, params, points, trained, baselines, table, fig, data_of)
        run_id = parent.info.run_id
    reporting.close(fig)
    create_table_artifact(key="study-results", table=table, description=f"{params.method} study")
    create_markdown_artifact(key="study-report", markdown=md)
    cached = sum(r.get("cached", False) for rows in trained for r in rows)
    return {"table": table, "baselines": lines, "markdown": md, "mlflow_run_id": run_id,
            "trainings": sum(len(rows) for rows in trained), "cached": cached,
            "failed": sum(r["status"] == "failed" for rows in trained for r in rows)}


def _point_row(point: dict[str, Any], rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    row: dict[str, Any] = {**point, "status": "ok" if len(ok) == len(rows) else ("failed" if not ok else "partial"),
                           "seeds_ok": len(ok), "seeds_failed": len(rows) - len(ok)}
    for m in dict.fromkeys((metric, "accuracy", "train_seconds")):
        vals = [r["metrics"][m] for r in ok if m in r["metrics"]]
        if vals:
            row[m], row[f"{m}_std"] = float(np.mean(vals)), float(np.std(vals))
    if ok:
        row["params_total"] = ok[0]["params"]["total"]
        row["params_circuit"] = ok[0]["params"]["circuit"]
    if failed := [r["error"] for r in rows if r["status"] == "failed"]:
        row["error"] = failed[0][:300]
    return row


def _plot_points(params: StudyParams, table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """x = the first axis; one series per combination of the other axes."""
    x, *others = list(params.grid)
    return [{"axis": _number(r[x]), "series": ", ".join(f"{o}={r[o]}" for o in others),
             "mean": r[params.metric], "std": r[f"{params.metric}_std"]}
            for r in table if params.metric in r]


def _number(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def _baseline_lines(params: StudyParams, groups: dict[str, list[int]], baselines: dict[str, list[dict[str, Any]]],
                    points: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Classical baselines as (mean, std) of the metric over seeds; with several data groups
    (a data axis), one entry per kind and group."""
    lines = {}
    for key, members in groups.items():
        suffix = "" if len(groups) == 1 else " @ " + ", ".join(f"{k}={v}" for k, v in points[members[0]].items())
        by_kind: dict[str, list[float]] = defaultdict(list)
        for r in baselines[key]:
            if params.metric in r["metrics"]:
                by_kind[r["kind"]].append(r["metrics"][params.metric])
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
        out.append("| " + " | ".join(str(r[a]) for a in axes) +
                   f" | {value} | {r['seeds_ok']} | {r['seeds_failed']} | {size} | {secs} |")
    out += ["", f"| classical baseline | {m} |", "|---|---|"]
    out += [f"| {k} | {mean:.4f} ± {std:.4f} |" for k, (mean, std) in lines.items()]
    return "\n".join(out)


def _log_mlflow(parent: ActiveRun, params: StudyParams, points: list[dict[str, Any]],
                trained: list[list[dict[str, Any]]], baselines: dict[str, list[dict[str, Any]]],
                table: list[dict[str, Any]], fig: Any, data_of: dict[int, Any]) -> None:
    """A child per point (metrics over seeds, FAILED if no seed finished) with a grandchild per
    seed holding its model; a child per classical baseline; the table and plot on the parent."""
    client = MlflowClient()
    for i, (point, rows, row) in enumerate(zip(points, trained, table)):
        metrics = {k: v for k, v in row.items() if isinstance(v, float)}
        name = "point " + ", ".join(f"{k}={v}" for k, v in point.items())
        point_id = tracking.log_child(parent, name, params=point, metrics=metrics,
                                      status="FAILED" if row["status"] == "failed" else "FINISHED",
                                      tags={"kind": "study point", "status": row["status"],
                                            **({"error": row["error"]} if "error" in row else {})})
        data = data_of[i]
        tracking.log_result_rows(client.get_run(point_id), rows, data.test_y, data.label_names,
                                 model_tag="pqc_head" if params.method == "head" else "qdllm")
    for rows in baselines.values():
        tracking.log_result_rows(parent, rows, None, (), model_tag="")
    tracking.log_table(parent, table, "study.json")
    tracking.with_retries(lambda: tracking.mlflow.log_figure(fig, "study.png"), what="log figure")


def run_study(params: StudyParams) -> dict[str, Any]:
    """Run a study from the command line: every point was validated when ``params`` was built;
    each data group is read and split here, before any server starts."""
    method = METHODS[params.method]
    seen = set()
    for p in params.point_params():
        key = json.dumps({f: getattr(p, f) for f in method.data_fields}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            p.check_data()
    result = run_from_cli(study, params)
    print(result["markdown"].split("\n\n![")[0])
    print(mlflow_hint(result["mlflow_run_id"], before=f"{result['trainings']} trainings ({result['cached']} reused "
                      f"from earlier runs, {result['failed']} failed). "))
    return result
