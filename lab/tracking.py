"""MLflow tracking: one parent run per flow run, one child run per configuration.

Only the flow's own process writes to MLflow. Dask workers return their results and the flow
logs them one after another, so parallel workers can never race or corrupt the store (a SQLite
file by default). Calls are retried with backoff, since a tracking server may blip.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

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
    mlflow.set_tracking_uri(settings.tracking_uri())
    if settings.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)


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
    before training records what the training cost (Dask workers on other hosts excepted)."""
    exp_id = setup(settings, experiment)
    run = with_retries(
        lambda: mlflow.start_run(
            experiment_id=exp_id, run_name=name, tags=dict(tags or {}), log_system_metrics=system_metrics
        ),
        what="start run",
    )
    try:
        with_retries(lambda: mlflow.log_params(flat_params(params)), what="log params")
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


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
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    history: Mapping[str, list[float]] | None = None,
    artifacts: Path | None = None,
    files: Mapping[str, bytes] | None = None,
    status: str = "FINISHED",
    tags: Mapping[str, str] | None = None,
) -> str:
    """One child run: params, final metrics, per-epoch curves (step = epoch), each named by its
    split (:func:`metric_name`), a model folder (``artifacts``, as ``model/``) and files by name.
    Four calls to the tracking store however much it holds: the run with its tags, one batch of
    metrics and params, one upload of every artifact, its end."""
    client = MlflowClient()
    parent_id = parent.info.run_id
    exp_id = parent.info.experiment_id

    def create() -> str:
        run = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent_id, **dict(tags or {})})
        return run.info.run_id

    run_id = with_retries(create, what="create child run")
    now = int(time.time() * 1000)
    batch_metrics = [mlflow.entities.Metric(metric_name(k), float(v), now, 0) for k, v in metrics.items()]
    for key, values in (history or {}).items():
        name = metric_name(key, curve=True)
        batch_metrics += [mlflow.entities.Metric(name, float(v), now, step) for step, v in enumerate(values, 1)]
    batch_params = [mlflow.entities.Param(k, v) for k, v in flat_params(params).items()]
    with_retries(lambda: client.log_batch(run_id, metrics=batch_metrics, params=batch_params), what="log metrics")
    if artifacts is not None or files:
        with tempfile.TemporaryDirectory() as tmp:
            if artifacts is not None:
                shutil.copytree(artifacts, Path(tmp) / "model")
            for fname, data in (files or {}).items():
                (Path(tmp) / fname).write_bytes(data)
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
    model_tag: str,
    figures: Sequence[Mapping[str, bytes]] | None = None,
) -> None:
    """A child run per result of a flow.

    Results with a ``model_url`` (trained quantum models) get their model folder, training curves
    and confusion matrix (``figures[i]`` for ``rows[i]`` when they were drawn already, e.g. by
    the worker that trained it); failed trainings become FAILED runs carrying the error; the
    rest (classical baselines) get their metrics and curves.
    """
    from . import reporting
    from .artifacts import download_folder

    for i, r in enumerate(rows):
        tags = {"kind": r.kind}
        if isinstance(r, FailedTraining):
            log_child(parent, r.name, params=r.job, metrics={}, status="FAILED", tags={**tags, "error": r.error[:5000]})
            continue
        if r.model_url is None:
            log_child(
                parent, r.name, params={"kind": r.kind, "seed": r.seed}, metrics=r.metrics, history=r.history, tags=tags
            )
            continue
        pngs = figures[i] if figures else reporting.result_figures(r, test_y, label_names)
        with tempfile.TemporaryDirectory() as tmp:
            local = download_folder(r.model_url, Path(tmp) / "model")
            log_child(
                parent,
                r.name,
                params=r.job,
                metrics={**r.metrics, **{f"params_{k}": v for k, v in r.params.items()}},
                history=r.history,
                artifacts=local,
                files=pngs,
                tags={**tags, "qllm.model": model_tag},
            )


def log_summary(table: list[dict[str, Any]], extra: Mapping[str, float] | None = None) -> None:
    """The summary table's numbers as metrics of the active (parent) run: ``<model>.<column>``."""
    summary = {f"{slug(row['model'])}.{k}": v for row in table for k, v in row.items() if isinstance(v, float)}
    summary.update(extra or {})
    with_retries(lambda: mlflow.log_metrics(summary), what="log metrics")


def slug(text: str) -> str:
    """``text`` with characters MLflow refuses in metric names replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


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
