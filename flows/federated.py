"""LLM-QFL as a Prefect flow: simulated federated rounds of quantum classifiers on Dask, steered
by an LLM controller, beside plain quantum FedAvg and a classical federated baseline.

Paper: LLM-QFL: LLM-guided quantum federated learning, arXiv 2505.18656. The method itself is
:mod:`lab.methods.federated`.

    data → MiniLM embeddings (cached) → per (data set, partition): server split, PCA fitted on the
    server's data, client partitions → every party's LoRA fine-tune (cached, on Dask)
    → per controller: rounds of client trainings (one Prefect task per client per round, on Dask;
      a finished run is stored by content and read back by a re-run)
    → every quantum run's final global model under shots and fake-device noise (--noise-*)
    → results table, noise table, accuracy plots, MLflow (per-round metrics with step = round)

Lists sweep: ``--dataset sst2,subj --partition iid,dirichlet:0.5 --controller none,adaptive`` runs
every controller on every (data set, partition), all on the same splits and seeds;
``qllm run federated-compare`` is that sweep with the comparison's defaults.
"""

from __future__ import annotations

import re
from typing import Any

from mlflow import ActiveRun
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lab import noise, tracking
from lab.data import DataRequest
from lab.embedded import EmbeddedSplit
from lab.methods import federated as fed
from lab.methods.federated import FederatedParams
from lab.runtime import Runtime
from lab.teacher import TeacherSpec
from tasks.federated import federated_run, global_model_noise, llm_losses
from tasks.prepare import prepare_data, teacher_outputs

from .runner import CRASH_HOOKS, check_dask_address, dask_runner, flow_run_tags, mlflow_hint, run_from_cli

METHOD = fed.LLMQFL()


@flow(
    name="federated",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def federated(params: FederatedParams = FederatedParams()) -> dict[str, Any]:
    """Federated quantum classifiers with the LLM-QFL controller, compared on the same splits."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    root = runtime.artifact_root
    name = tracking.run_name(
        "federated",
        params.dataset,
        params.partition,
        clients=params.clients,
        rounds=params.rounds,
        controller=params.controller,
    )
    tags = {"flow": "federated", **flow_run_tags()}
    with tracking.parent_run(
        runtime, params.experiment, name, params.model_dump(), tags, system_metrics=True
    ) as parent:
        splits, records = federated_splits(params, root)
        llm = llm_losses(params, splits, root)

        rows, figures, outputs, noise_futures = [], {}, [], []
        settings = params.noise_settings()
        for split in splits:
            jobs = METHOD.jobs(params, fed.FederatedData(split, llm.get(split.name, {})))
            if params.baseline != "none":
                jobs.append(fed.baseline_job(params, split))
            runs = [federated_run(job, root) for job in jobs]
            noise_futures += [
                global_model_noise.submit(r, settings, params.noise_samples) for r in runs if settings and r.quantum
            ]
            target = fed.target_for(runs, params.target_accuracy)
            rows += [fed.summarize(r, target) for r in runs]
            plot = re.sub(r"[^A-Za-z0-9._-]+", "_", f"accuracy_{split.dataset}_{split.partition}") + ".png"
            figures[plot] = fed.accuracy_curves(runs, target)
            outputs += runs

        md = fed.markdown(rows)
        md += "\n\nReference (centralised logistic regression on the full embeddings): " + ", ".join(
            f"{s.name} {s.reference_accuracy:.4f}" for s in splits
        )
        if llm:
            md += "\n\n" + fed.llm_markdown(llm)
        noisy = [row for f in noise_futures for row in f.result()]
        if noisy:
            md += "\n\n" + noise.markdown(noisy, NOISE_TITLE, lambda r: f"{r['dataset']} {r['partition']} {r['run']}")
        fed.log_runs(parent, outputs, rows, figures, llm, records)
        log_noise(parent, noisy)
        run_id = parent.info.run_id
    create_table_artifact(key="federated-results", table=rows, description="LLM-QFL: controllers and baseline")
    if noisy:
        create_table_artifact(key="federated-noise", table=noisy, description="final global models under noise")
    create_markdown_artifact(key="federated-report", markdown=tracking.run_markdown(runtime, parent) + "\n\n" + md)
    return {
        "table": rows,
        "noise": noisy,
        "markdown": md,
        "mlflow_run_id": run_id,
        "llm": llm,
        "runs": [
            {
                "dataset": o.setting.dataset,
                "partition": o.setting.partition,
                "run": o.label,
                "cached": o.cached,
                "initial_accuracy": o.result.initial_accuracy,
                "records": [r.to_dict() for r in o.result.records],
            }
            for o in outputs
        ],
    }


NOISE_TITLE = "Final global models under noise (the circuit on Aer, once per sample; same test samples):"


def log_noise(parent: ActiveRun, noisy: list[dict[str, Any]]) -> None:
    """The noise table on the parent run, and ``test/accuracy/noisy <setting> <data> <partition>
    <run>`` (and ``agreement_with_exact/…``)."""
    if not noisy:
        return
    metrics = {
        tracking.summary_name(k, f"noisy {r['label']} {r['dataset']} {r['partition']} {r['run']}"): r[k]
        for r in noisy
        for k in ("accuracy", "agreement_with_exact")
    }
    tracking.with_retries(lambda: tracking.mlflow.log_metrics(metrics), what="log noise metrics")
    tracking.log_table(parent, noisy, "noise.json")


def federated_splits(
    params: FederatedParams, root: str
) -> tuple[list[fed.FederatedSplit], dict[str, tracking.DataRecord]]:
    """Every (data set, partition): its embeddings (cached, sharded over the workers) split
    between the server and the clients; and each data set's record, by name."""
    splits, records = [], {}
    for name in params.dataset:
        data = prepare_data(DataRequest(name, params.train_size, params.test_size, params.split_seed))
        records[name] = tracking.data_record(data)
        spec = TeacherSpec(kind="probe")
        embedded = EmbeddedSplit.of(data, teacher_outputs(data, spec, root, params.teacher_shard_size), spec)
        splits += [
            fed.build_split(
                data,
                embedded,
                partition,
                params.clients,
                params.model_spec(data.num_classes),
                params.server_fraction,
                params.seed,
            )
            for partition in params.partition
        ]
    return splits, records


def run_federated(params: FederatedParams) -> dict[str, Any]:
    """Run the flow from the command line and print where the results are."""
    METHOD.check(params)
    result = run_from_cli(federated, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
