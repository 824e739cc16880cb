"""LLM-QFL as a Prefect flow: simulated federated rounds of quantum classifiers on Dask, steered
by an LLM controller, beside plain quantum FedAvg and a classical federated baseline.

Paper: LLM-QFL: LLM-guided quantum federated learning, arXiv 2505.18656.

    data → MiniLM embeddings (cached) → per (data set, partition): server split, PCA fitted on the
    server's data, client partitions → every party's LoRA fine-tune (cached, on Dask)
    → per controller: rounds of client trainings (one Prefect task per client per round, on Dask;
      a finished run is stored by content and read back by a re-run)
    → results table, accuracy plots, MLflow (per-round metrics with step = round)

Lists sweep: ``--dataset sst2,subj --partition iid,dirichlet:0.5 --controller none,adaptive`` runs
every controller on every (data set, partition), all on the same splits and seeds;
``qllm run federated-compare`` is that sweep with the comparison's defaults.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qcore.federated.client import LocalTraining
from qcore.federated.controller import RULES, Controller, make_controller
from qcore.federated.llm import LLMSpec
from qcore.federated.client_models import ModelSpec
from qcore.federated.partition import PartitionError, PartitionSpec
from qcore.federated.server import FederatedRun, RoundRecord
from qcore.federated.strategy import make_strategy
from tasks import federated as fed
from tasks import tracking
from tasks.data import DataError, load_dataset
from tasks.prepare import prepare_data, teacher_outputs
from tasks.settings import Settings
from tasks.teacher import ModelNotFoundError, TeacherSpec, resolve_model
from tasks.train import progress_artifact

from .runner import check_dask_address, dask_runner, mlflow_hint, run_from_cli

BACKSTOP_SECONDS = 120.0  # how much longer than its own time limit the flow waits for a silent client


class FederatedParams(BaseModel):
    """Parameters of the federated flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    model_config = ConfigDict(extra="forbid")

    dataset: list[str] = Field(["sst2"], min_length=1, description="named sets (sst2, subj, trec, ag_news) or "
                                                                   "file paths/URLs; a list sweeps")
    train_size: int | None = Field(2000, ge=2, description="training examples (stratified subsample), "
                                                           "shared by the server and the clients")
    test_size: int | None = Field(None, ge=1, description="test examples (None: the whole test split)")
    split_seed: int = Field(0, ge=0, description="seed of the train/test split and subsampling")
    clients: int = Field(5, ge=1, le=10_000, description="federated clients")
    rounds: int = Field(10, ge=1, le=10_000, description="communication rounds")
    partition: list[str] = Field(["iid"], min_length=1, description="iid or dirichlet:<alpha> (alpha > 0); "
                                                                    "a list sweeps")
    strategy: Literal["fedavg", "fedprox", "fedadam"] = Field("fedavg", description="server strategy")
    proximal_mu: float = Field(0.01, ge=0, description="fedprox: weight of the proximal term")
    server_lr: float = Field(0.1, gt=0, description="fedadam: server learning rate")
    controller: list[str] = Field(["adaptive"], min_length=1, description=(
        "none (plain QFL), a step rule (" + ", ".join(RULES) + ") or generative:package.module:function; "
        "a list compares them"))
    baseline: Literal["none", "logreg", "mlp"] = Field("none", description="classical model also trained under "
                                                                           "FedAvg on the same splits")
    local_steps: int = Field(10, ge=1, description="initial local steps per client and round (the paper's maxiter)")
    max_steps: int = Field(100, ge=1, description="cap of the step rules (the paper's MAX_MAXITER)")
    max_increment: int = Field(100, ge=0, description="hybrid rule: largest increment per round")
    select_fraction: float = Field(0.1, gt=0, le=1, description="share of clients aggregated, closest to the "
                                                                "server loss first (at least one)")
    stop_threshold: float = Field(0.4, ge=0, description="stop once |server objective - server LLM loss| is "
                                                         "below this (0: never)")
    objective_unit: Literal["bits", "nats"] = Field("bits", description=(
        "unit of the VQC objective compared with the LLM loss (nats); the paper's code uses bits"))
    generative_fallback: Literal["incremental", "dynamic-weighted", "logarithmic", "adaptive", "hybrid"] = Field(
        "adaptive", description="rule used when a generative controller's answer is invalid")
    model: Literal["vqc", "qdllm"] = Field("vqc", description="client model: the paper's VQC or the QD-LLM student")
    qubits: int = Field(4, ge=2, le=12, description="qubits = PCA components of the embeddings")
    readout: Literal["mod", "parity"] = Field("mod", description="vqc: class of basis state i is i mod C "
                                                                 "(Qiskit-ML's VQC) or popcount(i) mod C")
    optimizer: Literal["adam", "cobyla", "spsa"] = Field("adam", description="local optimiser of the quantum clients")
    lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate, or SPSA's gain a (about 1 works)")
    batch_size: int | None = Field(None, ge=1, description="adam: mini-batch size (None: whole partition)")
    backend: Literal["exact", "aer"] = Field("exact", description="client simulator: exact or aer (shots)")
    shots: int | None = Field(None, ge=1, description="aer: shots per circuit (None: exact expectations)")
    server_fraction: float = Field(0.1, gt=0, le=0.5, description="share of the training set the server "
                                                                  "keeps as its own data")
    llm_model: str | None = Field(None, description="LLM each party fine-tunes (Hugging Face name or folder; "
                                                    "default the embedded all-MiniLM-L6-v2)")
    llm_steps: int = Field(20, ge=1, description="LoRA fine-tuning steps per party")
    llm_batch_size: int = Field(16, ge=1, description="LoRA fine-tuning batch size")
    llm_max_length: int = Field(48, ge=2, description="tokens per text for the LLM")
    llm_lr: float = Field(2e-3, gt=0, description="LoRA learning rate")
    llm_rank: int = Field(8, ge=1, description="LoRA rank r")
    client_timeout: float = Field(600.0, gt=0, description="seconds a client may train per round before it "
                                                           "is dropped from the round")
    fail_rate: float = Field(0.0, ge=0, lt=1, description="simulated client failure probability per round "
                                                          "(seeded; exercises the drop path)")
    target_accuracy: float | None = Field(None, gt=0, le=1, description="accuracy to reach (None: 0.95 x the "
                                                                        "best any quantum run reached)")
    seed: int = Field(0, ge=0, description="seed of partitions, server split, models and clients")
    teacher_shard_size: int = Field(4000, ge=1, description="texts per embedding shard on the Dask workers")
    experiment: str = Field("qllm-federated", min_length=1, description="MLflow experiment name")
    dask_address: str | None = Field(None, description="Dask scheduler address (default: a temporary LocalCluster)")

    @field_validator("partition")
    @classmethod
    def _partitions(cls, v: list[str]) -> list[str]:
        return [str(PartitionSpec.parse(p)) for p in v]  # PartitionError is a ValueError: pydantic reports it

    @field_validator("controller")
    @classmethod
    def _controllers(cls, v: list[str]) -> list[str]:
        for spec in v:
            make_controller(spec)  # refuses unknown names and generative callables that do not load
        if len(set(v)) != len(v):
            raise ValueError(f"controllers {v} repeat a name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FederatedParams:
        if self.shots is not None and self.backend != "aer":
            raise ValueError(f"shots={self.shots} needs --backend aer (the exact backend has no shots)")
        if self.batch_size is not None and self.optimizer != "adam":
            raise ValueError(f"batch_size applies to --optimizer adam only; {self.optimizer} uses the whole partition")
        if self.train_size is not None:
            pool = self.train_size - max(1, round(self.train_size * self.server_fraction))
            if self.clients > pool:
                raise ValueError(f"clients={self.clients} exceeds the {pool} training examples left for clients "
                                 f"(train_size {self.train_size} minus the server's share): every client needs one")
        return self

    # -- what the run is made of
    def model_spec(self, num_classes: int) -> ModelSpec:
        options = {"readout": self.readout} if self.model == "vqc" else {}
        backend_options = {"shots": self.shots} if self.shots is not None else {}
        return ModelSpec(self.model, self.qubits, num_classes, backend=self.backend, seed=self.seed,
                         options=options, backend_options=backend_options)

    def baseline_spec(self, num_classes: int) -> ModelSpec:
        return ModelSpec(self.baseline, self.qubits, num_classes, seed=self.seed)

    def train_settings(self, quantum: bool) -> LocalTraining:
        """The quantum clients' optimiser; the classical baseline always trains by Adam."""
        optimizer = self.optimizer if quantum else "adam"
        batch_size = self.batch_size if optimizer == "adam" else None
        return LocalTraining(optimizer=optimizer, lr=self.lr, batch_size=batch_size, time_limit=self.client_timeout)

    def llm_spec(self) -> LLMSpec:
        return LLMSpec(steps=self.llm_steps, batch_size=self.llm_batch_size, max_length=self.llm_max_length,
                       lr=self.llm_lr, rank=self.llm_rank, alpha=2 * self.llm_rank, seed=self.seed)

    def controller_for(self, spec: str) -> Controller:
        return make_controller(spec, max_steps=self.max_steps, max_increment=self.max_increment,
                               select_fraction=self.select_fraction, stop_threshold=self.stop_threshold,
                               fallback_rule=self.generative_fallback)

    @property
    def uses_llm(self) -> bool:
        return any(self.controller_for(c).uses_llm for c in self.controller)


class FederatedCompareParams(FederatedParams):
    """The comparison: plain QFL, the paper's adaptive rule and a gentler rule, plus a classical
    federated logistic regression, on SST-2 and SUBJ, IID and Dirichlet(0.5)."""

    dataset: list[str] = Field(["sst2", "subj"], min_length=1, description="data sets compared")
    partition: list[str] = Field(["iid", "dirichlet:0.5"], min_length=1, description="partitions compared")
    controller: list[str] = Field(["none", "adaptive", "dynamic-weighted"], min_length=1,
                                  description="controllers compared")
    baseline: Literal["none", "logreg", "mlp"] = Field("logreg", description="classical federated baseline")


# --- the flow --------------------------------------------------------------------------------------

def llm_losses(params: FederatedParams, settings: list[fed.Setting], root: str) -> dict[str, dict[str, Any]]:
    """Every party's LLM loss per setting, fine-tuned in parallel on the workers (cached by content).
    A fine-tune that fails leaves that party without a loss: its steps stay as they are."""
    if not params.uses_llm:
        return {}
    spec = params.llm_spec()
    futures: dict[tuple[str, str], Any] = {}
    for s in settings:
        parties = [(f"client{c.id}", texts, c.y) for c, texts in zip(s.clients, s.client_texts)]
        parties.append(("server", s.server_texts, s.server[1]))
        for who, texts, labels in parties:
            futures[s.name, who] = fed.llm_finetune.submit(f"{s.dataset}-{s.partition}-{who}", texts,
                                                           [int(v) for v in labels], s.num_classes,
                                                           params.llm_model, spec, root)
    out: dict[str, dict[str, Any]] = {s.name: {} for s in settings}
    for (name, who), future in futures.items():
        try:
            out[name][who] = future.result()
        except Exception as exc:  # noqa: BLE001 - the controller works without this party's loss
            get_run_logger().warning("%s: the LLM fine-tune of %s failed (%s); its steps will not be rescaled",
                                     name, who, exc)
    return out


def _progress(setting: fed.Setting, label: str, rounds: int, seed: int) -> Callable[[RoundRecord], None]:
    """Each round in the flow log and in the run's Prefect progress artifact
    (``progress-federated-<data set>-<partition>-<label>-s<seed>``)."""
    report = progress_artifact(f"federated-{setting.dataset}-{setting.partition}-{label}-s{seed}", rounds)

    def show(r: RoundRecord) -> None:
        dropped = f", dropped {r.failed}" if r.failed else ""
        server = "–" if r.server_loss is None else f"{r.server_loss:.3f}"
        print(f"{setting.name} {label} round {r.round}/{rounds}: accuracy {r.accuracy:.4f}, server loss {server}, "
              f"aggregated {list(r.selected)}, next steps {r.next_steps}{dropped}"
              + (" — stop" if r.stop else ""))
        report(rounds if r.stop else r.round, f"round {r.round}/{rounds}, accuracy {r.accuracy:.4f}"
               + (", stopped early" if r.stop else ""))
    return show


# Parameters a run's result does not depend on beyond its setting (data, split, partition and
# clients are in the setting's fingerprint, the LLM settings in the parties' losses) or at all.
NOT_IN_RUN_KEY = {"dataset", "train_size", "test_size", "split_seed", "clients", "partition", "server_fraction",
                  "controller", "baseline", "llm_model", "llm_steps", "llm_batch_size", "llm_max_length", "llm_lr",
                  "llm_rank", "target_accuracy", "teacher_shard_size", "experiment", "dask_address"}


def run_setting(params: FederatedParams, setting: fed.Setting, label: str, spec: ModelSpec,
                controller_spec: str, llm: dict[str, Any], root: str) -> fed.RunOutput:
    """One federated run on ``setting`` (a controller, or a classical baseline under ``label``),
    its client trainings sent to the cluster round by round; shared with the compare flow.

    A finished run is stored under ``<root>/federated/runs/``; the same run again is read back
    instead of trained. Not stored: runs of a generative controller (its answers come from code
    and models the key cannot see) and runs that lost clients to real failures."""
    controller = params.controller_for(controller_spec)
    losses = {who: v["loss"] for who, v in sorted(llm.items())}
    key = fed.run_key(setting, spec, controller_spec, params.model_dump(exclude=NOT_IN_RUN_KEY), losses)
    storable = not controller_spec.startswith("generative:")
    if storable and (stored := fed.load_run(root, key)) is not None:
        print(f"{setting.name} {label}: {len(stored.records)} rounds reused from an earlier run "
              f"(final accuracy {stored.records[-1].accuracy:.4f})")
        return fed.RunOutput(setting, label, spec, stored, cached=True)
    run = FederatedRun(
        clients=[dataclasses.replace(c, model=spec) for c in setting.clients], model=spec,
        strategy=make_strategy(params.strategy, proximal_mu=params.proximal_mu, server_lr=params.server_lr),
        controller=controller, server_data=setting.server, test_data=setting.test,
        settings=params.train_settings(spec.quantum), local_steps=params.local_steps,
        llm_losses={c.id: llm[f"client{c.id}"]["loss"] for c in setting.clients if f"client{c.id}" in llm},
        server_llm_loss=llm["server"]["loss"] if "server" in llm else None,
        objective_unit=params.objective_unit, seed=params.seed)
    fit = fed.prefect_fit(f"{setting.dataset}-{setting.partition}-{label}", fail_rate=params.fail_rate,
                          seed=params.seed, wait_seconds=params.client_timeout + BACKSTOP_SECONDS)
    result = run.run(params.rounds, fit=fit, on_round=_progress(setting, label, params.rounds, params.seed))
    if lost := fed.real_failures(result, [c.id for c in setting.clients], params.seed, params.fail_rate):
        get_run_logger().warning("%s %s: not stored, %d client trainings failed (round, client: %s); "
                                 "a re-run trains it again", setting.name, label, len(lost), lost)
    elif storable:
        fed.store_run(root, key, result)
    return fed.RunOutput(setting, label, spec, result)


@flow(name="federated", task_runner=dask_runner(), log_prints=True)
def federated(params: FederatedParams = FederatedParams()) -> dict[str, Any]:
    """Federated quantum classifiers with the LLM-QFL controller, compared on the same splits."""
    check_dask_address(params.dask_address)
    store = Settings()
    root = store.artifact_root
    with tracking.parent_run(store, params.experiment, "federated", params.model_dump(),
                             tags={"flow": "federated"}, system_metrics=True) as parent:
        settings: list[fed.Setting] = []
        for name in params.dataset:
            data = prepare_data(name, train_size=params.train_size, test_size=params.test_size, seed=params.split_seed)
            embeddings = teacher_outputs(data, TeacherSpec(kind="probe"), root, params.teacher_shard_size)
            for partition in params.partition:
                settings.append(fed.build_setting(data, embeddings, partition, params.clients,
                                                  params.model_spec(data.num_classes), params.server_fraction,
                                                  params.seed))
        llm = llm_losses(params, settings, root)

        rows, figures, outputs = [], {}, []
        for setting in settings:
            runs = [run_setting(params, setting, c, params.model_spec(setting.num_classes), c,
                                llm.get(setting.name, {}), root) for c in params.controller]
            if params.baseline != "none":
                runs.append(run_setting(params, setting, f"baseline-{params.baseline}",
                                        params.baseline_spec(setting.num_classes), "none", {}, root))
            target = fed.target_for(runs, params.target_accuracy)
            rows += [fed.summarize(r, target) for r in runs]
            plot = re.sub(r"[^A-Za-z0-9._-]+", "_", f"accuracy_{setting.dataset}_{setting.partition}") + ".png"
            figures[plot] = fed.accuracy_curves(runs, target)
            outputs += runs

        md = fed.markdown(rows)
        md += "\n\nReference (centralised logistic regression on the full embeddings): " + ", ".join(
            f"{s.name} {s.reference_accuracy:.4f}" for s in settings)
        if llm:
            md += "\n\n" + fed.llm_markdown(llm)
        fed.log_runs(parent, outputs, rows, figures, llm)
        run_id = parent.info.run_id
    create_table_artifact(key="federated-results", table=rows, description="LLM-QFL: controllers and baseline")
    create_markdown_artifact(key="federated-report", markdown=md)
    return {"table": rows, "markdown": md, "mlflow_run_id": run_id, "llm": llm,
            "runs": [{"dataset": o.setting.dataset, "partition": o.setting.partition, "run": o.label,
                      "cached": o.cached, "initial_accuracy": o.result.initial_accuracy,
                      "records": [r.to_dict() for r in o.result.records]} for o in outputs]}


def preflight(params: FederatedParams) -> None:
    """Refuse bad input in seconds, before any server starts or anything is written: data set
    names and sizes, every partition of every data set, the LLM's availability offline."""
    for name in params.dataset:
        data = load_dataset(name, train_size=params.train_size, test_size=params.test_size, seed=params.split_seed)
        for partition in params.partition:
            try:
                fed.plan_split(data.train_labels, partition, params.clients, params.server_fraction, params.seed)
            except PartitionError as exc:
                raise DataError(f"{name}, partition {partition}: {exc}") from None
    if params.uses_llm:
        try:
            resolve_model(params.llm_model)
        except ModelNotFoundError as exc:
            raise DataError(f"llm_model: {exc}") from None


def run_federated(params: FederatedParams) -> dict[str, Any]:
    """Run the flow from the command line and print where the results are."""
    preflight(params)
    result = run_from_cli(federated, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
