"""The fine-tuning comparison's table and plot: one row and one loss curve per method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .results import TrainingResult

COLUMNS = (  # (key, heading, format)
    ("method", "method", "{}"),
    ("adapter_params", "adapter params", "{:,}"),
    ("ratio_to_lora", "ratio to LoRA", "{:.2%}"),
    ("trainable_params", "trainable (with head)", "{:,}"),
    ("final_train_loss", "final train loss", "{:.4f}"),
    ("accuracy", "eval accuracy", "{:.4f}"),
    ("perplexity", "eval perplexity (whole blocks)", "{:.3f}"),
    ("speech_perplexity", "speeches, padding masked", "{:.3f}"),
    ("speech_perplexity_pad_counted", "speeches, padding counted (as reference code)", "{:.3f}"),
    ("tokens_per_second", "train tokens/s", "{:,.0f}"),
    ("seconds_per_step", "s/step", "{:.3f}"),
    ("peak_memory_mib", "peak MiB", "{:.0f}"),
    ("merged_max_abs_diff", "merged max abs diff", "{:.1e}"),
)


def table(rows: Sequence[TrainingResult], lora_params: int) -> list[dict[str, Any]]:
    """One row per method: its metrics and its adapter size relative to LoRA's."""
    return [
        {
            "method": r.method,
            **r.metrics,
            "ratio_to_lora": r.metrics["adapter_params"] / lora_params,
            "cached": r.cached,
        }
        for r in rows
    ]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table in Markdown; ``final train loss`` is the mean over the last 10% of the steps."""
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f.format(r[k]) if k in r else "–" for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


# An lm fine-tune's metrics summarised over seeds (:func:`seed_row`): (key, heading, format).
SEED_METRICS = (
    ("perplexity", "perplexity, whole blocks", "{:.3f}"),
    ("speech_perplexity", "speeches, padding masked", "{:.3f}"),
    ("speech_perplexity_pad_counted", "speeches, padding counted (as reference code)", "{:.3f}"),
    ("final_train_loss", "final train loss", "{:.4f}"),
    ("tokens_per_second", "train tokens/s", "{:,.0f}"),
)


def seed_row(method: str, results: Sequence[TrainingResult]) -> dict[str, Any]:
    """One method's seeds: its size, and each of :data:`SEED_METRICS` as the mean and the
    standard deviation over seeds (``ddof=1``; 0 for one seed), so a difference between methods
    can be read against the seeds' own spread."""
    row: dict[str, Any] = {"method": method, "seeds": len(results), "adapter_params": results[0].params["adapter"]}
    for key, _, _ in SEED_METRICS:
        values = np.array([r.metrics[key] for r in results])
        row[key] = float(values.mean())
        row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return row


def seed_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`seed_row` rows in Markdown, each metric as mean ± std over the seeds."""
    heads = ["method", "seeds", "adapter params", *(h for _, h, _ in SEED_METRICS)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["method"], str(r["seeds"]), f"{r['adapter_params']:,}"]
        cells += [f"{f.format(r[k])} ± {f.format(r[k + '_std'])}" for k, _, f in SEED_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_curves(rows: Sequence[TrainingResult], title: str) -> Figure:
    """Per-step training losses of every method overlaid: faint raw steps, a moving average on top."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(rows):
        loss = np.asarray(r.history["train_loss"])
        steps = np.arange(1, len(loss) + 1)
        color = f"C{i}"
        ax.plot(steps, loss, color=color, alpha=0.25, linewidth=0.8)
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color=color, label=f"{r.method} (moving mean of {window})")
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.legend()
    fig.tight_layout()
    return fig
