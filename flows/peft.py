"""Quantum parameter-efficient fine-tuning as a Prefect flow: LoRA, QPA and QTHA on equal footing.

Every method fine-tunes the same model on the same batches, with the same steps, optimiser,
learning rate (unless ``--qpa-lr`` sets QPA's own) and seed, as parallel tasks on the Dask
cluster; each result is merged into plain Hugging Face weights and checked against the adapted
model. One MLflow parent run holds the results table and the overlaid loss curves, with a child
run per method. The method itself is :mod:`lab.methods.peft`.

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

from lab import peft_report, tracking
from lab.artifacts import download_folder
from lab.corpus import Corpus
from lab.data import Dataset
from lab.methods.peft import PeftParams, Plan, load_data, preflight
from lab.results import TrainingResult
from lab.runtime import Runtime
from tasks.train import train_task

from .runner import check_dask_address, dask_runner, mlflow_hint, run_from_cli


@task(name="prepare-peft-data", cache_policy=NO_CACHE)
def prepare(params: PeftParams) -> Dataset | Corpus:
    """The task's data; bad names, paths or columns fail here, before any training."""
    return load_data(params)


@flow(name="peft", task_runner=dask_runner(), log_prints=True)
def peft(params: PeftParams = PeftParams()) -> dict[str, Any]:
    """Fine-tune one model with LoRA, QPA and QTHA on equal footing; merge, check and compare."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    with tracking.parent_run(
        runtime,
        params.experiment,
        "peft",
        params.model_dump(),
        tags={"flow": "peft", "task": params.task},
        system_metrics=True,
    ) as parent:
        data = prepare(params)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        plan = preflight(params, data)
        root = runtime.artifact_root
        futures = [train_task(j.method).submit(j.method, j, data, root) for j in plan.jobs]
        rows = [f.result() for f in futures]
        table = peft_report.table(rows, plan.lora_params)
        md = peft_report.markdown(table)
        log_mlflow(parent, params, plan, rows, table)
        run_id = parent.info.run_id
    create_table_artifact(key="peft-results", table=table, description="LoRA, QPA and QTHA on equal footing")
    create_markdown_artifact(key="peft-report", markdown=md)
    return {
        "table": table,
        "markdown": md,
        "mlflow_run_id": run_id,
        "targets": plan.targets,
        "merged": {r.method: r.files["merged"] for r in rows},
        "methods": [{"name": r.method, "cached": r.cached} for r in rows],
    }


def log_mlflow(
    parent: ActiveRun, params: PeftParams, plan: Plan, rows: list[TrainingResult], table: list[dict[str, Any]]
) -> None:
    """The table and the overlaid loss curves on the parent run; a child run per method."""
    for r, row in zip(rows, table, strict=True):
        with tempfile.TemporaryDirectory() as tmp:
            adapter = download_folder(r.files["adapter"], Path(tmp) / "adapter")
            tracking.log_child(
                parent,
                r.method,
                params={**r.job, "targets": plan.targets},
                metrics={
                    **r.metrics,
                    "ratio_to_lora": row["ratio_to_lora"],
                    "circuit_params": plan.counts[r.method].circuit,
                },
                history=r.history,
                artifacts=adapter,
                tags={"kind": "adapter", "method": r.method, "merged_model": r.files["merged"]},
            )
    figure = peft_report.loss_curves(rows, f"{params.task}: training loss per step")
    client = MlflowClient()
    tracking.with_retries(lambda: client.log_figure(parent.info.run_id, figure, "loss_curves.png"), what="log figure")
    summary = {
        f"{row['method']}.{k}": float(v)
        for row in table
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    tracking.with_retries(lambda: mlflow.log_metrics(summary), what="log metrics")
    tracking.log_table(parent, table, "results.json")


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
