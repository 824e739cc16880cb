"""Quantum parameter-efficient fine-tuning as a Prefect flow: LoRA, QPA and QTHA on equal footing.

Every method fine-tunes the same model on the same batches, with the same steps, optimiser,
learning rate (unless ``--qpa-lr`` sets QPA's own) and seed, as parallel tasks on the Dask
cluster; each result is merged into plain Hugging Face weights and checked against the adapted
model. Then the noise ablation: every classifier with a circuit (QPA, QTHA) evaluated on
``--noise-samples`` test texts with its ΔW generated once by the circuits under finite shots,
depolarizing or fake-device noise. One MLflow parent run holds the results table, the noise
table and the overlaid loss curves, with a child run per method. The method itself is
:mod:`lab.methods.peft`.

Papers: QPA, arXiv 2410.09846; QTHA, arXiv 2503.12790; LoRA, arXiv 2106.09685.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import ActiveRun
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lab import noise, peft_report, registry, tracking
from lab.artifacts import download_folder
from lab.corpus import Corpus
from lab.data import Dataset
from lab.methods.peft import PeftParams, Plan, check, finetune_data, load_data, preflight
from lab.pretrain import generated_samples, pretrained_base, speech_prompts
from lab.results import TrainingResult
from lab.runtime import Runtime
from tasks.train import adapter_noise, train_task

from .runner import CRASH_HOOKS, check_dask_address, dask_runner, flow_run_tags, mlflow_hint, run_from_cli


@task(name="prepare-peft-data", cache_policy=NO_CACHE)
def prepare(params: PeftParams) -> Dataset | Corpus:
    """The task's data; bad names, paths or columns fail here, before any training."""
    return load_data(params)


@task(name="pretrain-base", cache_policy=NO_CACHE)
def pretrain_base(params: PeftParams, corpus: Corpus, root: str) -> tuple[Path, dict[str, Any]]:
    """The small GPT-2 pretrained on the corpus's first half (cached by content), in the flow's
    process: one training that may use every core, before the adapters' tasks start."""
    return pretrained_base(corpus, root, params.recipe(), log=print)


@flow(
    name="peft",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def peft(params: PeftParams = PeftParams()) -> dict[str, Any]:
    """Fine-tune one model with LoRA, QPA and QTHA on equal footing; merge, check and compare."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    data_set = params.dataset if params.task == "classify" else params.corpus
    name = tracking.run_name("peft", params.task, data_set, ",".join(params.methods), steps=params.steps)
    tags = {"flow": "peft", "task": params.task, **flow_run_tags()}
    with tracking.parent_run(
        runtime, params.experiment, name, params.model_dump(), tags, system_metrics=True
    ) as parent:
        root = runtime.artifact_root
        data = prepare(params)
        if isinstance(data, Corpus) and params.model is None:
            folder, base = pretrain_base(params, data, root)
            log_base(parent, base)
            params = params.model_copy(update={"model": str(folder)})
        data = finetune_data(params, data)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        plan = preflight(params, data)
        futures = [train_task(j.method).submit(j.method, j, data, root) for j in plan.jobs]
        noise_futures = noise_ablation(params, plan, data, futures)
        rows = [f.result() for f in futures]
        noisy = [row for f in noise_futures for row in f.result()]
        table = peft_report.table(rows, plan.lora_params)
        md = peft_report.markdown(table)
        if noisy:
            md += "\n\n" + noise.markdown(noisy, NOISE_TITLE, lambda r: r["method"])
        log_mlflow(parent, data, params, plan, rows, table, noisy)
        if isinstance(data, Dataset):  # a classifier of text; a language model's merged folder is not one
            registry.register_best(rows, dataset=params.dataset, label_names=data.label_names, flow="peft")
        run_id = parent.info.run_id
    create_table_artifact(key="peft-results", table=table, description="LoRA, QPA and QTHA on equal footing")
    if noisy:
        create_table_artifact(key="peft-noise", table=noisy, description="adapters with ΔW generated under noise")
    create_markdown_artifact(key="peft-report", markdown=tracking.run_markdown(runtime, parent) + "\n\n" + md)
    return {
        "table": table,
        "noise": noisy,
        "markdown": md,
        "mlflow_run_id": run_id,
        "targets": plan.targets,
        "model": params.model,  # the folder fine-tuned: for lm without a model, the base pretrained here
        "merged": {r.method: r.files["merged"] for r in rows},
        "methods": [{"name": r.method, "cached": r.cached} for r in rows],
    }


def log_base(parent: ActiveRun, base: dict[str, Any]) -> None:
    """The pretrained base's record on the parent run: its key, size, budget and perplexities."""
    tracking.set_tags(parent, {"base_key": base["key"]})
    keys = ("parameters", "seconds", "val_perplexity_untrained", "val_perplexity")
    metrics = {f"base/{k}": float(base[k]) for k in keys}
    tracking.with_retries(lambda: mlflow.log_metrics(metrics), what="log metrics")
    tracking.with_retries(lambda: mlflow.log_dict(base, "base.json"), what="log base")


NOISE_TITLE = "Under noise (ΔW generated once by the circuits on Aer; same test samples):"


def noise_ablation(params: PeftParams, plan: Plan, data: Dataset | Corpus, trainings: list[Any]) -> list[Any]:
    """Futures of every classifier with a circuit under each noise setting, one task per method,
    each started as soon as its training has finished; LoRA (no circuit) and perplexity are skipped."""
    settings = params.noise_settings()
    if params.task != "classify" or not settings:
        return []
    return [
        adapter_noise.submit(f, data, settings, params.noise_samples)
        for j, f in zip(plan.jobs, trainings, strict=True)
        if plan.counts[j.method].circuit
    ]


def log_mlflow(
    parent: ActiveRun,
    data: Dataset | Corpus,
    params: PeftParams,
    plan: Plan,
    rows: list[TrainingResult],
    table: list[dict[str, Any]],
    noisy: list[dict[str, Any]],
) -> None:
    """The table, the noise table and the overlaid loss curves on the parent run; a child run
    per method, with its accuracy under each noise setting (classify) or a few texts it wrote (lm)."""
    record = tracking.data_record(data)
    for r, row in zip(rows, table, strict=True):
        with tempfile.TemporaryDirectory() as tmp:
            adapter = download_folder(r.files["adapter"], Path(tmp) / "adapter")
            samples = {}
            if isinstance(data, Corpus):  # what each adapted LM writes, beside its perplexity
                merged = download_folder(r.files["merged"], Path(tmp) / "merged")
                samples["samples.txt"] = generated_samples(merged, speech_prompts(data.val_text)).encode()
            tracking.log_child(
                parent,
                r.method,
                kind="adapter",
                data=record,
                params={**r.job, "targets": plan.targets},
                metrics={
                    **r.metrics,
                    **{f"params_{k}": v for k, v in r.params.items()},
                    "ratio_to_lora": row["ratio_to_lora"],
                    "circuit_params": plan.counts[r.method].circuit,
                    **noise_metrics([n for n in noisy if n["method"] == r.method]),
                },
                history=r.history,
                artifacts=adapter,
                files=samples,
                tags={"method": r.method, "merged_model": r.files["merged"]},
            )
    figure = peft_report.loss_curves(rows, f"{params.task}: training loss per step")
    client = MlflowClient()
    tracking.with_retries(lambda: client.log_figure(parent.info.run_id, figure, "loss_curves.png"), what="log figure")
    summary = {
        tracking.summary_name(k, row["method"]): float(v)
        for row in table
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    summary |= {
        tracking.summary_name(k, f"noisy {n['label']} {n['method']}"): n[k]
        for n in noisy
        for k in ("accuracy", "agreement_with_exact")
    }
    tracking.with_retries(lambda: mlflow.log_metrics(summary), what="log metrics")
    tracking.log_table(parent, table, "results.json")
    if noisy:
        tracking.log_table(parent, noisy, "noise.json")


def noise_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``test/accuracy/noisy <setting>`` and ``agreement_with_exact/noisy <setting>`` of one
    method's rows."""
    return {
        tracking.summary_name(k, f"noisy {r['label']}"): r[k]
        for r in rows
        for k in ("accuracy", "agreement_with_exact")
    }


def run_peft(params: PeftParams) -> dict[str, Any]:
    """Run the flow from the command line and print the results and where they are.

    Data, model, targets, rank and chunk size are checked first, so bad input is refused in
    seconds, before any server starts or anything is written.
    """
    check(params)
    result = run_from_cli(peft, params)
    print(result["markdown"])
    print("\nMerged models (plain Hugging Face folders, no quantum computer needed):")
    for method, url in result["merged"].items():
        print(f"  {method}: {url}")
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
