"""The compare flow's leaderboard: per-seed results of every method pooled into one row per
method (accuracy mean ± std, trainable parameters, training seconds), as a table, Markdown, MLflow
child runs and the accuracy-against-cost plot."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
from matplotlib.figure import Figure

from . import statistics as stats
from . import tracking
from .results import TrainingResult


def trained_row(result: TrainingResult) -> dict[str, Any]:
    """One method's result for one seed, in the form every method is reduced to."""
    return {
        "method": result.method,
        "seed": result.seed,
        "accuracy": result.accuracy,
        "trainable_params": result.trainable_params,
        "train_seconds": result.train_seconds,
        "cached": result.cached,
    }


def leaderboard(rows: Sequence[dict[str, Any]], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per method, best mean accuracy first. A method's parameter count must not depend
    on the seed; if it does, the method is counted wrongly and this refuses to report it."""
    table = []
    for method, label in labels.items():
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        sizes = {r["trainable_params"] for r in rs}
        if len(sizes) != 1:
            raise ValueError(f"{method}: trainable parameters differ between seeds: {sorted(sizes)}")
        acc, secs = np.array([r["accuracy"] for r in rs]), np.array([r["train_seconds"] for r in rs])
        table.append(
            {
                "method": method,
                "label": label,
                "seeds": len(rs),
                "accuracy": float(acc.mean()),
                "accuracy_std": float(acc.std()),
                "trainable_params": sizes.pop(),
                "train_seconds": float(secs.mean()),
                "train_seconds_std": float(secs.std()),
                "cached": sum(r["cached"] for r in rs),
            }
        )
    return sorted(table, key=lambda r: -r["accuracy"])


def markdown(table: Sequence[dict[str, Any]]) -> str:
    """The leaderboard for the terminal, the Prefect artifact and the README."""
    lines = ["| method | seeds | accuracy | trainable params | train seconds |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['label']} | {r['seeds']} | {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} | "
        f"{r['trainable_params']:,} | {r['train_seconds']:.3g} ± {r['train_seconds_std']:.2g} |"
        for r in table
    ]
    return "\n".join(lines)


def log_leaderboard(
    parent: mlflow.ActiveRun,
    data: tracking.DataRecord,
    table: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    figure: Figure,
    intervals: Sequence[dict[str, Any]],
) -> None:
    """A child run per method (pooled metrics and its interval row; per-seed accuracy and seconds
    at step = seed's position; no ``*_std`` of one seed), the tables and the plot on the parent,
    and ``<split>/<metric>/<method>`` parent metrics."""
    of = {r["method"]: r for r in intervals}
    pooled = ("accuracy", "accuracy_std", "trainable_params", "train_seconds", "train_seconds_std", "seeds")
    for r in table:
        rs = [x for x in rows if x["method"] == r["method"]]
        numbers = {k: v for k, v in of[r["method"]].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracking.log_child(
            parent,
            r["label"],
            kind="method",
            data=data,
            params={"method": r["method"], "seeds": [x["seed"] for x in rs]},
            metrics=tracking.without_spread({**numbers, **{k: r[k] for k in pooled}}, r["seeds"]),
            history={  # step = the seed's position in the row's seeds
                "test/seed_accuracy": [x["accuracy"] for x in rs],
                "train/seed_seconds": [x["train_seconds"] for x in rs],
            },
            tags={"method": r["method"]},
        )
    tracking.log_table(parent, list(table), "leaderboard.json")
    tracking.log_table(parent, list(intervals), "intervals.json")
    tracking.log_table(parent, list(rows), "seeds.json")
    summary = {
        tracking.summary_name(k, r["method"]): float(v)
        for r in table
        for k, v in tracking.without_spread(r, r["seeds"]).items()
        if k in ("accuracy", "accuracy_std", "trainable_params", "train_seconds")
    }
    tracking.with_retries(lambda: mlflow.log_metrics(summary), what="log metrics")
    tracking.with_retries(lambda: mlflow.log_figure(figure, "leaderboard.png"), what="log figure")


# --- tuned rows: intervals, the majority class, a paired test against a classical model ----------


@dataclass(frozen=True)
class Group:
    """One leaderboard row's trainings: a method's results, one per seed, and the values its
    tuning chose (empty when it was not tuned)."""

    method: str
    results: list[TrainingResult]
    best: dict[str, Any] = field(default_factory=dict)


SIZE_FACTOR = 4  # "comparable size": within this factor of the method's trainable parameters


def tuned_rows(
    groups: Sequence[Group],
    labels: Mapping[str, str],
    test_y: Any,
    classical: Collection[str] = (),
) -> list[dict[str, Any]]:
    """One row per method from its per-seed results, best mean first: the mean accuracy with a
    95 % bootstrap interval over seeds and test examples, whether that interval reaches the
    majority-class rate, and, for a method that is not in ``classical``, a paired bootstrap
    against the best classical row of comparable size (within :data:`SIZE_FACTOR`; else the
    closest in size)."""
    y = np.asarray(test_y)
    majority = stats.majority_rate(y)
    rows: dict[str, dict[str, Any]] = {}
    for g in groups:
        predictions = [r.test_predictions for r in g.results if r.test_predictions is not None]
        scored = predictions if len(predictions) == len(g.results) else None  # per example, every seed
        interval = (
            stats.accuracy_interval(scored, y) if scored else stats.seed_interval([r.accuracy for r in g.results])
        )
        sizes = {r.trainable_params for r in g.results}
        if len(sizes) != 1:
            raise ValueError(f"{g.method}: trainable parameters differ between seeds: {sorted(sizes)}")
        rows[g.method] = {
            "method": g.method,
            "label": labels.get(g.method, g.method),
            "seeds": len(g.results),
            "accuracy": interval.mean,
            "accuracy_low": interval.low,
            "accuracy_high": interval.high,
            "majority": majority,
            "vs_majority": "indistinguishable"
            if interval.contains(majority)
            else ("below" if interval.high < majority else "above"),
            "trainable_params": sizes.pop(),
            "train_seconds": float(np.mean([r.train_seconds for r in g.results])),
            "predictions": scored,
        }
        ablated = [r.ablated_predictions for r in g.results if r.ablated_predictions is not None]
        if scored and len(ablated) == len(scored):  # what the circuit adds: accuracy lost at its mean
            lost = stats.paired_difference(scored, ablated, y).difference
            rows[g.method].update(contribution=lost.mean, contribution_low=lost.low, contribution_high=lost.high)
    for row in rows.values():
        rival = comparable(row, [r for m, r in rows.items() if m in classical and m != row["method"]])
        if row["method"] in classical or rival is None or row["predictions"] is None:
            continue
        test = stats.paired_difference(row["predictions"], rival["predictions"], y)
        row.update(
            vs=rival["label"],
            difference=test.difference.mean,
            difference_low=test.difference.low,
            difference_high=test.difference.high,
            p_value=test.p_value,
        )
    for row in rows.values():
        del row["predictions"]
    return sorted(rows.values(), key=lambda r: -r["accuracy"])


def comparable(row: dict[str, Any], classical: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best classical row within :data:`SIZE_FACTOR` of ``row``'s size, else the closest."""
    scored = [c for c in classical if c["predictions"] is not None]
    if not scored:
        return None
    near = [c for c in scored if 1 / SIZE_FACTOR <= c["trainable_params"] / row["trainable_params"] <= SIZE_FACTOR]
    if near:
        return max(near, key=lambda c: c["accuracy"])
    return min(scored, key=lambda c: abs(np.log(c["trainable_params"] / row["trainable_params"])))


def tuned_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The tuned leaderboard: accuracy with its interval, size, time, the paired test."""
    lines = [
        "| method | seeds | accuracy [95 % CI] | trainable params | train s "
        "| circuit (stand-in) contribution [95 % CI] | vs classical (comparable size) | Δ accuracy [95 % CI] | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = {"indistinguishable": " (majority class)", "below": " (below majority class)"}.get(r["vs_majority"], "")
        versus = (
            f"{r['vs']} | {r['difference']:+.4f} [{r['difference_low']:+.4f}, {r['difference_high']:+.4f}] | "
            f"{r['p_value']:.3g}"
            if "vs" in r
            else "– | – | –"
        )
        contribution = (
            f"{r['contribution']:+.4f} [{r['contribution_low']:+.4f}, {r['contribution_high']:+.4f}]"
            if "contribution" in r
            else "–"
        )
        lines.append(
            f"| {r['label']} | {r['seeds']} | {r['accuracy']:.4f} [{r['accuracy_low']:.4f}, {r['accuracy_high']:.4f}]"
            f"{note} | {r['trainable_params']:,} | {r['train_seconds']:.3g} | {contribution} | {versus} |"
        )
    majority = rows[0]["majority"] if rows else float("nan")
    return "\n".join(lines) + (
        f"\n\nMajority-class rate of the test split: {majority:.4f}; a row marked (majority class) has an interval "
        "that reaches it: it cannot be told from always answering the most frequent label. Circuit contribution: "
        "the accuracy lost when every circuit's output is replaced by its mean over the training inputs (the "
        "same trained model; paired over the test examples). In the QD-LLM student and the PQC head the circuit "
        "is the only path from the input to the output, so this is all they learnt; the classical stand-in rows "
        "(a classical module of the circuit's size in its place, tuned alike; its contribution is that "
        "module's) say what a classical part as small achieves."
    )


def artifact_key(text: str) -> str:
    """``text`` as a Prefect artifact key (lower case letters, digits and dashes)."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
