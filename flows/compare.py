"""Every method that applies to a classification data set, on one data set with one budget and
one seed set, as a leaderboard: accuracy against trainable parameters and training time.

    data → MiniLM features and the probe teacher's soft labels (cached, shared by every method)
    → QD-LLM students, PQC heads, LoRA/QPA/QTHA fine-tunes and classical baselines, one Prefect
      task per method and seed on the Dask cluster (each cached by content)
    → LLM-QFL federated runs, their classical stand-in and a FedAvg logistic regression, rounds
      on the same cluster (each finished run stored by content)
    → one MLflow parent run (system metrics while it trains) with a child per method, a Prefect
      table artifact, and ``leaderboard.png``

Every method reads the same split: the same ``train_size`` training examples (the PQC head
holds ``val_fraction`` of them out for early stopping, the federated server keeps 10 % and the
clients share the rest) and the same test examples. Tuned (``trials`` > 0), every method is
tuned under the same trial budget on a hold-out of the training split, never the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from lab import leaderboard as board
from lab import registry, reporting, tracking
from lab.data import DataError, Dataset, hold_out, tuning_mask
from lab.embedded import EmbeddedSplit
from lab.methods import LEADERBOARD, METHODS, FeatureMethod, Method
from lab.methods import federated as fed
from lab.methods.peft import FinetuneMethod
from lab.methods.qdllm import QDLLM
from lab.params import DataOptions, Options, RunOptions, experiment, parse_values
from lab.params.body import BodyOptions
from lab.params.distill import MAX_QUBITS as STUDENT_MAX_QUBITS
from lab.params.head import MAX_QUBITS as HEAD_MAX_QUBITS
from lab.results import TrainingResult
from lab.runtime import Runtime
from lab.setfit_body import BodyJob, body_job
from lab.teacher import resolve_model
from lab.tuning import TuneOutcome, TuningOptions, check_fit
from qcore.federated.controller import RULES
from qcore.federated.partition import PartitionError
from qcore.models.pqc_head_config import MAX_ENCODERS
from tasks.federated import federated_data, federated_run
from tasks.prepare import embedded_split
from tasks.train import train_task
from tasks.tune import search, tuned

from .runner import CRASH_HOOKS, at_once, check_dask_address, dask_runner, flow_run_tags, mlflow_hint, run_from_cli

MethodName = Literal[tuple(LEADERBOARD)]  # type: ignore[valid-type]
SHARED = QDLLM()  # the shared split and features are the distill flow's, under the budget
# The classical rows a quantum method's paired test may be against.
CLASSICAL = tuple(m for m in LEADERBOARD if METHODS[m].is_baseline)
# `--quick`: a first look on 2 cores in minutes (the default budget is the real comparison).
QUICK: dict[str, Any] = {
    "train_size": 500,
    "test_size": 300,
    "trials": 4,
    "epochs": 5,
    "finetune_steps": 30,
    "max_length": 32,
    "rounds": 3,
    "llm_steps": 5,
    # Not in the first look: QPA as published (its row is the published failure) and the
    # fine-tunes' stand-ins (each as costly as its adapter; the default budget has them).
    "methods": [m for m in LEADERBOARD if m not in ("qpa-published", "qpa-classical", "qtha-classical")],
}


class CompareFields(Options):
    """The budget and its methods (see :class:`CompareParams`)."""

    train_size: int | None = Field(
        2000, ge=20, description="training examples every method learns from (stratified subsample)"
    )
    test_size: int | None = Field(
        None, ge=1, description="test examples every method is scored on (None: the whole test split)"
    )
    split_seed: int = Field(0, ge=0, description="seed of the split and subsampling")
    seeds: list[int] = Field(
        [0, 1, 2, 3, 4], min_length=1, description="training seeds: every method trains once per seed"
    )
    methods: list[MethodName] = Field(  # type: ignore[valid-type]  # the registry's ids, as an enum in the form
        list(LEADERBOARD), min_length=1, description="methods on the leaderboard: " + ", ".join(LEADERBOARD)
    )
    epochs: int = Field(
        10,
        ge=1,
        le=1000,
        description="budget: epochs of the QD-LLM student, the MLPs and the PQC head (at most; it stops early)",
    )
    batch_size: int = Field(32, ge=1, description="batch size of the QD-LLM student, the PQC head and the MLPs")
    finetune_steps: int = Field(100, ge=2, description="budget: training steps of LoRA, QPA and QTHA")
    finetune_batch_size: int = Field(16, ge=1, description="texts per fine-tuning step")
    max_length: int = Field(64, ge=8, description="tokens per text when fine-tuning")
    qubits: int = Field(11, ge=2, le=STUDENT_MAX_QUBITS, description="QD-LLM student qubits")
    blocks: int = Field(2, ge=1, le=20, description="QD-LLM ansatz blocks")
    head_qubits: int = Field(8, ge=2, le=HEAD_MAX_QUBITS, description="PQC head: module 2 qubits")
    head_encoders: int = Field(
        2,
        ge=0,
        le=MAX_ENCODERS,
        description="PQC head: amplitude-encoded encoders of module 1 (0: a linear layer into module 2)",
    )
    val_fraction: float = Field(
        0.15, gt=0, lt=1, description="PQC head: share of the training examples held out for early stopping"
    )
    clients: int = Field(5, ge=1, le=1000, description="federated clients (LLM-QFL and FedAvg)")
    rounds: int = Field(10, ge=1, le=1000, description="budget: federated rounds")
    controller: str = Field(
        "adaptive",
        description="LLM-QFL controller: a step rule (" + ", ".join(RULES) + ") or none (plain quantum FedAvg)",
    )
    llm_steps: int = Field(20, ge=1, description="LLM-QFL: LoRA steps of each party's LLM fine-tune")
    overrides: dict[str, Any] = Field(
        {},
        description="any method's own parameters, e.g. per-group learning rates: "
        '"qtha.adapter_lr=1e-2;qpa.circuit_lr=1e-3;lora.head_lr=0.03;qdllm.circuit_lr=0.05" (tuning starts from them)',
    )
    quick: bool = Field(
        False,
        description="a first look in minutes on 2 cores: "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items())
        + " (options given explicitly win)",
    )


class CompareParams(RunOptions, TuningOptions, CompareFields, BodyOptions, DataOptions):
    """Parameters of the compare flow (the CLI options, the Prefect UI form, prefect.yaml).

    The budget, and what it means to each method (:meth:`lab.methods.Method.for_budget`):
    - ``train_size`` training examples for every method (see the module docstring);
    - ``epochs`` passes over them for the QD-LLM student, the MLPs and the PQC head (its
      maximum: it stops early on its validation hold-out);
    - ``finetune_steps`` AdamW steps of ``finetune_batch_size`` texts for LoRA, QPA and QTHA
      (a transformer step costs some 100x a student's epoch of a batch, so they get steps);
    - ``rounds`` federated rounds of ``clients`` clients for LLM-QFL and FedAvg (each client's
      local steps are set by the LLM-QFL controller, starting from the federated flow's 10 or,
      tuned, the trials' choice);
    - every method keeps its own flow's learning rate and architecture defaults, but for the
      sizes below. Each method trains once per seed in ``seeds``.
    """

    experiment: str = experiment("qllm-compare")

    @model_validator(mode="before")
    @classmethod
    def _quick_preset(cls, values: Any) -> Any:
        """``quick``: the preset's values for every option not given."""
        if isinstance(values, dict) and str(values.get("quick", False)).lower() in ("true", "1"):
            return {**QUICK, **values}
        return values

    @field_validator("overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return parse_values(v, "overrides")

    @model_validator(mode="after")
    def _consistent(self) -> CompareParams:
        if self.controller != "none" and self.controller not in RULES:
            raise ValueError(f"controller {self.controller!r} is unknown; allowed: none, {', '.join(RULES)}")
        for key in self.overrides:
            m, _, name = key.partition(".")
            if m not in self.methods:
                raise ValueError(f"override {key!r} names no chosen method; chosen: {', '.join(self.methods)}")
            if name not in METHODS[m].params.model_fields:
                raise ValueError(f"override {key!r}: {name!r} is not a parameter of {m}")
        for m in self.methods:
            self.params_of(m)  # every override validates, naming the field and value
        if self.of_kind(fed.FederatedMethod):
            try:  # clients against train_size, refused in the federated flow's words
                fed.LLMQFL().for_budget(self, self.seeds[:1])
            except ValidationError as exc:
                raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self

    def params_of(self, m: str) -> list[BaseModel]:
        """Method ``m``'s parameters under the budget (one per seed, or one for all), with its
        overrides."""
        method = METHODS[m]
        own = {k.partition(".")[2]: v for k, v in self.overrides.items() if k.partition(".")[0] == m}
        try:
            return [method.for_trial(p, own) if own else p for p in method.for_budget(self, self.seeds)]
        except ValidationError as exc:
            raise ValueError(
                "; ".join(
                    f"{m}.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
                )
            ) from None

    def of_kind(self, kind: type) -> list[str]:
        """The chosen methods (registry ids) that are of ``kind``, in registry order."""
        return [m for m, method in METHODS.items() if m in self.methods and isinstance(method, kind)]

    def body_job(self, data: Dataset) -> BodyJob | None:
        """``body='setfit'``: the encoder fine-tuned on the training texts that no trial scores on
        (the tuning hold-out) and the PQC head does not stop early on (its validation hold-out),
        so neither those nor test texts reach the body; every feature and federated method then
        reads its embeddings (the fine-tunes adapt the encoder themselves)."""
        labels = np.asarray(data.train_labels)
        keep = np.ones(len(labels), dtype=bool)
        if self.trials:
            keep &= ~tuning_mask(labels, self.tune_fraction, self.sampler_seed)
        if "pqc-head" in self.methods:
            keep &= ~hold_out(labels, self.val_fraction, self.split_seed)
        return body_job(self, None, data, keep.tolist())

    def check_data(self) -> None:
        """Read and split the data set and check that every chosen method can use it (two
        classes or more, the fine-tuned model and its targets, a share for every client):
        bad input is refused here, before any server starts or anything is written."""
        shared: Any = self.params_of(SHARED.id)[0]
        data = SHARED.data_request(shared).load()  # as the flow reads it
        if (classes := len(np.unique(data.train_labels))) < 2:
            raise DataError(f"{self.dataset}: the training split holds {classes} class; a classifier needs two or more")
        if self.trials:
            check_fit(data.train_labels, self.tune_fraction, self.sampler_seed)
        self.body_job(data)  # a SetFit body: the setfit package and a usable training set
        for m in self.of_kind(FinetuneMethod):
            METHODS[m].jobs(self.params_of(m)[0], data)  # the adapter's preflight, with its overrides
        for m in self.of_kind(fed.FederatedMethod):
            method = METHODS[m]
            assert isinstance(method, fed.FederatedMethod)
            for fp in self.params_of(m):
                assert isinstance(fp, fed.FederatedParams)
                # the clients share what the server leaves; tuned, what the trials' hold-out leaves
                labels = [data.train_labels]
                if self.trials:
                    labels.append(data.tuning_view(self.tune_fraction, self.sampler_seed).train_labels)
                try:
                    for y in labels:
                        fed.plan_split(y, "iid", fp.clients, fp.server_fraction, fp.seed)
                except PartitionError as exc:
                    raise DataError(f"{self.dataset}: {exc}") from None
                if method.reads_llm and fp.uses_llm:
                    resolve_model(fp.llm_model)


# --- the flow -----------------------------------------------------------------------------------


def own_data(method: Method[Any, Any, Any], data: Dataset, split: EmbeddedSplit) -> Any:
    """What a method trains on: the shared embedded split (feature methods) or the texts."""
    return split if isinstance(method, FeatureMethod) else data


def untuned(params: CompareParams, data: Dataset, split: EmbeddedSplit, root: str) -> list[board.Group]:
    """Every per-seed training but the federated ones, submitted to the Dask cluster at once:
    each feature method on the shared split (in its own view, e.g. the PQC head's validation
    hold-out) and each adapter on the texts, one task per job."""
    pending: list[tuple[str, PrefectFuture[TrainingResult]]] = []
    for m in params.of_kind(FeatureMethod) + params.of_kind(FinetuneMethod):
        method = METHODS[m]
        for p in params.params_of(m):
            own = method.split(p, own_data(method, data, split))
            jobs = method.jobs(p, own)
            pending += [(m, f) for f in train_task(m).map(unmapped(m), jobs, unmapped(own), unmapped(root))]
    results = [(m, f.result()) for m, f in pending]
    return [board.Group(m, [r for k, r in results if k == m]) for m in dict.fromkeys(k for k, _ in results)]


def tuned_methods(
    params: CompareParams, data: Dataset, split: EmbeddedSplit, root: str
) -> tuple[list[board.Group], dict[str, Chosen]]:
    """Every method tuned under the same trial budget on a hold-out of the training split, all
    studies at once (:func:`flows.runner.at_once`). Each feature method and adapter then trains
    its best values once per seed and is scored on test (:func:`tasks.tune.tuned`); for the
    federated methods only the study runs here, and what it chose is returned for
    :func:`federated`'s final rounds."""

    def tune_one(m: str) -> board.Group:
        method = METHODS[m]
        base = method.seeded(params.params_of(m)[0], params.seeds[0])
        t = tuned(
            method,
            base,
            own_data(method, data, split),
            root,
            options=params,
            space=method.search_space,
            seeds=params.seeds,
        )
        log_study(m, t.study)
        return board.Group(m, t.results, t.study.best_values if t.study else {})

    def search_federated(m: str) -> Chosen:
        method, base = METHODS[m], federated_base(params, m)
        assert isinstance(method, fed.FederatedMethod)
        prepared = federated_data(method, base, data, split, root, (params.tune_fraction, params.sampler_seed))
        study, chosen = search(method, base, prepared, root, options=params, space=method.search_space)
        assert isinstance(chosen, fed.FederatedParams)
        log_study(m, study)
        return study, chosen

    trained = params.of_kind(FeatureMethod) + params.of_kind(FinetuneMethod)
    federated_methods = params.of_kind(fed.FederatedMethod)
    # The federated studies one after another (one thread): LLM-QFL and its stand-in share their
    # parties' LLM fine-tunes, stored by content, which two studies at once would both train.
    calls: list[Callable[[], Any]] = [partial(tune_one, m) for m in trained]
    *groups, searched = at_once([*calls, lambda: [search_federated(m) for m in federated_methods]])
    return groups, dict(zip(federated_methods, searched, strict=True))


def log_study(m: str, study: TuneOutcome | None) -> None:
    """What a method's study chose, in the flow's log (the report lists it again)."""
    if study is not None:
        get_run_logger().info("%s tuned: held-out %.4f with %s", m, study.best_value or float("nan"), study.best_values)


Chosen = tuple[TuneOutcome | None, fed.FederatedParams]  # a federated method's study, and what it chose


def federated_base(params: CompareParams, m: str) -> fed.FederatedParams:
    """A federated method's parameters under the budget, for the first seed."""
    first = params.params_of(m)[0]
    assert isinstance(first, fed.FederatedParams)
    return METHODS[m].seeded(first, params.seeds[0])


def federated(
    params: CompareParams, data: Dataset, split: EmbeddedSplit, root: str, chosen: dict[str, Chosen]
) -> list[board.Group]:
    """LLM-QFL, its classical stand-in and FedAvg logistic regression, one run per seed on the
    shared features (IID clients), with what their study chose (:func:`tuned_methods`; the budget's
    parameters untuned). A study's trials are tasks on the workers that run the view's rounds
    with their clients in their own process (sent to the cluster, a trial's clients would queue
    behind the other trials against their round's deadline, while their trial holds a worker).
    The final rounds run here and send each client's training to the cluster; LLM-QFL's training
    time counts its clients' seconds and the parties' LLM fine-tunes."""
    groups = []
    for m in params.of_kind(fed.FederatedMethod):
        method = METHODS[m]
        assert isinstance(method, fed.FederatedMethod)
        study, best = chosen.get(m, (None, federated_base(params, m)))
        prepared = federated_data(method, best, data, split, root)  # the same split for every seed

        # the seeds' rounds at once: their clients are short tasks, and nothing long is queued now
        runs = at_once([partial(federated_seed, method, best, prepared, root, seed) for seed in params.seeds])
        results = [r for rs in runs for r in rs]
        groups.append(board.Group(m, results, study.best_values if study else {}))
    return groups


def federated_seed(
    method: fed.FederatedMethod, best: fed.FederatedParams, prepared: fed.FederatedData, root: str, seed: int
) -> list[TrainingResult]:
    """One seed's federated run(s) of ``method``, as leaderboard rows (a dropped client is said)."""
    results = []
    for job in method.jobs(method.seeded(best, seed), prepared):
        out = federated_run(job, root)
        if dropped := sum(len(r.failed) for r in out.result.records):
            get_run_logger().warning("%s seed %d: %d client trainings were dropped", method.id, seed, dropped)
        results.append(method.summary(out, job))
    return results


@flow(
    name="compare",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def compare(params: CompareParams = CompareParams()) -> dict[str, Any]:
    """Every method on one data set, budget and seed set (each tuned under the same trial
    budget, or untuned with ``trials`` 0): a leaderboard of accuracy with 95 % intervals against
    trainable parameters and training time."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    root = runtime.artifact_root
    name = tracking.run_name(
        "compare", params.dataset, f"{len(params.methods)} methods", trials=params.trials, seeds=params.seeds
    )
    tags = {"flow": "compare", **flow_run_tags()}
    with tracking.parent_run(
        runtime, params.experiment, name, params.model_dump(), tags, system_metrics=True
    ) as parent:
        data, split = embedded_split(SHARED, params.params_of(SHARED.id)[0], root, params.body_job)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        groups, chosen = (
            tuned_methods(params, data, split, root) if params.trials else (untuned(params, data, split, root), {})
        )
        # Only now: a federated round waits on its clients with a deadline (the federated flow's
        # client timeout), which clients queued behind these trainings could miss. (A federated
        # trial's clients train inside the trial's task: no deadline waits on the queue, so the
        # federated studies run beside the others.)
        groups += federated(params, data, split, root, chosen)
        labels = {m: LEADERBOARD[m] for m in params.methods}
        rows = [board.trained_row(r) for g in groups for r in g.results]
        table = board.leaderboard(rows, labels)
        intervals = board.tuned_rows(groups, labels, split.test_y, classical=CLASSICAL)
        body = "SetFit body" if params.body == "setfit" else "frozen MiniLM"
        title = (
            f"{data.name} ({body}): {len(split.train_y)} training / {len(split.test_y)} test examples, "
            f"seeds {params.seeds}"
        )
        figure = reporting.leaderboard_plot(intervals, title)
        board.log_leaderboard(parent, tracking.data_record(data), table, rows, figure, intervals)
        champions = registry.crown_best(
            {g.method: g.results for g in groups if not METHODS[g.method].is_baseline},
            dataset=params.dataset,
            label_names=split.label_names,
            flow="compare",
        )
        run_id = parent.info.run_id
    md = f"{title}\n\n" + report(params, intervals, groups)
    create_table_artifact(key="compare-leaderboard", table=intervals, description=f"leaderboard: {title}")
    create_markdown_artifact(
        key="compare-report",
        markdown=f"{tracking.run_markdown(runtime, parent)}\n\n{md}\n\n"
        + reporting.figure_markdown(figure, "accuracy against trainable parameters and training time"),
    )
    reporting.close(figure)
    return {
        "table": table,
        "rows": rows,
        "intervals": intervals,
        "markdown": md,
        "mlflow_run_id": run_id,
        "champions": {m: f"models:/{v.name}/{v.version}" for m, v in champions.items()},
    }


def report(params: CompareParams, intervals: list[dict[str, Any]], groups: list[board.Group]) -> str:
    """The leaderboard, and how each method was set up (tuned with which values, or not)."""
    lines = [board.tuned_markdown(intervals), ""]
    if not params.trials:
        return "\n".join([*lines, "Untuned (trials 0): every method with its own flow's defaults."])
    lines.append(
        f"Tuned: {params.trials} trials per method on a {params.tune_fraction:g} hold-out of the training split."
    )
    for g in groups:
        if g.best:
            values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in g.best.items())
            lines.append(f"- {LEADERBOARD[g.method]}: {values}")
    return "\n".join(lines)


def run_compare(params: CompareParams) -> dict[str, Any]:
    """Run the flow from the command line and print the leaderboard and where it is. The data
    and every method's preconditions are checked first, before any server starts."""
    params.check_data()
    result = run_from_cli(compare, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"], after=" (leaderboard.png among its artifacts)"))
    if result["champions"]:
        print(f"\nRegistered models, now {registry.CHAMPION} of their method on {params.dataset}:")
        for method, uri in result["champions"].items():
            print(f"  {method}: {uri} (models:/{uri.split('/')[1]}@{registry.CHAMPION})")
    return result
