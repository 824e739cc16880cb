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

from lab import noise, peft_report, tracking
from lab.artifacts import download_folder
from lab.corpus import Corpus
from lab.data import Dataset
from lab.methods.peft import PeftParams, Plan, load_data, preflight
from lab.results import TrainingResult
from lab.runtime import Runtime
from tasks.train import adapter_noise, train_task

from .runner import check_dask_address, dask_runner, flow_run_tags, mlflow_hint, run_from_cli


@task(name="prepare-peft-data", cache_policy=NO_CACHE)
def prepare(params: PeftParams) -> Dataset | Corpus:
    """The task's data; bad names, paths or columns fail here, before any training."""
    return load_data(params)


@flow(name="peft", task_runner=dask_runner(), log_prints=True)
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
        data = prepare(params)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        plan = preflight(params, data)
        root = runtime.artifact_root
        futures = [train_task(j.method).submit(j.method, j, data, root) for j in plan.jobs]
        noise_futures = noise_ablation(params, plan, data, futures)
        rows = [f.result() for f in futures]
        noisy = [row for f in noise_futures for row in f.result()]
        table = peft_report.table(rows, plan.lora_params)
        md = peft_report.markdown(table)
        if noisy:
            md += "\n\n" + noise.markdown(noisy, NOISE_TITLE, lambda r: r["method"])
        log_mlflow(parent, data, params, plan, rows, table, noisy)
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
        "merged": {r.method: r.files["merged"] for r in rows},
        "methods": [{"name": r.method, "cached": r.cached} for r in rows],
    }


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
    per method, with its accuracy under each noise setting."""
    record = tracking.data_record(data)
    for r, row in zip(rows, table, strict=True):
        with tempfile.TemporaryDirectory() as tmp:
            adapter = download_folder(r.files["adapter"], Path(tmp) / "adapter")
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
    preflight(params, load_data(params))
    result = run_from_cli(peft, params)
    print(result["markdown"])
    print("\nMerged models (plain Hugging Face folders, no quantum computer needed):")
    for method, url in result["merged"].items():
        print(f"  {method}: {url}")
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
