"""The hybrid PQC classification head as a Prefect flow: few-shot data → sentence embeddings →
quantum heads (one Dask task per seed) beside classical heads of about the same size →
noise ablation of the trained heads → MLflow.

Paper: Fine-tuning Large Language Models on Quantum Computers, arXiv 2504.08732. The method
itself is :mod:`lab.methods.pqc_head`.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from mlflow import ActiveRun
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lab import registry, reporting, tracking
from lab.embedded import EmbeddedSplit
from lab.methods.pqc_head import HeadParams, PQCHeadMethod, ablation_rows, exact_spread, noise_markdown
from lab.noise import merge_noisy, transpiled_metrics
from lab.results import FailedTraining, Outcome, TrainingResult
from lab.runtime import Runtime
from tasks.prepare import embedded_split
from tasks.train import baselines, evaluate_under_noise, noisy_finetune, train_task

from .runner import (
    CRASH_HOOKS,
    check_dask_address,
    dask_runner,
    flow_run_tags,
    mlflow_hint,
    results_or_failures,
    run_from_cli,
)

METHOD = PQCHeadMethod()


@flow(
    name="head",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def head(params: HeadParams = HeadParams()) -> dict[str, Any]:
    """Train PQC heads on few-shot embeddings, compare them with classical heads, ablate noise."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    root = runtime.artifact_root
    name = tracking.run_name(
        "head",
        params.dataset,
        q=params.qubits,
        encoders=params.encoders,
        per_label=params.per_label,
        seeds=params.seeds,
    )
    tags = {"flow": "head", **flow_run_tags()}
    with tracking.parent_run(
        runtime, params.experiment, name, params.model_dump(), tags, system_metrics=True
    ) as parent:
        data, split = embedded_split(METHOD, params, root)
        tracking.set_tags(parent, {"data_key": split.key, "data_hash": data.content_hash})
        record = tracking.data_record(data)
        jobs = METHOD.jobs(params, split)
        heads = train_task(METHOD.id).map(unmapped(METHOD.id), jobs, unmapped(split), unmapped(root))
        classical = baselines.map(unmapped(METHOD.id), unmapped(params), unmapped(split), params.seeds)
        head_rows = results_or_failures(heads, jobs, METHOD.id)
        trained = [r for r in head_rows if isinstance(r, TrainingResult)]
        noise = noise_ablation(params, split, trained, runtime.dask_workers)
        baseline_rows = [r for f in classical for r in f.result()]

        table = reporting.summarize([*baseline_rows, *trained])
        md = reporting.markdown(table)
        if failed := [r for r in head_rows if isinstance(r, FailedTraining)]:
            md += "\n\nFailed trainings:\n" + "\n".join(f"- {r.name}: {r.error}" for r in failed)
        fig = reporting.noise_plot(noise["rows"], noise["exact"], "PQC head under noise") if noise["rows"] else None
        if fig is not None:
            md += "\n\n" + noise_markdown(noise["rows"], noise["devices"])
        log_mlflow(parent, record, split, head_rows, baseline_rows, table, noise, fig)
        registry.register_best(trained, dataset=params.dataset, label_names=split.label_names, flow="head")
        run_id = parent.info.run_id
    create_table_artifact(key="head-results", table=table, description="PQC head vs classical heads")
    report = md
    if fig is not None:
        create_table_artifact(key="head-noise", table=noise["rows"], description="accuracy under noise")
        report += "\n\n" + reporting.figure_markdown(fig, "accuracy against noise")
        reporting.close(fig)
    create_markdown_artifact(key="head-report", markdown=tracking.run_markdown(runtime, parent) + "\n\n" + report)
    return {
        "table": table,
        "noise": noise,
        "markdown": md,
        "mlflow_run_id": run_id,
        "heads": [{"name": r.name, "status": r.status, "cached": r.cached} for r in head_rows],
    }


def noise_ablation(
    params: HeadParams, split: EmbeddedSplit, trained: list[TrainingResult], workers: int
) -> dict[str, Any]:
    """Every trained head re-evaluated on the same ``noise_samples`` test examples under each
    setting (chunks spread over the workers), plus the transpiled cost on each device."""
    settings = params.noise_settings()
    if not settings or not trained:  # ablation switched off (all lists empty), or nothing to evaluate
        return {"rows": [], "devices": []}
    futures = {
        (s.label, r.name): evaluate_under_noise(
            str(r.model_url), split.test_x, split.test_y, s, params.noise_samples, workers
        )
        for s in settings
        for r in trained
    }
    samples = min(params.noise_samples, len(split.test_y))
    finetunes = {}
    if params.noise_finetune_steps:
        for s in (s for s in settings if s.kind == "device"):
            finetunes[s.label] = noisy_finetune.submit(
                str(trained[0].model_url),
                s.label,
                s.options,
                split.train_x,
                split.train_y,
                split.test_x[:samples],
                steps=params.noise_finetune_steps,
                batch_size=params.batch_size,
                lr=params.lr,
                seed=0,
            )
    module2 = params.head_config(split).module2_circuit().circuit
    devices = [transpiled_metrics(module2, d) for d in params.noise_devices]
    merged = {key: merge_noisy([f.result() for f in fs], split.test_y) for key, fs in futures.items()}
    finetuned = {label: f.result()["predictions"] for label, f in finetunes.items()}
    exact = exact_spread(trained, merged, settings[0].label)
    rows = ablation_rows(settings, trained, merged, finetuned, split.test_y, samples, exact[0])
    return {"rows": rows, "devices": devices, "exact": exact}


def log_mlflow(
    parent: ActiveRun,
    record: tracking.DataRecord,
    split: EmbeddedSplit,
    heads: list[Outcome],
    baseline_rows: list[TrainingResult],
    table: list[dict[str, Any]],
    noise: dict[str, Any],
    noise_figure: Figure | None,
) -> None:
    """The table and the noise ablation (with its plot) on the parent run; a child per head and
    per baseline."""
    tracking.log_result_rows(
        parent, [*heads, *baseline_rows], split.test_y, split.label_names, data=record, model_tag=METHOD.model_tag
    )
    noisy = {tracking.summary_name("accuracy", f"noisy {r['label']}"): r["accuracy"] for r in noise["rows"]}
    tracking.log_summary(table, noisy)
    tracking.log_table(parent, table, "results.json")
    if noise_figure is not None:
        tracking.log_table(parent, noise["rows"], "noise.json")
        tracking.log_table(parent, noise["devices"], "transpiled.json")
        tracking.with_retries(lambda: tracking.mlflow.log_figure(noise_figure, "noise.png"), what="log figure")


def run_head(params: HeadParams) -> dict[str, Any]:
    """Run the flow from the command line; the data is checked first, before any server starts."""
    METHOD.check(params)
    result = run_from_cli(head, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
