"""MLflow tracking: one parent run per flow run, one child run per configuration.

Only the flow's own process writes to MLflow. Dask workers return their results and the flow
logs them one after another, so parallel workers can never race or corrupt the store (a SQLite
file by default). Calls are retried with backoff, since a tracking server may blip.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag, Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .results import FailedTraining, Outcome
from .runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")
# MLflow error codes that mean "bad request", not "try later".
REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = 6, delay: float = 1.0) -> T:
    """Run ``fn``, retrying with exponential backoff; the last failure is raised, never hidden.

    The default waits 1 + 2 + 4 + 8 + 16 s in all, on top of MLflow's and botocore's own
    retries: a tracking server or object store that is gone for seconds does not fail a run."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if getattr(exc, "error_code", None) in REFUSALS:
                raise  # the server understood and said no: asking again cannot help
            if i == attempts - 1:
                raise RuntimeError(f"MLflow {what} failed after {attempts} attempts: {exc}") from exc
            log.warning("MLflow %s failed (%s); retrying in %.1fs", what, exc, delay * 2**i)
            time.sleep(delay * 2**i)
    raise AssertionError("unreachable")


def connect(settings: Runtime) -> None:
    """Point MLflow (runs and the model registry) at the configured store.

    MLflow's S3 client reads its endpoint only from ``MLFLOW_S3_ENDPOINT_URL``, so a configured
    ``QLLM_S3_ENDPOINT_URL`` is passed on there (unless that variable is set already).
    """
    uri = settings.tracking_uri()
    # MLflow's usage telemetry posts to MLflow's own servers: nothing here leaves the machine
    # but what a user configured (set the variable to false to allow it).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if uri.startswith("sqlite:///"):
        _wal_stores.add(str(Path(uri.removeprefix("sqlite:///")).resolve()))
    mlflow.set_tracking_uri(uri)
    if settings.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)


_wal_stores: set[str] = set()  # the SQLite tracking stores :func:`connect` pointed MLflow at


@event.listens_for(Engine, "connect")
def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """A SQLite tracking store in write-ahead-log mode, synced at checkpoints: a child run is
    about ten commits, and in SQLite's default rollback-journal mode each one syncs the file
    several times. Measured on 135 child runs, 2 cores: 13-29 % less of the flow process's
    CPU, which the Dask workers training beside it get back. WAL suits a local file
    (where :meth:`Runtime.tracking_uri` puts it); a commit survives a crash of the process,
    only a power cut can lose the last ones."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    main = dbapi_connection.execute("PRAGMA database_list").fetchone()
    if main is None or main[2] not in _wal_stores:
        return
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def setup(settings: Runtime, experiment: str) -> str:
    """Point MLflow at the configured store (:func:`connect`) and return the experiment id."""
    connect(settings)

    def get_or_create() -> str:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        return mlflow.create_experiment(
            experiment, artifact_location=f"{settings.mlflow_artifact_location()}/{experiment}"
        )

    return with_retries(get_or_create, what="experiment setup")


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as MLflow's flat string params (values cut to MLflow's 6000 chars)."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, prefix=f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


@contextmanager
def parent_run(
    settings: Runtime,
    experiment: str,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    *,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """The flow run's parent MLflow run. ``system_metrics``: MLflow samples this machine's CPU,
    memory, disk and network (psutil) every 10 s while the run is open, so a flow that opens it
    before training records what the training cost (Dask workers on other hosts excepted).

    It prints ``MLflow run <id>: <link>`` once it is open: the flows log their prints, so the
    Prefect UI's log of the flow run leads to its MLflow run."""
    exp_id = setup(settings, experiment)
    run = with_retries(
        lambda: mlflow.start_run(
            experiment_id=exp_id, run_name=short_name(name), tags=dict(tags or {}), log_system_metrics=system_metrics
        ),
        what="start run",
    )
    _opened.append(run.info.run_id)
    try:
        print(run_line(settings, run.info))
        with_retries(lambda: mlflow.log_params(flat_params(params)), what="log params")
        yield run
    except BaseException as exc:
        status = end_status(exc)
        try:
            end_children(run.info.run_id, status)
        except Exception as err:  # noqa: BLE001 - the store may be what failed: the run's error is raised
            log.warning("MLflow: the children of run %s left as they are: %s", run.info.run_id, err)
        mlflow.end_run(status=status)
        raise
    else:
        mlflow.end_run(status="FINISHED")


_opened: list[str] = []  # the parent runs this process opened, in order: what a stop ends


def opened_runs() -> list[str]:
    """The ids of the parent runs this process has opened (:func:`parent_run`), oldest first."""
    return list(_opened)


def end_status(exc: BaseException) -> str:
    """How a run that ``exc`` ended is marked: an error FAILED; a signal or a cancellation
    (``KeyboardInterrupt``, Prefect's ``TerminationSignal``, ``SystemExit``: not an
    ``Exception``) KILLED, so a stopped run is not taken for a broken one."""
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


def end_children(run_id: str, status: str) -> None:
    """Mark the children of ``run_id`` still RUNNING (one the stop caught between its creation
    and its end) ``status``. Asked once, without retries: a stop must not wait on the store."""
    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    running = f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
    for child in client.search_runs([experiment], running):
        client.set_terminated(child.info.run_id, status=status)


def end_flow_run(flow_run_id: str, status: str) -> list[str]:
    """Mark the MLflow runs of a Prefect flow run (its ``prefect.flow_run_id`` tag) still RUNNING,
    and their children still RUNNING, ``status``; their ids. For a flow run whose process was
    killed before it could end them itself (see :func:`flows.runner.end_mlflow_runs`)."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'"
    ids = [r.info.run_id for r in client.search_runs(experiments, running)] if experiments else []
    end_unfinished(ids, status)
    return ids


def end_unfinished(run_ids: Sequence[str], status: str = "KILLED") -> None:
    """Mark the runs of ``run_ids`` still RUNNING, and their children still RUNNING, ``status``:
    what a stop does when the flow could not unwind (:func:`parent_run` ends its own run)."""
    client = MlflowClient()
    for run_id in run_ids:
        end_children(run_id, status)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status=status)


# --- links to the MLflow UI and run names ---------------------------------------------------------


def run_url(settings: Runtime, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run."""
    return f"{settings.mlflow_ui()}/#/experiments/{experiment_id}/runs/{run_id}"


def experiment_url(settings: Runtime, experiment_id: str) -> str:
    """The MLflow UI's training-runs view of an experiment: MLflow 3 opens an experiment on its
    GenAI overview otherwise (the ``/experiments/:experimentId/runs`` route of its UI)."""
    return f"{settings.mlflow_ui()}/#/experiments/{experiment_id}/runs"


def run_line(settings: Runtime, info: Any) -> str:
    """``MLflow run <id>: <link>``, the one line a flow's log names its MLflow run with."""
    return f"MLflow run {info.run_id}: {run_url(settings, info.experiment_id, info.run_id)}"


def run_markdown(settings: Runtime, run: mlflow.ActiveRun) -> str:
    """The MLflow run's id and link, for a flow's report artifact."""
    url = run_url(settings, run.info.experiment_id, run.info.run_id)
    return f"MLflow run `{run.info.run_id}`: [{url}]({url})"


NAME_CHARS = 60  # MLflow's runs table cuts longer names off


def run_name(*words: Any, **settings: Any) -> str:
    """A run's name from what it is and its key settings, short enough to read in MLflow's
    table: ``run_name("distill", "sst2", q=[4, 6], blocks=[2], seeds=[0, 1, 2, 3, 4])`` is
    ``distill sst2 q=4,6 blocks=2 seeds=0-4``. A data set given as a path is named by its file."""
    parts = [_shown(w).rsplit("/", 1)[-1] for w in words if w not in ("", None)]
    parts += [f"{k}={_shown(v)}" for k, v in settings.items()]
    return short_name(" ".join(parts))


def _shown(value: Any) -> str:
    """A setting as a run name shows it: lists joined by commas, a run of 3 or more consecutive
    integers as ``first-last``."""
    if not isinstance(value, (list, tuple)):
        return str(value)
    if (
        len(value) > 2
        and all(isinstance(v, int) for v in value)
        and list(value) == list(range(value[0], value[0] + len(value)))
    ):
        return f"{value[0]}-{value[-1]}"
    return ",".join(map(str, value))


def short_name(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


# --- the data a child run was trained and tested on -------------------------------------------------

# MLflow's SQL store keeps at most 36 characters of a dataset's digest.
DIGEST_CHARS = 36


@dataclass(frozen=True)
class DataRecord:
    """A flow's data set as every child run records it: params (name, hash, split sizes) and an
    MLflow dataset input, so MLflow's Dataset column tells children of runs on different data
    apart. Built once per flow by :func:`data_record`."""

    name: str
    digest: str
    sizes: Mapping[str, int]
    input: DatasetInput  # what mlflow.log_input logs, for runs that are not the active one

    def params(self) -> dict[str, Any]:
        return {"data.name": self.name, "data.hash": self.digest, **{f"data.{k}": v for k, v in self.sizes.items()}}


def data_record(data: Any) -> DataRecord:
    """The record of a :class:`lab.data.Dataset` (texts and labels of both splits) or a
    :class:`lab.corpus.Corpus` (a training and a validation text): its name, source and content
    hash, and the rows MLflow infers the dataset's schema and size from."""
    if hasattr(data, "train_texts"):
        sizes = {"train_size": len(data.train_texts), "test_size": len(data.test_texts)}
        frame = pd.DataFrame(
            {
                "text": [*data.train_texts, *data.test_texts],
                # label names, not numbers: MLflow warns that an integer column cannot hold a gap
                "label": [data.label_names[i] for i in (*data.train_labels.tolist(), *data.test_labels.tolist())],
                "split": ["train"] * sizes["train_size"] + ["test"] * sizes["test_size"],
            }
        )
    else:
        sizes = {"train_chars": len(data.train_text), "val_chars": len(data.val_text)}
        frame = pd.DataFrame({"text": [data.train_text, data.val_text], "split": ["train", "val"]})
    dataset = from_pandas(
        frame,
        source=CodeDatasetSource({"qllm.data.source": str(data.source)}),
        name=str(data.name),
        digest=data.content_hash[:DIGEST_CHARS],
    )
    # its schema and profile computed once here, not again for every child that logs it
    entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "train/test")])
    return DataRecord(str(data.name), data.content_hash, sizes, entity)


# A result's final scores are measured on the test split (the 872 SST-2 dev sentences when that
# is the test split). One bare ``accuracy`` key for them and for an epoch's training accuracy made
# MLflow show the last epoch's training accuracy as a run's score (its latest value is the one
# at the highest step), so every name says its split: ``test/…``, ``train/…``, ``val/…``.
TEST_SCORES = frozenset(
    {"accuracy", "accuracy_std", "accuracy_low", "accuracy_high", "macro_f1", "macro_f1_std"}
    | {"agreement", "agreement_std"}
)


def metric_name(key: str, *, curve: bool = False) -> str:
    """The MLflow name of a result's metric ``key``: a final number (``curve=False``) or a curve
    over epochs or training steps. ``val_*`` and ``held_out_*`` (a tuning trial's reports) are
    validation, ``perplexity`` is measured on held-out validation blocks, any other curve and
    ``final_train_*`` are training, :data:`TEST_SCORES` are test; a name with a ``/`` already says
    its split, and the rest (seconds, parameter counts, ratios) belong to no split."""
    if "/" in key:
        return key
    for prefix in ("val_", "held_out_"):
        if key.startswith(prefix):
            return "val/" + key.removeprefix(prefix)
    if key == "perplexity":
        return "val/perplexity"
    if curve:
        return "train/" + key.removeprefix("train_")
    if key in TEST_SCORES:
        return "test/" + key
    if key.startswith("final_train_"):
        return "train/final_" + key.removeprefix("final_train_")
    return key


def log_child(
    parent: Run,
    name: str,
    *,
    kind: str,
    data: DataRecord,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    history: Mapping[str, list[float]] | None = None,
    artifacts: Path | None = None,
    files: Mapping[str, bytes] | None = None,
    status: str = "FINISHED",
    tags: Mapping[str, str] | None = None,
) -> str:
    """One child run: its ``kind`` (a tag, and a param so MLflow's table and compare view can
    group by it), its data (:class:`DataRecord`: params and a dataset input), params, final
    metrics, per-epoch curves (step = epoch), each named by its split (:func:`metric_name`), a
    model folder (``artifacts``, as ``model/``) and files by name. Five calls to the tracking
    store however much it holds: the run with its tags, its dataset, one batch of metrics and
    params, one upload of every artifact, its end."""
    client = MlflowClient()
    parent_id = parent.info.run_id
    exp_id = parent.info.experiment_id

    def create() -> str:
        run_tags = {"mlflow.parentRunId": parent_id, **dict(tags or {}), "kind": kind}
        return client.create_run(exp_id, run_name=short_name(name), tags=run_tags).info.run_id

    run_id = with_retries(create, what="create child run")
    with_retries(lambda: client.log_inputs(run_id, [data.input]), what="log dataset")
    now = int(time.time() * 1000)
    batch_metrics = [mlflow.entities.Metric(metric_name(k), float(v), now, 0) for k, v in metrics.items()]
    for key, values in (history or {}).items():
        curve = metric_name(key, curve=True)
        batch_metrics += [mlflow.entities.Metric(curve, float(v), now, step) for step, v in enumerate(values, 1)]
    all_params = {**params, "kind": kind, **data.params()}
    batch_params = [mlflow.entities.Param(k, v) for k, v in flat_params(all_params).items()]
    with_retries(lambda: client.log_batch(run_id, metrics=batch_metrics, params=batch_params), what="log metrics")
    if artifacts is not None or files:
        with tempfile.TemporaryDirectory() as tmp:
            if artifacts is not None:
                shutil.copytree(artifacts, Path(tmp) / "model")
            for fname, content in (files or {}).items():
                (Path(tmp) / fname).write_bytes(content)
            with_retries(lambda: client.log_artifacts(run_id, tmp), what="log artifacts")
    with_retries(lambda: client.set_terminated(run_id, status=status), what="end child run")
    return run_id


def log_table(run: mlflow.ActiveRun, rows: list[dict[str, Any]], name: str = "results.json") -> None:
    """The results table as a JSON artifact of the parent run."""
    client = MlflowClient()
    with_retries(
        lambda: client.log_table(
            run.info.run_id, data={k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file=name
        ),
        what="log table",
    )


@contextmanager
def downloaded_model(run_id: str, settings: Runtime) -> Iterator[Path]:
    """A run's ``model/`` artifacts in a temporary folder, removed when the block ends (load
    what is needed inside it): ``qllm predict`` and the hardware flow left one behind per call."""
    connect(settings)
    with tempfile.TemporaryDirectory(prefix="qllm-model-") as target:
        yield Path(
            with_retries(
                lambda: mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=target),
                what="download model",
            )
        )


def log_result_rows(
    parent: Run,
    rows: Sequence[Outcome],
    test_y: Any,
    label_names: tuple[str, ...],
    *,
    data: DataRecord,
    model_tag: str,
    figures: Sequence[Mapping[str, bytes]] | None = None,
) -> None:
    """A child run per result of a flow, each with its settings (``job``) as params and its
    parameter counts as ``params_*`` metrics, quantum model or classical baseline alike.

    Results with a ``model_url`` (trained quantum models) also get their model folder, training
    curves and confusion matrix (``figures[i]`` for ``rows[i]`` when they were drawn already,
    e.g. by the worker that trained it); failed trainings become FAILED runs carrying the error.
    """
    from . import reporting
    from .artifacts import download_folder

    for i, r in enumerate(rows):
        if isinstance(r, FailedTraining):
            error = {"error": r.error[:5000]}
            log_child(parent, r.name, kind=r.kind, data=data, params=r.job, metrics={}, status="FAILED", tags=error)
            continue
        params = {**r.job, "seed": r.seed}
        metrics = {**r.metrics, **{f"params_{k}": v for k, v in r.params.items()}}
        if r.model_url is None:
            log_child(parent, r.name, kind=r.kind, data=data, params=params, metrics=metrics, history=r.history)
            continue
        pngs = figures[i] if figures else reporting.result_figures(r, test_y, label_names)
        with tempfile.TemporaryDirectory() as tmp:
            local = download_folder(r.model_url, Path(tmp) / "model")
            log_child(
                parent,
                r.name,
                kind=r.kind,
                data=data,
                params=params,
                metrics=metrics,
                history=r.history,
                artifacts=local,
                files=pngs,
                tags={"qllm.model": model_tag},
            )


def log_summary(table: list[dict[str, Any]], extra: Mapping[str, float] | None = None) -> None:
    """The summary table's numbers as metrics of the active (parent) run, named
    ``<split>/<column>/<model>`` (``test/accuracy/MLP labels only``); a row of one seed logs
    no ``*_std`` (always 0, a chart each)."""
    summary = {
        summary_name(k, row["model"]): v
        for row in table
        for k, v in without_spread(row, row.get("seeds", 1)).items()
        if isinstance(v, float)
    }
    summary.update(extra or {})
    with_retries(lambda: mlflow.log_metrics(summary), what="log metrics")


def without_spread(numbers: Mapping[str, Any], seeds: int) -> dict[str, Any]:
    """``numbers`` without their ``*_std`` entries when they pool fewer than two seeds."""
    return {k: v for k, v in numbers.items() if seeds > 1 or not k.endswith("_std")}


def summary_name(column: str, what: str) -> str:
    """A parent run's metric: ``column`` named by its split (:func:`metric_name`), then what it
    measures (a model, a noise setting), in words MLflow accepts (:func:`readable`)."""
    return f"{metric_name(column)}/{readable(what)}"


def readable(text: str) -> str:
    """``text`` as one part of an MLflow metric name, which allows letters, digits, ``_ - .``,
    spaces and ``/`` (a level of the name, so not inside a part): other characters become
    spaces, runs of spaces one (``MLP (labels only)`` is ``MLP labels only``,
    ``fake_manila+shots=256`` is ``fake_manila shots 256``)."""
    return " ".join(re.sub(r"[^\w.\- ]", " ", text).split())


def set_tags(run: mlflow.ActiveRun, tags: Mapping[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        with_retries(lambda: client.set_tag(run.info.run_id, key, value), what="set tag")


def log_file(run: mlflow.ActiveRun, url: str) -> None:
    """The file at ``url`` (any fsspec URL) as an artifact of ``run``, under its own name."""
    from .artifacts import read_bytes

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / url.rstrip("/").rsplit("/", 1)[-1]
        local.write_bytes(read_bytes(url) or b"")
        with_retries(lambda: MlflowClient().log_artifact(run.info.run_id, str(local)), what="log artifact")
