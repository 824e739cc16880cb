"""QD-LLM as a Prefect flow: data → teacher LLM → quantum students (Dask-parallel sweep) →
evaluation beside classical baselines and under noise → MLflow.

Paper: Quantum Knowledge Distillation for Large Language Models, arXiv 2505.13205. The method
itself (parameters, students, baselines) is :mod:`lab.methods.qdllm`.
"""

from __future__ import annotations

from typing import Any

from mlflow import ActiveRun
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lab import registry, reporting, tracking
from lab.embedded import EmbeddedSplit
from lab.methods.qdllm import QDLLM, DistillParams
from lab.noise import merge_noisy
from lab.results import TrainingResult
from lab.runtime import Runtime
from tasks.prepare import embedded_split
from tasks.train import baselines, evaluate_under_noise, train_task

from .runner import CRASH_HOOKS, check_dask_address, dask_runner, flow_run_tags, mlflow_hint, run_from_cli

METHOD = QDLLM()


@flow(
    name="distill",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def distill(params: DistillParams = DistillParams()) -> dict[str, Any]:
    """Distil a teacher LLM into quantum students and compare them with classical competitors."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    root = runtime.artifact_root
    name = tracking.run_name(
        "distill", params.dataset, q=params.qubits, blocks=params.blocks, alpha=params.alpha, seeds=params.seeds
    )
    tags = {"flow": "distill", **flow_run_tags()}
    with tracking.parent_run(
        runtime, params.experiment, name, params.model_dump(), tags, system_metrics=True
    ) as parent:
        data, split = embedded_split(METHOD, params, root)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        record = tracking.data_record(data)
        jobs = METHOD.jobs(params, split)
        students = train_task(METHOD.id).map(unmapped(METHOD.id), jobs, unmapped(split), unmapped(root))
        classical = baselines.map(unmapped(METHOD.id), unmapped(params), unmapped(split), params.seeds)
        student_rows = [f.result() for f in students]
        first = student_rows[0]
        noisy_futures = [
            evaluate_under_noise(
                str(first.model_url), split.test_x, split.test_y, setting, samples, runtime.dask_workers
            )
            for setting, samples in params.noisy_evaluations()
        ]
        baseline_rows = [r for f in classical for r in f.result()]
        noisy_rows = [merge_noisy([f.result() for f in futures], split.test_y) for futures in noisy_futures]

        table = reporting.summarize([METHOD.teacher_row(split), *baseline_rows, *student_rows])
        md = reporting.markdown(table) + noisy_markdown(first, noisy_rows)
        log_mlflow(parent, record, split, student_rows, baseline_rows, noisy_rows, table)
        registry.register_best(student_rows, dataset=params.dataset, label_names=split.label_names, flow="distill")
        run_id = parent.info.run_id
    create_table_artifact(key="distill-results", table=table, description="QD-LLM: students and baselines")
    create_markdown_artifact(key="distill-report", markdown=tracking.run_markdown(runtime, parent) + "\n\n" + md)
    return {
        "table": table,
        "noisy": noisy_rows,
        "markdown": md,
        "mlflow_run_id": run_id,
        "students": [{"name": r.name, "cached": r.cached} for r in student_rows],
    }


def noisy_markdown(student: TrainingResult, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    lines = [
        f"| {r['label']} | {r['samples']} | {r['accuracy']:.4f} [{r['accuracy_low']:.4f}, {r['accuracy_high']:.4f}] | "
        f"{r['exact_accuracy_same_samples']:.4f} | {r['agreement_with_exact']:.4f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    return (
        "\n\nStudent " + student.name + " under noise (the first test samples; 95 % bootstrap interval):\n\n"
        "| setting | samples | accuracy [95 % interval] | exact accuracy | agreement with exact | worker seconds |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(lines)
    )


def log_mlflow(
    parent: ActiveRun,
    record: tracking.DataRecord,
    split: EmbeddedSplit,
    students: list[TrainingResult],
    baseline_rows: list[TrainingResult],
    noisy: list[dict[str, Any]],
    table: list[dict[str, Any]],
) -> None:
    """The table on the parent run; a child per student and per baseline (only this process writes)."""
    tracking.log_result_rows(
        parent,
        [*students, *baseline_rows],
        split.test_y,
        split.label_names,
        data=record,
        model_tag=METHOD.model_tag,
    )
    tracking.log_summary(
        table,
        {
            tracking.summary_name(key, f"noisy {r['label']}"): r[key]
            for r in noisy
            for key in ("accuracy", "accuracy_low", "accuracy_high")
        },
    )
    tracking.log_table(parent, table, "results.json")
    if noisy:
        tracking.log_table(parent, noisy, "noisy.json")


def run_distill(params: DistillParams) -> dict[str, Any]:
    """Run the flow from the command line and print where the results are.

    The data is read and checked first (names, paths, columns, labels), so bad input is refused
    in a second, before any server starts or anything is written.
    """
    METHOD.check(params)
    result = run_from_cli(distill, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
