"""Hyper-parameter search for one method, as a Prefect flow:

data → the method's features or texts (cached, as in its own flow)
→ a hold-out of the training split as the trials' test split (for an ``lm`` fine-tune, the end
  of the text the base never saw, scored by perplexity, lower being better; the base pretrained
  first when no ``model`` is fixed, as the peft flow does)
→ Optuna trials (TPE, median pruning), ``parallel_trials`` at a time as Prefect tasks on the
  Dask cluster, each an MLflow child run; the study in SQLite under the artifact root, so a
  killed or repeated tune resumes where it stopped
→ the best values, trained once per seed on the whole training split and scored on the test
  split (the only time it is read), with a 95 % interval and the majority-class rate

qllm run tune --method qtha --trials 12
qllm run tune --method qdllm --trials 20 --space "lr=1e-3:0.3:log" --fixed "qubits=8;epochs=20"
qllm run tune --method qpa --trials 6 --seeds 0,1,2 --fixed "task=lm;target=c_attn;steps=300"
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from mlflow import ActiveRun
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field, field_validator, model_validator

from lab import leaderboard as board
from lab import peft_report, tracking
from lab.artifacts import download_folder
from lab.corpus import Corpus
from lab.methods import METHODS, FeatureMethod, Method
from lab.methods.base import is_list_field
from lab.methods.peft import FinetuneMethod, PeftParams, finetune_data, load_data
from lab.params import Options, RunOptions, experiment, parse_assignments, parse_values
from lab.pretrain import generated_samples, pretrained_base, speech_prompts
from lab.runtime import Runtime
from lab.search_space import Dimension, parse_dimension
from lab.tuning import TrialOutcome, TuneError, TuningOptions, check_fit, check_space
from tasks.prepare import embeddings
from tasks.tune import Tuned, tuned

from .runner import CRASH_HOOKS, check_dask_address, dask_runner, flow_run_tags, mlflow_hint, run_from_cli

# The methods whose data this flow prepares and whose final trainings are tasks; the federated
# methods are tuned by `qllm run compare`, whose flow runs their final rounds.
TUNABLE = tuple(
    m for m, method in METHODS.items() if method.search_space and isinstance(method, (FeatureMethod, FinetuneMethod))
)
TunableName = Literal[TUNABLE]  # type: ignore[valid-type]


class TuneFields(Options):
    """The tune flow's own parameters (before the tuning budget and the run group in the form)."""

    method: TunableName = Field("qdllm", description="the method to tune: " + ", ".join(TUNABLE))
    fixed: dict[str, Any] = Field(
        {}, description='the method\'s other parameters, the same in every trial, e.g. "qubits=8;epochs=20"'
    )
    space: dict[str, str] = Field(
        {},
        description='search ranges replacing or adding to the method\'s own, e.g. "lr=1e-4:0.3:log;blocks=1:6" '
        "(low:high, low:high:log, or a,b,c)",
    )
    seeds: list[int] = Field(
        [0, 1, 2, 3, 4], min_length=1, description="seeds of the final trainings of the best values, scored on test"
    )


class TuneParams(RunOptions, TuningOptions, TuneFields):
    """Parameters of the tune flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    experiment: str = experiment("qllm-tune")

    @field_validator("fixed", mode="before")
    @classmethod
    def _parse_fixed(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return parse_values(v, "fixed")

    @field_validator("space", mode="before")
    @classmethod
    def _parse_space(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return {k: ",".join(vals) for k, vals in parse_assignments(v, "space").items()}

    @model_validator(mode="after")
    def _consistent(self) -> TuneParams:
        """The fixed values and every search bound are the method's and within its ranges (seeds
        that repeat are refused by :class:`lab.params.Options`): refused here, before any data is
        read or any trial runs."""
        method = self.tuned_method
        if bad := sorted(set(self.fixed) & {"seed", "seeds"}):
            raise ValueError(f"fixed {bad}: the seeds of the final trainings are --seeds")
        try:
            check_space(method, self.base(), self.search_space())
        except TuneError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def tuned_method(self) -> Method[Any, Any, Any]:
        return METHODS[self.method]

    def base(self) -> BaseModel:
        """The method's parameters every trial starts from (the first seed's)."""
        method = self.tuned_method
        fields = method.params.model_fields
        if unknown := sorted(set(self.fixed) - set(fields)):
            raise TuneError(f"fixed {unknown} are not parameters of {method.id}; allowed: {', '.join(fields)}")
        values = {k: [v] if is_list_field(fields[k]) and not isinstance(v, list) else v for k, v in self.fixed.items()}
        if several := [k for k, v in values.items() if isinstance(v, list) and len(v) > 1 and k in method.search_space]:
            raise TuneError(f"fixed {several} name several values: a trial trains one configuration")
        base = method.seeded(method.params.model_validate(values), self.seeds[0])
        if several := [
            k for k, v in base.model_dump().items() if k in method.search_space and isinstance(v, list) and len(v) > 1
        ]:
            raise TuneError(f"{method.id}'s {several} hold several values: give one with --fixed")
        return base

    def search_space(self) -> dict[str, Dimension]:
        declared = self.tuned_method.tuning_space(self.base())
        overrides = {k: parse_dimension(k, v, declared.get(k)) for k, v in self.space.items()}
        return {**declared, **overrides}


def method_data(method: Method[Any, Any, Any], params: BaseModel, root: str) -> tuple[Any, Any, BaseModel]:
    """The data set (texts), what the method trains on, prepared as its own flow does (the
    teacher's outputs cached), and the parameters that read it: an ``lm`` fine-tune without a
    model gets the base the peft flow pretrains (cached) and the text that base never saw."""
    if isinstance(method, FeatureMethod):
        return (*embeddings(method, params, root), params)
    if isinstance(method, FinetuneMethod):
        assert isinstance(params, PeftParams)
        data = load_data(params)
        if isinstance(data, Corpus) and params.model is None:
            folder, _ = pretrained_base(data, root, params.recipe(), log=print)
            params = params.model_copy(update={"model": str(folder)})
        data = finetune_data(params, data)
        return data, data, params
    raise TuneError(f"{method.id} has no data the tune flow knows how to prepare")


@flow(
    name="tune",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def tune(params: TuneParams = TuneParams()) -> dict[str, Any]:
    """Search one method's hyper-parameters on a training hold-out, then score the best on test."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    root = runtime.artifact_root
    method, base = params.tuned_method, params.base()
    data_name = getattr(base, "corpus" if getattr(base, "task", "") == "lm" else "dataset", "")
    name = tracking.run_name("tune", method.id, data_name, trials=params.trials, seeds=params.seeds)
    tags = {"flow": "tune", "method": method.id, **flow_run_tags()}
    with tracking.parent_run(
        runtime, params.experiment, name, params.model_dump(), tags, system_metrics=True
    ) as parent:
        texts, data, base = method_data(method, base, root)
        metric = method.objective(base).metric
        record = tracking.data_record(texts)
        tracking.set_tags(parent, {"data_hash": texts.content_hash})

        def log_trial(outcome: TrialOutcome) -> None:
            tracking.log_child(
                parent,
                f"trial {outcome.number}",
                kind="trial",
                data=record,
                params=outcome.values,
                metrics={"seconds": outcome.seconds, **({} if outcome.value is None else {"value": outcome.value})},
                history={f"held_out_{metric}": [v for _, v in outcome.curve]},
                status="FAILED" if outcome.state == "failed" else "FINISHED",
                tags={
                    "state": outcome.state,
                    **({"error": outcome.error[:5000]} if outcome.error else {}),
                },
            )

        result = tuned(
            method,
            base,
            data,
            root,
            options=params,
            space=params.search_space(),
            seeds=params.seeds,
            on_trial=log_trial,
        )
        rows = final_rows(method, result, data)
        md = report_markdown(result, rows, lm=isinstance(data, Corpus))
        log_mlflow(parent, record, result, rows, data)
        run_id = parent.info.run_id
    trials = result.study.table() if result.study else []
    if trials:
        create_table_artifact(
            key=f"tune-{board.artifact_key(method.id)}-trials", table=trials, description="the trials"
        )
    report = tracking.run_markdown(runtime, parent) + "\n\n" + md
    create_markdown_artifact(key=f"tune-{board.artifact_key(method.id)}", markdown=report)
    return {
        "rows": rows,
        "trials": trials,
        "best": result.study.best_values if result.study else {},
        "markdown": md,
        "mlflow_run_id": run_id,
        "study": result.study,
    }


def test_labels(data: Any) -> Any:
    return data.test_labels if hasattr(data, "test_labels") else data.test_y


def final_rows(method: Method[Any, Any, Any], result: Tuned, data: Any) -> list[dict[str, Any]]:
    """The final trainings' row: accuracy with its interval, or (``lm``) each metric's mean and
    standard deviation over the seeds."""
    if isinstance(data, Corpus):
        return [peft_report.seed_row(method.id, result.results)]
    return board.tuned_rows([board.Group(result.method, result.results)], {method.id: method.label}, test_labels(data))


def report_markdown(result: Tuned, rows: list[dict[str, Any]], lm: bool = False) -> str:
    study = result.study
    lines = []
    if study is not None:
        done = {s: sum(t.state == s for t in study.trials) for s in ("complete", "pruned", "failed")}
        lines += [
            f"Study {study.key[:12]} ({study.storage}): {len(study.trials)} trials "
            f"({done['complete']} complete, {done['pruned']} pruned, {done['failed']} failed; "
            f"{study.resumed} from an earlier run).",
            f"Best held-out {study.objective.metric} {study.best_value:.4f} with "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in study.best_values.items()),
            "",
        ]
    return "\n".join([*lines, peft_report.seed_markdown(rows) if lm else board.tuned_markdown(rows)])


def log_mlflow(
    parent: ActiveRun, record: tracking.DataRecord, result: Tuned, rows: list[dict[str, Any]], data: Any
) -> None:
    """The final trainings as children (with their parameter counts; an ``lm`` fine-tune's with
    its merged model's place and a few texts it wrote), the rows and the trials table on the parent."""
    for r in result.results:
        lm = isinstance(data, Corpus) and "merged" in r.files
        tracking.log_child(
            parent,
            r.name,
            kind="final",
            data=record,
            params=r.job,
            metrics={**r.metrics, **{f"params_{k}": v for k, v in r.params.items()}},
            history=r.history,
            files={"samples.txt": written_samples(r.files["merged"], data).encode()} if lm else None,
            tags={"method": r.method, **({"merged_model": r.files["merged"]} if lm else {})},
        )
    tracking.log_table(parent, rows, "tuned.json")
    if result.study is not None:
        tracking.log_table(parent, result.study.table(), "trials.json")
        tracking.set_tags(parent, {"study": result.study.key[:32], "study_storage": result.study.storage})


def written_samples(merged: str, corpus: Corpus) -> str:
    """What the merged language model at ``merged`` writes after the first validation speakers' names."""
    with tempfile.TemporaryDirectory() as tmp:
        return generated_samples(download_folder(merged, Path(tmp) / "merged"), speech_prompts(corpus.val_text))


def run_tune(params: TuneParams) -> dict[str, Any]:
    """Run the flow from the command line and print the trials, the final rows and where they are.
    The parameters and the space were checked when ``params`` was built; the data is read here,
    before any server starts."""
    method, base = params.tuned_method, params.base()
    method.check(base)
    if params.trials and isinstance(method, FeatureMethod):
        check_fit(method.data_request(base).load().train_labels, params.tune_fraction, params.sampler_seed)
    elif params.trials:  # a hold-out the training split or text cannot give is refused here
        assert isinstance(base, PeftParams)
        method.tuning_view(finetune_data(base, load_data(base)), params.tune_fraction, params.sampler_seed)
    result = run_from_cli(tune, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
