"""Results tables and plots shared by the flows: mean ± std over seeds, training curves, confusion."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .results import TrainingResult

COLUMNS = ("accuracy", "macro_f1", "agreement")


def summarize(rows: Sequence[TrainingResult]) -> list[dict[str, Any]]:
    """One row per model kind (seeds pooled): metric means and standard deviations."""
    groups: dict[str, list[TrainingResult]] = defaultdict(list)
    for r in rows:
        groups[r.kind].append(r)
    table = []
    for kind, rs in groups.items():
        row: dict[str, Any] = {"model": kind, "seeds": len(rs)}
        for col in (*COLUMNS, "latency_ms", "train_seconds", "size_bytes"):
            vals = [r.metrics[col] for r in rs if col in r.metrics]
            if vals:
                row[col] = float(np.mean(vals))
                row[f"{col}_std"] = float(np.std(vals))
        params = rs[0].params
        row["circuit_params"] = params.get("circuit", 0)
        row["classical_params"] = params.get("classical", 0)
        table.append(row)
    return table


def markdown(table: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (for the terminal and the Prefect artifact)."""
    head = "| model | seeds | accuracy | macro-F1 | agreement | circuit params | classical params | latency ms/sample |"
    lines = [head, "|" + "---|" * 8]

    def pm(row: dict[str, Any], col: str) -> str:
        if col not in row:
            return "–"
        return f"{row[col]:.4f} ± {row[col + '_std']:.4f}"

    for r in table:
        lat = f"{r['latency_ms']:.3f}" if "latency_ms" in r else "–"
        lines.append(
            f"| {r['model']} | {r['seeds']} | {pm(r, 'accuracy')} | {pm(r, 'macro_f1')} | "
            f"{pm(r, 'agreement')} | {r['circuit_params']:,} | {r['classical_params']:,} | {lat} |"
        )
    return "\n".join(lines)


def training_curves(history: dict[str, list[float]], title: str) -> Figure:
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax[0].plot(epochs, history["train_loss"], marker="o")
    ax[0].set(xlabel="epoch", ylabel="training loss", title=title)
    for key in ("train_accuracy", "val_accuracy"):
        if key in history:
            ax[1].plot(epochs, history[key], marker="o", label="validation" if key == "val_accuracy" else "train")
    ax[1].set(xlabel="epoch", ylabel="accuracy")
    ax[1].legend()
    fig.tight_layout()
    return fig


def confusion(true: np.ndarray, pred: np.ndarray, labels: Sequence[str], title: str) -> Figure:
    k = len(labels)
    m = np.zeros((k, k), dtype=int)
    np.add.at(m, (true, pred), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1 + 0.6 * k))
    ax.imshow(m, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center")
    ax.set(
        xticks=range(k),
        yticks=range(k),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)


def result_figures(r: TrainingResult, test_y: Any, label_names: Sequence[str]) -> dict[str, bytes]:
    """A trained model's figures as the PNG files its MLflow run holds: its training curves and
    its confusion matrix on the test split, each saved as MLflow's ``log_figure`` saves one
    (``savefig`` to a file of that name), so they can be drawn where the model trained."""
    figs = {
        "training_curves.png": training_curves(r.history, r.name),
        "confusion_matrix.png": confusion(np.asarray(test_y), np.array(r.test_predictions), label_names, r.name),
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in figs.items():
            fig.savefig(Path(tmp) / name)
            close(fig)
            out[name] = (Path(tmp) / name).read_bytes()
    return out


def sweep_plot(
    points: Sequence[dict[str, Any]], axis: str, metric: str, baselines: dict[str, tuple[float, float]], title: str
) -> Figure:
    """``metric`` (mean ± std over seeds) against a grid ``axis``, one line per other-axes
    combination (``points``: ``{"axis": value, "series": label, "mean": m, "std": s}``), with
    the classical baselines (``name → (mean, std)``) as horizontal lines and bands."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        series[p["series"]].append(p)
    for label, ps in series.items():
        ps = sorted(ps, key=lambda p: p["axis"])
        ax.errorbar(
            [p["axis"] for p in ps],
            [p["mean"] for p in ps],
            yerr=[p["std"] for p in ps],
            marker="o",
            capsize=4,
            label=label or "quantum",
        )
    for i, (name, (mean, std)) in enumerate(baselines.items()):
        color = f"C{len(series) + i}"
        ax.axhline(mean, color=color, linestyle="--", label=name)
        ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
    ax.set(xlabel=axis, ylabel=metric, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def noise_plot(rows: Sequence[dict[str, Any]], exact: tuple[float, float], title: str) -> Figure:
    """Accuracy under each noise setting (mean ± std over models): shots and depolarizing levels
    as curves on log axes, fake devices as bars, the exact accuracy as a line in each panel."""
    kinds = [k for k in ("shots", "depolarizing", "device") if any(r["kind"] == k for r in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        rs = [r for r in rows if r["kind"] == kind]
        if kind == "device":
            ax.bar(range(len(rs)), [r["accuracy"] for r in rs], yerr=[r["accuracy_std"] for r in rs], capsize=4)
            ax.set_xticks(range(len(rs)), [r["label"].split("+")[0] for r in rs], rotation=20)
        else:
            rs = sorted(rs, key=lambda r: r["level"])
            ax.errorbar(
                [r["level"] for r in rs],
                [r["accuracy"] for r in rs],
                yerr=[r["accuracy_std"] for r in rs],
                marker="o",
                capsize=4,
            )
            ax.set_xscale("log")
        ax.axhline(exact[0], color="k", linestyle="--", label="exact")
        ax.set(
            xlabel={"shots": "shots", "depolarizing": "depolarizing p", "device": "fake device"}[kind],
            ylabel="test accuracy (same samples)",
            title=title if kind == kinds[0] else "",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure_markdown(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG for a Prefect markdown artifact."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def leaderboard_plot(rows: Sequence[dict[str, Any]], title: str) -> Figure:
    """Accuracy (mean and 95 % interval, :func:`lab.leaderboard.tuned_rows`) against trainable
    parameters and against training seconds, both on log axes, one labelled point per method,
    and the majority-class rate as a dashed line: a point whose bar reaches it has learnt nothing
    a constant answer would not."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4))
    panels = (("trainable_params", "trainable parameters"), ("train_seconds", "training seconds per seed (mean)"))
    for ax, (x, xlabel) in zip(axes, panels, strict=False):
        for i, r in enumerate(rows):
            low, high = r["accuracy"] - r["accuracy_low"], r["accuracy_high"] - r["accuracy"]
            ax.errorbar(
                max(r[x], 1e-3),
                r["accuracy"],
                yerr=[[low], [high]],
                fmt="o",
                capsize=4,
                color=f"C{i}",
                label=r["label"],
            )
            ax.annotate(
                r["label"], (max(r[x], 1e-3), r["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=7
            )
        if rows:
            ax.axhline(rows[0]["majority"], color="grey", linestyle="--", linewidth=1, label="majority class")
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="test accuracy (95 % interval)")
    fig.suptitle(title)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside, not over, the points
    fig.tight_layout()
    return fig


def rows_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Any list of flat rows as a Markdown table (columns in first-seen order, floats to 4 places)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
