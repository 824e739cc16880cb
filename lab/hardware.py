"""Hardware submission: credentials, the job ledger, and running a plan on a quantum service
without ever paying twice for the same job (:mod:`tasks.hardware` wraps it as a Prefect task).

Every job id is written to ``<artifact root>/hardware/<key>/jobs.json`` the moment the service
returns it, before anything waits on it. A retry of the task, or a new run of the flow with the
same settings, reads the ledger first and only asks the service for those jobs; results are
stored beside the ledger when they arrive, so a finished chunk is never fetched twice either.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcore.hardware.plan import CircuitPlan, expectation_values
from qcore.hardware.service import (
    FINAL_STATES,
    HardwareError,
    IBMRuntimeService,
    JobNotFoundError,
    LocalTestingService,
    Mitigation,
    QPUJob,
    QPUService,
    redact,
)
from qcore.models.base import QuantumModel

from .artifacts import atomic_write_bytes, join_url, read_bytes
from .runtime import Runtime

TOKEN_BLOCK, INSTANCE_BLOCK = "qiskit-ibm-token", "qiskit-ibm-instance"
_SECRETS: set[str] = set()  # credentials this process has handed out: scrubbed from every error


class JobFailedError(HardwareError):
    """A job the service ran and ended in ERROR or CANCELLED: retrying the task cannot help."""


# ----------------------------------------------------------------------------- credentials
def _no_secrets(name: str) -> str | None:
    return None


def ibm_credentials(secret: Callable[[str], str | None] = _no_secrets) -> tuple[str, str | None]:
    """``(token, instance)`` from ``QISKIT_IBM_TOKEN`` / ``QISKIT_IBM_INSTANCE``, else from the
    secrets ``qiskit-ibm-token`` / ``qiskit-ibm-instance`` that ``secret`` looks up (the flows
    pass Prefect Secret blocks)."""
    token, instance = os.environ.get("QISKIT_IBM_TOKEN"), os.environ.get("QISKIT_IBM_INSTANCE")
    if not token:
        token = secret(TOKEN_BLOCK)
        instance = instance or secret(INSTANCE_BLOCK)
    if not token:
        raise HardwareError(
            "a real IBM backend needs IBM Quantum Platform credentials: set QISKIT_IBM_TOKEN (and "
            "QISKIT_IBM_INSTANCE, your instance's CRN), or store them as Prefect Secret blocks "
            f"'{TOKEN_BLOCK}' and '{INSTANCE_BLOCK}'; or run offline on a fake backend such as fake_torino"
        )
    _SECRETS.add(token)
    return token, instance


def make_service(backend: str, secret: Callable[[str], str | None] = _no_secrets) -> QPUService:
    """Local testing mode for ``fake_*`` backends; otherwise the service ``QLLM_QPU_SERVICE``
    names (``module:factory``, called with ``token=`` and ``instance=``) or IBM Quantum Platform."""
    if backend.startswith("fake_"):
        return LocalTestingService()
    token, instance = ibm_credentials(secret)
    factory_path = Runtime().qpu_service
    if not factory_path:
        return IBMRuntimeService(token, instance)
    module, _, name = factory_path.partition(":")
    factory: Callable[..., QPUService] = getattr(importlib.import_module(module), name)
    with scrubbed(f"QPU service {factory_path} failed to start"):
        return factory(token=token, instance=instance)


@contextmanager
def scrubbed(what: str) -> Iterator[None]:
    """Re-raise any error with the credentials cut out of its text and its chain dropped (a
    traceback prints the chain); refusals stay refusals, anything else stays retryable."""
    try:
        yield
    except TimeoutError:
        raise  # the task's timeout: Prefect retries it, resuming the same jobs
    except HardwareError as exc:
        raise type(exc)(redact(str(exc), *_SECRETS)) from None
    except Exception as exc:  # noqa: BLE001 - service clients raise many types
        raise RuntimeError(f"{what}: {type(exc).__name__}: {redact(str(exc), *_SECRETS)}") from None


# ----------------------------------------------------------------------------- the ledger
@dataclass
class Ledger:
    """The jobs of one hardware evaluation: chunk index → job id and state, plus the backend
    they went to (``least_busy`` resolves once; a resumed run must go back to the same device)."""

    url: str  # folder of jobs.json and the stored results
    backend: str | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str, key: str) -> Ledger:
        url = join_url(root, "hardware", key)
        raw = read_bytes(join_url(url, "jobs.json"))
        data = json.loads(raw) if raw else {}
        return cls(url, data.get("backend"), data.get("jobs", {}))

    def save(self) -> None:
        body = json.dumps({"backend": self.backend, "jobs": self.jobs}, indent=2, sort_keys=True)
        atomic_write_bytes(join_url(self.url, "jobs.json"), body.encode())

    def record(self, chunk: int, **entry: Any) -> None:
        previous = self.jobs.get(str(chunk), {})
        history = previous.get("history", [])
        if "job_id" in entry and previous.get("job_id") not in (None, entry["job_id"]):  # a resubmission
            history = [*history, {k: previous[k] for k in ("job_id", "status") if k in previous}]
        self.jobs[str(chunk)] = {**previous, **entry, "history": history}
        self.save()

    def job_ids(self) -> list[str]:
        return [e["job_id"] for _, e in sorted(self.jobs.items(), key=lambda kv: int(kv[0])) if e.get("job_id")]

    def stored_values(self, chunk: int) -> np.ndarray | None:
        raw = read_bytes(join_url(self.url, f"values-{chunk}.npy"))
        return None if raw is None else np.load(io.BytesIO(raw), allow_pickle=False)

    def store_values(self, chunk: int, values: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, values)
        atomic_write_bytes(join_url(self.url, f"values-{chunk}.npy"), buf.getvalue())


def chunks(samples: int, job_size: int) -> list[tuple[int, int]]:
    return [(i, min(i + job_size, samples)) for i in range(0, samples, job_size)]


# ----------------------------------------------------------------------------- the task
def run_chunks(
    plan: CircuitPlan,
    service: QPUService,
    backend: Any,
    ledger: Ledger,
    *,
    shots: int,
    job_size: int,
    mitigation: Mitigation,
    observables: list[Any],
    on_job_ids: Callable[[list[str]], None],
    poll_max_seconds: float,
    log: Callable[[str], None],
) -> np.ndarray:
    """``(samples, observables)`` expectation values of every sample, measured on ``backend``.

    Chunks whose values are stored are skipped; chunks with a job id in the ledger are
    retrieved, not resubmitted; only the rest are submitted, all in one Batch, and each id is
    recorded (ledger, then ``on_job_ids``) before any waiting starts. Errors come out with the
    credentials cut from their text (:func:`scrubbed`).
    """
    with scrubbed(f"running on {ledger.backend}"):
        parts = chunks(plan.samples, job_size)
        values: dict[int, np.ndarray] = {}
        jobs: dict[int, QPUJob] = {}
        to_submit = []
        for i, _ in enumerate(parts):
            stored = ledger.stored_values(i)
            if stored is not None:
                values[i] = stored
                continue
            entry = ledger.jobs.get(str(i), {})
            if entry.get("job_id") and entry.get("status") not in ("ERROR", "CANCELLED"):
                try:
                    jobs[i] = service.job(entry["job_id"])
                    log(f"chunk {i}: resuming job {entry['job_id']} (not resubmitted)")
                    continue
                except JobNotFoundError as exc:
                    if not service.is_local:
                        raise HardwareError(
                            f"{exc}; the ledger {ledger.url}/jobs.json names it. Delete that "
                            "entry to submit the chunk again."
                        ) from None
                    log(f"chunk {i}: {exc}; simulating again")
            to_submit.append(i)
        if to_submit:
            with service.batch(backend, plan.primitive, mitigation) as submit:
                for i in to_submit:
                    start, stop = parts[i]
                    job = submit(plan.pubs(start, stop), shots)
                    jobs[i] = job
                    ledger.record(
                        i, job_id=job.job_id(), status="SUBMITTED", start=start, stop=stop, submitted_at=time.time()
                    )
                    log(f"chunk {i} (samples {start}-{stop - 1}): submitted job {job.job_id()} to {ledger.backend}")
            on_job_ids(ledger.job_ids())
        for i, job in sorted(jobs.items()):
            status = wait_for(job, poll_max_seconds)
            ledger.record(i, status=status)
            if status != "DONE":
                raise JobFailedError(
                    f"job {job.job_id()} on {ledger.backend} ended {status}: {job.error_message()}. "
                    "Nothing was resubmitted; run the flow again to submit this chunk anew."
                )
            values[i] = expectation_values(plan, job.result(), observables)
            ledger.store_values(i, values[i])
        return np.concatenate([values[i] for i in range(len(parts))])


def wait_for(job: QPUJob, poll_max_seconds: float) -> str:
    """Poll until the job is final, backing off from 1 s to ``poll_max_seconds``."""
    delay = min(1.0, poll_max_seconds)
    while (status := job.status()) not in FINAL_STATES:
        time.sleep(delay)
        delay = min(delay * 2, poll_max_seconds)
    return status


# ----------------------------------------------------------------------------- the trained model
@dataclass(frozen=True)
class SourceRun:
    """A trained quantum model from an MLflow run, with what turns text into its features and
    the data set it was trained on (a parameter of the run or of an ancestor)."""

    run_id: str
    model: QuantumModel
    label_names: tuple[str, ...]
    teacher: dict[str, Any]
    data: dict[str, Any]  # dataset, text_column, label_column
    weights_hash: str


def load_source(source: str, settings: Runtime) -> SourceRun:
    """The quantum model of ``source``: an MLflow run id, or a registered model
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``; its source run names the data set).
    Refuses a run that does not exist or holds no quantum model, saying where to look, and an
    unknown registered model (:class:`~lab.registry.RegistryError`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from qcore.models import load_model

    from . import registry
    from .artifacts import sha256_file
    from .tracking import connect, downloaded_model

    if not settings.mlflow_uri and settings.root_is_local and not (settings.local_root / "mlflow.db").is_file():
        raise HardwareError(
            f"{source!r} does not exist: QLLM_ARTIFACT_ROOT={settings.artifact_root} holds no "
            "MLflow store yet; point QLLM_ARTIFACT_ROOT (or QLLM_MLFLOW_URI) where the run was recorded"
        )
    uri = settings.tracking_uri()
    client = mlflow.MlflowClient(uri)
    if registry.is_model_uri(source):
        connect(settings)
        version = registry.resolve(source)
        if not version.run_id:
            raise HardwareError(
                f"registered model {source} names no MLflow run: the data set it was trained on is unknown"
            )
        run_id, files = version.run_id, registry.downloaded_artifact(version, "model")
        what, pick = f"registered model {source}", "Pick a registered QD-LLM student or PQC head."
    else:
        run_id, files = source, downloaded_model(source, settings)
        what, pick = f"MLflow run {source}", "Pick a child run of a distill, head or study run."
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise HardwareError(
            f"MLflow run {run_id!r} does not exist at {uri} ({exc.error_code}); pass "
            "the id of a child run holding a trained model (distill, head or study), "
            "as shown in the MLflow UI or printed by those flows"
        ) from None
    try:
        with files as folder:
            model = load_model(folder)
            meta = json.loads((folder / "teacher.json").read_text())
            weights_hash = sha256_file(folder / "weights.safetensors")
    except Exception as exc:  # noqa: BLE001 - no model/ folder, or not one of ours
        raise HardwareError(
            f"{what} ({run.info.run_name}) holds no quantum model "
            f"(model/config.json, weights and teacher.json): {type(exc).__name__}: {exc}. {pick}"
        ) from None
    data: dict[str, Any] = {}
    ancestor: Any = run
    while ancestor is not None and "dataset" not in ancestor.data.params:
        parent = ancestor.data.tags.get("mlflow.parentRunId")
        ancestor = client.get_run(parent) if parent else None
    if ancestor is not None:
        data = {k: ancestor.data.params.get(k) for k in ("dataset", "text_column", "label_column")}
        data = {k: (None if v in (None, "None") else v) for k, v in data.items()}
    return SourceRun(run_id, model, tuple(meta["label_names"]), meta["teacher"], data, weights_hash)
