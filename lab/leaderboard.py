"""The compare flow's leaderboard: per-seed results of every method pooled into one row per
method (accuracy mean ± std, trainable parameters, training seconds), as a table, Markdown, MLflow
child runs and the accuracy-against-cost plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
import numpy as np
from matplotlib.figure import Figure

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
    parent: mlflow.ActiveRun, table: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], figure: Figure
) -> None:
    """A child run per method (pooled metrics; per-seed accuracy and seconds at step = seed's
    position), the table and the plot on the parent, and ``<method>.<metric>`` parent metrics."""
    for r in table:
        rs = [x for x in rows if x["method"] == r["method"]]
        tracking.log_child(
            parent,
            r["label"],
            params={"method": r["method"], "seeds": [x["seed"] for x in rs]},
            metrics={
                k: r[k]
                for k in ("accuracy", "accuracy_std", "trainable_params", "train_seconds", "train_seconds_std", "seeds")
            },
            history={
                "seed_accuracy": [x["accuracy"] for x in rs],
                "seed_train_seconds": [x["train_seconds"] for x in rs],
            },
            tags={"kind": "method", "method": r["method"]},
        )
    tracking.log_table(parent, list(table), "leaderboard.json")
    tracking.log_table(parent, list(rows), "seeds.json")
    tracking.with_retries(
        lambda: mlflow.log_metrics(
            {
                f"{tracking.slug(r['method'])}.{k}": float(r[k])
                for r in table
                for k in ("accuracy", "accuracy_std", "trainable_params", "train_seconds")
            }
        ),
        what="log metrics",
    )
    tracking.with_retries(lambda: mlflow.log_figure(figure, "leaderboard.png"), what="log figure")
