"""Prefect tasks of the federated runs: every party's LLM fine-tune and every client's local
training of a round on the Dask workers, one run that sends its rounds to them, and the final
global model's noise ablation."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lab.data import Dataset
from lab.embedded import EmbeddedSplit
from lab.methods import Hooks
from lab.methods import federated as fed
from lab.params.noise import NoiseSetting
from qcore.federated.client import ClientUpdate
from qcore.federated.server import ClientJob, Fit, Outcome, failure
from qcore.simulators.threads import set_threads

from .train import progress_artifact

BACKSTOP_SECONDS = 120.0  # how much longer than its own time limit a round waits for a silent client


@task(name="llm-finetune", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, task_run_name="llm-{who}")
def llm_finetune(
    who: str, texts: list[str], labels: list[int], num_classes: int, model: str | None, spec: Any, root: str
) -> dict[str, Any]:
    """One party's LoRA fine-tune of the language model (cached by content)."""
    set_threads(1)  # one per Dask worker: the workers share the cores
    return fed.llm_finetune(
        who, texts, labels, num_classes, model, spec, root, lambda message: get_run_logger().info(message)
    )


def llm_losses(params: fed.FederatedParams, splits: list[fed.FederatedSplit], root: str) -> dict[str, dict[str, Any]]:
    """Every party's LLM loss per split, fine-tuned in parallel on the workers (cached by content).
    A fine-tune that fails leaves that party without a loss: its steps stay as they are."""
    if not params.uses_llm:
        return {}
    spec = params.llm_spec()
    futures = {
        (s.name, who): llm_finetune.submit(
            f"{s.dataset}-{s.partition}-{who}",
            texts,
            [int(v) for v in labels],
            s.num_classes,
            params.llm_model,
            spec,
            root,
        )
        for s in splits
        for who, texts, labels in fed.parties(s)
    }
    out: dict[str, dict[str, Any]] = {s.name: {} for s in splits}
    for (name, who), future in futures.items():
        try:
            out[name][who] = future.result()
        except Exception as exc:  # noqa: BLE001 - the controller works without this party's loss
            get_run_logger().warning(
                "%s: the LLM fine-tune of %s failed (%s); its steps will not be rescaled", name, who, exc
            )
    return out


def federated_data(
    method: fed.FederatedMethod,
    params: fed.FederatedParams,
    data: Dataset,
    embedded: EmbeddedSplit,
    root: str,
    tuning: tuple[float, int] | None = None,
) -> fed.FederatedData:
    """``method``'s comparison split of ``params``' seed, with its parties' LLM losses when its
    controller reads them; with ``tuning`` (fraction, seed), also its trials' view
    (:meth:`~lab.methods.federated.FederatedMethod.tuning_split`) with LLM fine-tunes of its own
    parties, all fine-tunes at once on the workers."""
    split = method.compare_split(params, data, embedded)
    views = {} if tuning is None else {tuning: method.tuning_split(params, data, embedded, *tuning)}
    llm = llm_losses(params, [split, *views.values()], root) if method.reads_llm else {}
    return fed.FederatedData(
        split, llm.get(split.name, {}), {k: fed.FederatedData(v, llm.get(v.name, {})) for k, v in views.items()}
    )


@task(name="federated-client", cache_policy=NO_CACHE, task_run_name="{label}-r{job.round}-client{job.client.id}")
def train_client(job: ClientJob, label: str, fail: bool) -> ClientUpdate:
    """One client's local training for one round (no retries: a failed client is dropped)."""
    set_threads(1)  # one per Dask worker: the workers share the cores
    if fail:
        raise fed.SimulatedFailure(f"client {job.client.id} fails on purpose in round {job.round} (fail_rate)")
    return job.run()


def prefect_fit(label: str, *, fail_rate: float, seed: int, wait_seconds: float) -> Fit:
    """An executor for :meth:`FederatedRun.run`: each job a Prefect task on the Dask cluster.

    A client's own time limit raises inside its task; ``wait_seconds`` is the flow's backstop for
    a worker that does not answer at all. Either way, and on any other error, the client is
    reported as a :class:`~qcore.federated.server.ClientFailure`.
    """

    def fit(jobs: list[ClientJob]) -> list[Outcome]:
        failing = fed.simulated_failures(seed, jobs[0].round, [j.client.id for j in jobs], fail_rate)
        futures = [train_client.submit(j, label, j.client.id in failing) for j in jobs]
        deadline = time.monotonic() + wait_seconds
        outcomes: list[Outcome] = []
        for job, future in zip(jobs, futures, strict=True):
            try:
                outcomes.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - the client is dropped and counted, whatever went wrong
                outcomes.append(failure(job.client.id, exc))
        return outcomes

    return fit


@task(name="federated-run", cache_policy=NO_CACHE, task_run_name="{job.name}-s{job.seed}")
def federated_run(job: fed.RunJob, root: str) -> fed.RunOutput:
    """One federated run (or its stored result). Called, not submitted: it runs in the flow's
    process and sends each round's client trainings to the Dask workers as tasks."""
    params = job.params
    fit = prefect_fit(
        job.name, fail_rate=params.fail_rate, seed=params.seed, wait_seconds=params.client_timeout + BACKSTOP_SECONDS
    )
    log = get_run_logger()
    hooks = Hooks(
        log=log.info,
        warn=log.warning,
        fit=fit,
        progress=progress_artifact(f"federated-{job.name}-s{job.seed}", params.rounds),
    )
    return fed.run_setting(job, root, hooks)


@task(name="federated-noise", retries=1, cache_policy=NO_CACHE, task_run_name="noisy-{out.label}")
def global_model_noise(out: fed.RunOutput, settings: list[NoiseSetting], samples: int) -> list[dict[str, Any]]:
    """A run's final global model under each noise setting, beside its exact predictions."""
    set_threads(1)  # one per Dask worker: the workers share the cores
    rows = fed.noisy_evaluation(out, settings, samples)
    get_run_logger().info(
        "%s %s under noise: %s",
        out.setting.name,
        out.label,
        ", ".join(f"{r['label']} {r['accuracy']:.4f} ({r['seconds']:.1f} s)" for r in rows),
    )
    return rows
