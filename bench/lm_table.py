#!/usr/bin/env python
"""LoRA, QPA (zero start and as published) and QTHA adapting a small pretrained GPT-2 on text it
never saw: the table of issue 18, each method with its own tuned learning rate, at equal steps.

1. The base: ``lab.pretrain.pretrained_base`` on the first half of tiny Shakespeare's training
   text (cached by content under the artifact root; ``--pretrain-steps``), and its own
   perplexities on the validation text, unadapted, measured as every adapter's are.
2. For each setting (``lm_head``, as in QPA's paper; the attention projections ``c_attn``) and
   each method: ``qllm run tune`` (:func:`flows.tune.run_tune`) with the same budget for all
   (``--trials`` trials on a hold-out of the fine-tuning text, scored by held-out perplexity),
   whose final trainings train the best rates once per ``--seeds`` seed on the whole
   fine-tuning text, ``--steps`` steps each, scored on the validation text.
3. The rows read back from the flows' results and their MLflow final runs; each merged model's
   perplexity recomputed from its plain Hugging Face folder beside the adapted model's.

Every run shares one Prefect server and one cluster of ``QLLM_DASK_WORKERS`` (default: one per
core) single-threaded workers. Prints the Markdown table, the loss curves' comparison, the base
and the machine's load; ``--figure`` also draws the training-loss curves (:func:`figure`).

    python bench/lm_table.py [--steps 200] [--trials 4] [--seeds 0,1,2,3] [--out docs/lm_table.md]
        [--figure docs/lm_loss_curves.png]

The figure of a finished run, redrawn from its MLflow store (the tune runs its report names;
nothing is trained): ``QLLM_ARTIFACT_ROOT=<that run's root> python bench/lm_table.py
--figure-from <its --out report> --figure <png>``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = {"lm_head": ["lm_head"], "c_attn": ["c_attn"]}
METHODS = ("lora", "qpa", "qpa-published", "qtha")


def base_row(corpus: Any, folder: Path, fixed: dict[str, Any]) -> dict[str, float]:
    """The unadapted base on the adapters' evaluation (the same blocks and speeches)."""
    from lab.methods.peft import PeftParams, eval_batches, finetune_data, lm_metrics, load_pretrained, preflight

    params = PeftParams(**{**fixed, "model": str(folder), "methods": ["lora"]})
    data = finetune_data(params, corpus)
    (job,) = preflight(params, data).jobs
    tokenizer, model = load_pretrained(job, data)
    return lm_metrics(model, tokenizer, eval_batches(job, tokenizer, data), job, data)


def final_runs(run_id: str) -> list[Any]:
    """The tune run's final trainings, from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent = client.get_run(run_id)
    where = f"tags.mlflow.parentRunId = '{run_id}' and tags.kind = 'final'"
    return client.search_runs([parent.info.experiment_id], where)


def merged_perplexity(merged: str, corpus: Any, fixed: dict[str, Any]) -> float:
    """The perplexity of a merged folder on the adapters' validation blocks."""
    import transformers

    from lab.artifacts import download_folder
    from lab.methods.peft import PeftParams, eval_batches, finetune_data, preflight
    from qcore.adapters.training import perplexity

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_folder(merged, Path(tmp) / "merged")
        params = PeftParams(**{**fixed, "model": str(folder), "methods": ["lora"]})
        data = finetune_data(params, corpus)
        (job,) = preflight(params, data).jobs
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        return perplexity(model, eval_batches(job, tokenizer, data).batches)


def losses(run: Any) -> np.ndarray:
    """A final training's loss at each step (``train/loss``, logged at steps 1..n)."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    return np.array([m.value for m in sorted(history, key=lambda m: m.step)])


def tune_one(method: str, setting: str, args: argparse.Namespace, fixed: dict[str, Any], corpus: Any) -> dict:
    """One method in one setting: tuned, trained per seed; its row, per-seed curves and merge check."""
    from flows.tune import TuneParams, run_tune

    params = TuneParams(
        method=method,
        trials=args.trials,
        seeds=args.seeds,
        parallel_trials=args.parallel_trials,
        fixed={**fixed, "target": SETTINGS[setting]},
        experiment="lm-table",
    )
    t0 = time.perf_counter()
    result = run_tune(params)
    (row,) = result["rows"]
    runs = final_runs(result["mlflow_run_id"])
    merged = [
        (r.data.metrics["val/perplexity"], merged_perplexity(r.data.tags["merged_model"], corpus, fixed)) for r in runs
    ]
    return {
        **row,
        "setting": setting,
        "best": result["best"],
        "curves": [losses(r) for r in runs],
        "merged": merged,
        "seconds": time.perf_counter() - t0,
        "run_id": result["mlflow_run_id"],
    }


def table(rows: list[dict], base: dict[str, float], record: dict[str, Any]) -> str:
    lines = [
        "| method | setting | trainable params | ratio to LoRA | perplexity, whole blocks (mean ± std) "
        "| speeches, padding masked (mean ± std) | speeches, padding counted (as reference code) "
        "| final train loss (mean ± std) | train tokens/s | tuned rates |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| base, unadapted | – | 0 | – | {base['perplexity']:.2f} | {base['speech_perplexity']:.2f} "
        f"| {base['speech_perplexity_pad_counted']:.2f} | – | – | – |",
    ]
    for r in rows:
        lora = next(x for x in rows if x["setting"] == r["setting"] and x["method"] == "lora")
        rates = ", ".join(f"{k}={v:.2g}" for k, v in sorted(r["best"].items())) or "defaults"
        ratio = r["adapter_params"] / lora["adapter_params"]
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['adapter_params']:,} | {ratio:.1%} "
            f"| {r['perplexity']:.2f} ± {r['perplexity_std']:.2f} "
            f"| {r['speech_perplexity']:.2f} ± {r['speech_perplexity_std']:.2f} "
            f"| {r['speech_perplexity_pad_counted']:.3f} ± {r['speech_perplexity_pad_counted_std']:.3f} "
            f"| {r['final_train_loss']:.4f} ± {r['final_train_loss_std']:.4f} "
            f"| {r['tokens_per_second']:,.0f} | {rates} |"
        )
    return "\n".join(lines)


def curves(rows: list[dict]) -> str:
    """Each method's training loss against LoRA's at equal steps (means over seeds, each step's
    loss averaged over a window of a tenth of the steps): the largest and the final relative gap."""
    lines = [
        "| method | setting | loss at 25 % / 50 % / 100 % of the steps | vs LoRA at the end "
        "| largest reduction vs LoRA (step) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lora = next(x for x in rows if x["setting"] == r["setting"] and x["method"] == "lora")
        mine, theirs = smooth(np.mean(r["curves"], axis=0)), smooth(np.mean(lora["curves"], axis=0))
        gap = (theirs - mine) / theirs
        at = [mine[max(0, int(len(mine) * f) - 1)] for f in (0.25, 0.5, 1.0)]
        lines.append(
            f"| {r['method']} | {r['setting']} | {' / '.join(f'{v:.3f}' for v in at)} | {-gap[-1]:+.1%} "
            f"| {gap.max():+.1%} (step {int(gap.argmax()) + 1}) |"
        )
    return "\n".join(lines)


def smooth(loss: np.ndarray) -> np.ndarray:
    window = max(1, len(loss) // 10)
    return np.convolve(np.pad(loss, (window - 1, 0), mode="edge"), np.ones(window) / window, mode="valid")


def figure(rows: list[dict[str, Any]], path: Path, dpi: int = 100) -> None:
    """Training loss against step: one panel per setting, one line per method, the mean over seeds
    of each seed's curve smoothed as in :func:`curves` (so the picture and the table agree), the
    band the seeds' smoothed min–max, the unsmoothed mean faint behind. QTHA's claim is about
    training loss at equal steps, and one final number per method hides where curves cross and
    how far apart the seeds are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig = Figure(figsize=(5.5 * len(settings), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, setting in zip(fig.subplots(1, len(settings), squeeze=False)[0], settings, strict=True):
        for i, r in enumerate(x for x in rows if x["setting"] == setting):
            color = f"C{i}"
            raw = np.array(r["curves"])
            smoothed = np.array([smooth(c) for c in raw])
            step = np.arange(1, raw.shape[1] + 1)
            ax.plot(step, raw.mean(axis=0), color=color, alpha=0.25, linewidth=0.6)
            ax.fill_between(step, smoothed.min(axis=0), smoothed.max(axis=0), color=color, alpha=0.2, linewidth=0)
            ax.plot(step, smoothed.mean(axis=0), color=color, label=f"{r['method']} ({len(raw)} seeds)")
        ax.set(title=f"target {setting}", xlabel="training step", ylabel="training loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Mean over seeds, moving mean over a tenth of the steps; band: seeds' min–max", fontsize="small")
    fig.savefig(path, dpi=dpi)


def reported_rows(report: str) -> list[dict[str, Any]]:
    """The curves of the tune runs a report names (its "MLflow tune runs" line, ids cut to 8
    characters), read back from the MLflow store of ``QLLM_ARTIFACT_ROOT``."""
    import re

    from mlflow.tracking import MlflowClient

    from lab.runtime import Runtime
    from lab.tracking import connect

    (line,) = [x for x in report.splitlines() if x.startswith("MLflow tune runs")]
    named = re.findall(r"([\w-]+)/([\w-]+) ([0-9a-f]+)", line.partition(":")[2])
    connect(Runtime())
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lm-table")
    if experiment is None:
        raise SystemExit(f"no experiment lm-table in {Runtime().tracking_uri()}")
    ids = [r.info.run_id for r in client.search_runs([experiment.experiment_id], max_results=50_000)]
    rows = []
    for method, setting, prefix in named:
        found = [i for i in ids if i.startswith(prefix)]
        if len(found) != 1:
            raise SystemExit(f"{len(found)} runs {prefix}… ({method}/{setting}) in {Runtime().tracking_uri()}")
        (run_id,) = found
        rows.append({"method": method, "setting": setting, "curves": [losses(r) for r in final_runs(run_id)]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=600, help="steps of the base's pretraining (cached)")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps of every trial and training")
    ap.add_argument("--trials", type=int, default=4, help="tuning trials per method and setting, the same for all")
    ap.add_argument("--parallel-trials", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2,3", help="seeds of the final trainings at the tuned rates")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64, help="tokens per block")
    ap.add_argument("--eval-blocks", type=int, default=64, help="validation blocks of the perplexity")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    ap.add_argument("--figure", type=Path, help="also draw the training-loss curves here (PNG)")
    ap.add_argument(
        "--figure-from", type=Path, help="train nothing: draw --figure from the tune runs this report names"
    )
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.figure_from:
        if not args.figure:
            ap.error("--figure-from needs --figure")
        figure(reported_rows(args.figure_from.read_text()), args.figure)
        return

    import torch

    from bench.study import Sampler, running_services
    from lab.corpus import load_corpus
    from lab.pretrain import BaseRecipe, pretrained_base
    from lab.runtime import Runtime

    torch.set_num_threads(2)
    fixed = {
        "task": "lm",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "eval_blocks": args.eval_blocks,
        "pretrain_steps": args.pretrain_steps,
    }
    started = datetime.datetime.now(datetime.UTC)
    corpus = load_corpus("tiny_shakespeare")
    t0 = time.perf_counter()
    folder, record = pretrained_base(corpus, Runtime().artifact_root, BaseRecipe(steps=args.pretrain_steps))
    base_seconds = time.perf_counter() - t0
    base = base_row(corpus, folder, fixed)
    torch.set_num_threads(1)
    rows, loads = [], []
    workers = int(os.environ.get("QLLM_DASK_WORKERS", os.cpu_count() or 1))
    with running_services(workers, 1), Sampler() as sampler:
        for setting in args.settings.split(","):
            for method in args.methods.split(","):
                rows.append(tune_one(method, setting, args, fixed, corpus))
                loads.append(os.getloadavg()[0])
                print(f"{method} {setting}: {rows[-1]['seconds']:.0f} s, load {loads[-1]:.2f}", flush=True)
    worst_merge = max(abs(a - b) / a for r in rows for a, b in r["merged"])
    recipe = record["recipe"]
    report = "\n".join(
        [
            f"Run {started:%Y-%m-%d %H:%M} UTC, {(time.perf_counter() - t0) / 60:.0f} min; "
            f"1-minute load average after each method {min(loads):.2f}–{max(loads):.2f} "
            f"(mean {statistics.mean(loads):.2f}) on {os.cpu_count()} cores, mean CPU use "
            f"{statistics.mean(sampler.cpu or [0]):.0f} %.",
            "",
            "Command: `PYTHONPATH=. QLLM_DATA_DIR=… python bench/lm_table.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ','.join(map(str, v))}"
                for k, v in vars(args).items()
                if k not in ("out", "figure") and v is not None
            )
            + "`",
            "",
            f"Base: GPT-2 architecture, {recipe['layers']} layers × {recipe['width']}, {recipe['heads']} heads, "
            f"context {recipe['context']}, byte-level BPE {recipe['vocab']}, {record['parameters']:,} parameters; "
            f"pretrained {recipe['steps']} steps × {recipe['batch_size']} blocks of {recipe['context']} tokens "
            f"(lr {recipe['lr']:g}) on the first {recipe['fraction']:.0%} of tiny Shakespeare's training text "
            f"({record['pretrain_tokens']:,} tokens) in {record['seconds']:.0f} s (this run: {base_seconds:.0f} s, "
            f"{'cached' if base_seconds < record['seconds'] / 2 else 'trained'}); its own validation perplexity "
            f"{record['val_perplexity']:.1f} (untrained {record['val_perplexity_untrained']:.0f}) on 64 blocks of "
            f"{recipe['context']} tokens. The adapters fine-tune on the other {1 - recipe['fraction']:.0%} of the "
            f"training text (tuning holds its last 20 % out), {args.steps} steps × {args.batch_size} blocks of "
            f"{args.max_length} tokens, and are scored on the corpus's last 10 % ({args.eval_blocks} blocks of "
            f"{args.max_length}; speeches each padded to {args.max_length}).",
            "",
            table(rows, base, record),
            "",
            f"Each merged model's perplexity, recomputed from its plain Hugging Face folder, against the adapted "
            f"model's: largest relative difference {worst_merge:.1e} over {sum(len(r['merged']) for r in rows)} "
            "final trainings.",
            "",
            "Training loss at equal steps (mean over seeds, moving mean over a tenth of the steps):",
            "",
            curves(rows),
            "",
            "MLflow tune runs (experiment lm-table): "
            + ", ".join(f"{r['method']}/{r['setting']} {r['run_id'][:8]}" for r in rows),
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    if args.figure:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
