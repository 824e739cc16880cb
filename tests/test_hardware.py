"""The hardware flow: a trained student run through the runtime's executor primitives on fake IBM
devices (local testing mode), and the submission logic — budget, resume, failed, cancelled and
interrupted jobs, refusals, credentials — against a folder-backed stand-in for the IBM service
(``tests/qpu_standin.py``), since the real one cannot be reached from here."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from flows.hardware import HardwareParams, run_hardware
from lab import registry, tracking
from lab.data import load_dataset
from lab.hardware import load_source
from lab.results import TrainingResult
from lab.runtime import Runtime
from lab.teacher import TeacherSpec, teacher_features
from qcore.hardware.plan import build_plan, expectation_values
from qcore.hardware.service import HardwareError, LocalTestingService, Mitigation
from qcore.models.pqc_head import PQCHead
from qcore.models.pqc_head_config import PQCHeadConfig
from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
from qcore.simulators.aer import fake_backend
from qcore.training import train
from tasks.hardware import QPU_TAG, JobFailedError
from tests import qpu_standin
from tests.stack import assert_linked

pytestmark = pytest.mark.flow  # a real flow run on real servers: not in the fast tier

REPO = Path(__file__).resolve().parents[1]
STANDIN = "tests.qpu_standin:StandInService"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One artifact root for every flow run here, on the session's Prefect API and Dask cluster."""
    root = tmp_path_factory.mktemp("hw-artifacts")
    mp = pytest.MonkeyPatch()
    mp.setenv("QLLM_ARTIFACT_ROOT", str(root))
    yield {"root": root, "dask": os.environ["QLLM_DASK_ADDRESS"], **_trained_student()}
    mp.undo()


def _trained_student() -> dict[str, Any]:
    """A 4-qubit QD-LLM student trained for a few seconds on MiniLM features of SST-2, logged
    like the distill flow logs one: a parent run naming the data set, a child holding the model."""
    data = load_dataset("sst2", train_size=160, test_size=8, seed=0)
    spec = TeacherSpec(kind="probe")
    x = teacher_features(spec, data.label_names, data.train_texts)
    model = QDLLMStudent(QDLLMConfig(in_features=x.shape[1], num_classes=2, qubits=4, blocks=1))
    train(
        model,
        torch.as_tensor(x),
        torch.as_tensor(data.train_labels),
        None,
        epochs=15,
        batch_size=16,
        lr=0.05,
        alpha=0.0,
    )
    folder = model.save(Path(os.environ["QLLM_ARTIFACT_ROOT"]) / "source-model")
    (folder / "teacher.json").write_text(
        json.dumps({"teacher": dataclasses.asdict(spec), "label_names": list(data.label_names)})
    )
    with tracking.parent_run(Runtime(), "test-hw-source", "distill", {"dataset": "sst2"}) as parent:
        child = tracking.log_child(
            parent,
            "student",
            kind="quantum student",
            data=tracking.data_record(data),
            params={"qubits": 4},
            metrics={},
            artifacts=folder,
        )
        return {"run_id": child, "parent_id": parent.info.run_id, "model": model}


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The stand-in service with a planted token; returns the token."""
    token = f"planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("QLLM_QPU_SERVICE", STANDIN)
    monkeypatch.setenv("QLLM_STANDIN_DIR", str(tmp_path / "service"))
    monkeypatch.setenv("QISKIT_IBM_TOKEN", token)
    monkeypatch.setenv("QISKIT_IBM_INSTANCE", "crn:v1:test-instance")
    qpu_standin.set_behaviour(outcome="DONE", polls=2)
    return token


def params(lab: dict[str, Any], **overrides: Any) -> HardwareParams:
    base = dict(
        run_id=lab["run_id"],
        backend="ibm_manila",
        samples=8,
        job_size=4,
        shots=256,
        noisy_simulation=False,
        poll_max_seconds=0.05,
        dask_address=lab["dask"],
    )
    return HardwareParams(**{**base, **overrides})


def ledger_files(lab: dict[str, Any]) -> list[Path]:
    return sorted((lab["root"] / "hardware").glob("*/jobs.json"))


# ----------------------------------------------------------------------------- the circuit plan
@pytest.mark.parametrize(
    "model,primitive,mitigation",
    [
        ("qdllm", "sampler", Mitigation(resilience_level=0)),
        ("qdllm", "sampler", Mitigation(resilience_level=0, dynamical_decoupling="XX", twirling=True)),
        ("qdllm", "estimator", Mitigation(resilience_level=1)),
        ("pqc_head", "sampler", Mitigation(resilience_level=0)),
    ],
    ids=["qdllm-sampler", "qdllm-sampler-dd-twirling", "qdllm-estimator-trex", "pqc_head-sampler"],
)
def test_plan_measures_what_the_exact_simulation_computes(
    lab: dict[str, Any], model: str, primitive: str, mitigation: Mitigation
) -> None:
    """Transpiled once to a 5-qubit device, bound per sample and run in local testing mode, the
    ⟨Z⟩ readouts match the exact ones within shot and device noise (a wrong layout would not)."""
    head = PQCHead(
        PQCHeadConfig(
            in_features=16, num_classes=2, encoders=1, encoder_layers=1, qubits=4, layers=1, reuploads=1, measured=4
        )
    )
    layer = (lab["model"] if model == "qdllm" else head).hardware_layer
    angles = np.random.default_rng(0).uniform(0, 10, (6, 4))
    device = fake_backend("fake_manila")
    plan = build_plan(layer, angles, device, primitive=primitive, optimization_level=1)
    assert plan.circuit.num_parameters == 4 and plan.values.shape == (6, 4)
    assert plan.metrics.two_qubit_gates >= 3 and plan.metrics.qubits_used == 4
    with LocalTestingService().batch(device, primitive, mitigation) as submit:
        result = submit(plan.pubs(0, 6), 4000).result()
    measured = expectation_values(plan, result, list(layer.observables))
    with torch.inference_mode():
        exact = layer(torch.as_tensor(angles, dtype=torch.float32)).real.numpy()
    assert measured.shape == exact.shape == (6, 4)
    assert np.abs(measured - exact).mean() < 0.15
    assert np.corrcoef(measured.ravel(), exact.ravel())[0, 1] > 0.6


# ----------------------------------------------------------------------------- the whole flow, offline
def test_flow_on_a_fake_backend(lab: dict[str, Any]) -> None:
    result = run_hardware(
        HardwareParams(
            run_id=lab["run_id"], backend="fake_torino", samples=8, job_size=4, shots=512, dask_address=lab["dask"]
        )
    )
    rows = {r["model"]: r for r in result["table"]}
    assert set(rows) == {"exact", "fake hardware", "noisy simulation (fake_torino, 512 shots)"}
    hw = rows["fake hardware"]
    assert hw["samples"] == 8 and hw["backend"] == "fake_torino" and hw["two_qubit_gates"] > 0
    assert hw["agreement_with_exact"] >= 0.5 and {"accuracy.negative", "accuracy.positive"} <= set(hw)
    assert len(result["job_ids"]) == 2
    run = MlflowClient(Runtime().tracking_uri()).get_run(result["mlflow_run_id"])
    assert run.data.tags["qllm.job_ids"] == ",".join(result["job_ids"])
    assert run.data.tags["qllm.source_run"] == lab["run_id"]
    assert "test/accuracy/fake hardware" in run.data.metrics
    assert_linked(result["mlflow_run_id"], "hardware-report")
    assert {a.path for a in MlflowClient().list_artifacts(run.info.run_id)} >= {"jobs.json", "hardware.json"}
    again = run_hardware(
        HardwareParams(
            run_id=lab["run_id"],
            backend="fake_torino",
            samples=8,
            job_size=4,
            shots=512,
            noisy_simulation=False,
            dask_address=lab["dask"],
        )
    )
    assert again["job_ids"] == result["job_ids"]  # stored results: nothing simulated again
    assert {r["model"]: r["accuracy"] for r in again["table"]}["fake hardware"] == hw["accuracy"]


def test_dry_run_stops_after_transpiling(lab: dict[str, Any], standin: str, capsys: pytest.CaptureFixture) -> None:
    result = run_hardware(params(lab, dry_run=True))
    assert result["metrics"]["circuits"] == 8 and result["metrics"]["qubits_used"] == 4
    assert "two_qubit_gates" in capsys.readouterr().out
    assert qpu_standin.submitted() == []


def test_a_registered_model_stands_where_a_run_id_does(
    lab: dict[str, Any], standin: str, capsys: pytest.CaptureFixture
) -> None:
    """``models:/NAME@ALIAS`` as the source: the student registered from a parent run naming the
    data set is the run's model (same weights, labels, data set), and the flow's dry run on it
    plans what it plans for the run id."""
    folder = Path(os.environ["QLLM_ARTIFACT_ROOT"]) / "source-model"
    result = TrainingResult("qdllm", "student", "qdllm", 0, {"accuracy": 0.5}, {}, model_url=str(folder))
    with tracking.parent_run(Runtime(), "test-hw-source", "distill", {"dataset": "sst2"}):
        registry.set_champion(
            registry.register(result, dataset="sst2", label_names=("negative", "positive"), flow="distill")
        )
    by_run = load_source(lab["run_id"], Runtime())
    by_name = load_source("models:/qllm-qdllm-sst2@champion", Runtime())
    assert by_name.weights_hash == by_run.weights_hash and by_name.label_names == by_run.label_names
    assert by_name.data["dataset"] == "sst2" and by_name.teacher == by_run.teacher
    planned = run_hardware(params(lab, run_id="models:/qllm-qdllm-sst2@champion", dry_run=True))
    assert planned["metrics"] == run_hardware(params(lab, dry_run=True))["metrics"]
    assert qpu_standin.submitted() == []


# ----------------------------------------------------------------------------- submission logic
def test_budget_guard_refuses_before_submitting(lab: dict[str, Any], standin: str) -> None:
    before = len(ledger_files(lab))
    with pytest.raises(HardwareError, match="above --max-qpu-seconds 1"):
        run_hardware(params(lab, max_qpu_seconds=1, shots=100_000))
    assert qpu_standin.submitted() == [] and len(ledger_files(lab)) == before
    result = run_hardware(params(lab, max_qpu_seconds=1, shots=2048, confirm=True))
    assert len(qpu_standin.submitted()) == 2 and len(result["job_ids"]) == 2


def test_resumed_run_retrieves_jobs_instead_of_resubmitting(lab: dict[str, Any], standin: str) -> None:
    """least_busy resolves once; a run whose results were lost after the ids were written (the
    ledger survives) asks the service for the same jobs, on the same device. Both runs go
    through the README's one-at-a-time limit on the QPU tag, which each releases."""
    from prefect.client.orchestration import get_client

    subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "concurrency-limit", "create", QPU_TAG, "1"],
        check=True,
        capture_output=True,
        env=os.environ,
    )
    first = run_hardware(params(lab, backend="least_busy"))
    assert first["metrics"]["backend"] == "ibm_manila"  # the least busy device wide enough
    ids = qpu_standin.submitted()
    assert sorted(ids) == sorted(first["job_ids"])
    ledger = Path(first["ledger"])
    for stored in ledger.glob("values-*.npy"):
        stored.unlink()
    second = run_hardware(params(lab, backend="least_busy"))
    assert qpu_standin.submitted() == ids and second["job_ids"] == first["job_ids"]
    assert second["table"] == first["table"]
    with get_client(sync_client=True) as client:
        limit = client.read_concurrency_limit_by_tag(QPU_TAG)
        assert limit.concurrency_limit == 1 and list(limit.active_slots) == []
        client.delete_concurrency_limit_by_tag(QPU_TAG)


@pytest.mark.parametrize("outcome", ["ERROR", "CANCELLED"])
def test_failed_or_cancelled_job_is_reported_not_resubmitted(lab: dict[str, Any], standin: str, outcome: str) -> None:
    shots = {"ERROR": 301, "CANCELLED": 302}[outcome]  # a ledger of its own
    qpu_standin.set_behaviour(outcome=outcome, polls=1, error=f"device calibration failed (token={standin})")
    with pytest.raises(JobFailedError, match=f"ended {outcome}") as err:
        run_hardware(params(lab, samples=4, job_size=4, shots=shots))
    assert standin not in str(err.value) and len(qpu_standin.submitted()) == 1  # the task's retries did not resubmit
    qpu_standin.set_behaviour(outcome="DONE", polls=1)
    result = run_hardware(params(lab, samples=4, job_size=4, shots=shots))  # a new run submits it anew
    assert len(qpu_standin.submitted()) == 2 and result["job_ids"] == [qpu_standin.submitted()[-1]]
    history = json.loads((Path(result["ledger"]) / "jobs.json").read_text())["jobs"]["0"]["history"]
    assert history == [{"job_id": qpu_standin.submitted()[0], "status": outcome}]


def test_transient_error_is_retried_on_the_same_job(lab: dict[str, Any], standin: str) -> None:
    qpu_standin.set_behaviour(outcome="DONE", polls=2, raise_polls=1)
    result = run_hardware(params(lab, samples=4, job_size=4, shots=320))
    assert result["job_ids"] == qpu_standin.submitted() and len(result["job_ids"]) == 1


def test_flow_killed_between_submission_and_result(lab: dict[str, Any], standin: str) -> None:
    qpu_standin.set_behaviour(outcome="DONE", polls=10**9)  # the job never ends while the flow waits
    args = [
        "--run-id",
        lab["run_id"],
        "--backend",
        "ibm_manila",
        "--samples",
        "4",
        "--job-size",
        "4",
        "--shots",
        "400",
        "--no-noisy-simulation",
        "--poll-max-seconds",
        "0.05",
        "--dask-address",
        lab["dask"],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = set(ledger_files(lab))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "hardware", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (set(ledger_files(lab)) - before) and time.monotonic() < deadline:
            assert proc.poll() is None, "the flow ended before submitting"
            time.sleep(0.5)
        time.sleep(1.0)  # it is now polling the job
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (ledger,) = set(ledger_files(lab)) - before
    written = json.loads(ledger.read_text())["jobs"]["0"]["job_id"]
    assert qpu_standin.submitted() == [written]
    qpu_standin.set_behaviour(outcome="DONE", polls=1)
    result = run_hardware(params(lab, samples=4, job_size=4, shots=400))
    assert result["job_ids"] == [written] and qpu_standin.submitted() == [written]


# ----------------------------------------------------------------------------- refusals and secrets
@pytest.mark.parametrize(
    "case",
    [
        "unknown backend",
        "no such run",
        "run without a model",
        "too many qubits",
        "estimator on a large fake device",
        "no credentials",
        "token rejected",
    ],
)
def test_refused_before_any_submission(
    lab: dict[str, Any], standin: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides: dict[str, Any] = {
        "no such run": {"run_id": "0" * 32},
        "run without a model": {"run_id": lab["parent_id"]},
        "too many qubits": {"backend": "fake_armonk"},
        "estimator on a large fake device": {"backend": "fake_torino", "primitive": "estimator"},
    }.get(case, {})
    if case == "no credentials":
        monkeypatch.delenv("QISKIT_IBM_TOKEN")
    if case == "token rejected":
        monkeypatch.setenv("QISKIT_IBM_TOKEN", "reject-me")
    expected = {
        "unknown backend": "not fake_<device>",
        "no such run": "does not exist",
        "run without a model": "holds no quantum model",
        "too many qubits": "has 1 qubits",
        "estimator on a large fake device": "--primitive sampler",
        "no credentials": "QISKIT_IBM_TOKEN",
        "token rejected": "401 Unauthorized: token \\*\\*\\*",
    }[case]
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    with pytest.raises((HardwareError, ValidationError, RuntimeError), match=expected) as err:
        run_hardware(params(lab, **overrides) if case != "unknown backend" else params(lab, backend="ibm torino"))
    assert "reject-me" not in str(err.value)
    assert qpu_standin.submitted() == [] and len(mlflow.search_runs(search_all_experiments=True)) == runs_before


def test_a_deployed_flow_refuses_a_dask_address_it_cannot_use(lab: dict[str, Any], standin: str) -> None:
    """A worker loads the flow with the runner its environment gives; a dask_address parameter
    cannot change it, and must not be silently ignored."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.hardware import hardware

    with pytest.raises(ValueError, match="QLLM_DASK_ADDRESS"):
        hardware.with_options(task_runner=ThreadPoolTaskRunner())(params(lab, dry_run=True))


def test_credentials_from_a_prefect_secret_block(
    lab: dict[str, Any], standin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    monkeypatch.delenv("QISKIT_IBM_TOKEN")
    Secret(value=standin).save("qiskit-ibm-token", overwrite=True)
    try:
        result = run_hardware(params(lab, dry_run=True))
    finally:
        Secret.delete("qiskit-ibm-token")
    assert result["metrics"]["backend"] == "ibm_manila"


def test_token_never_leaks(lab: dict[str, Any], standin: str, capfd: pytest.CaptureFixture) -> None:
    """After a failed and a successful run with a planted token: not in the Prefect logs,
    artifacts or parameters, MLflow params, tags or metrics, the artifact store, or the output."""
    import httpx
    from prefect.logging.handlers import APILogHandler

    qpu_standin.set_behaviour(outcome="ERROR", polls=1, error=f"rejected: token {standin}")
    with pytest.raises(JobFailedError) as err:
        run_hardware(params(lab, samples=4, job_size=4, shots=500))
    qpu_standin.set_behaviour(outcome="DONE", polls=1)
    run_hardware(params(lab, samples=4, job_size=4, shots=500))
    APILogHandler().flush()
    texts = [str(err.value), *capfd.readouterr()]
    api = os.environ["PREFECT_API_URL"]
    for kind in ("logs", "artifacts", "flow_runs", "task_runs"):  # everything the Prefect UI shows
        offset = 0
        while page := httpx.post(f"{api}/{kind}/filter", json={"limit": 200, "offset": offset}).json():
            texts += [json.dumps(item) for item in page]
            offset += len(page)
    assert len(texts) > 20 and any("submitted job" in t for t in texts)  # the scan saw the logs
    for run in MlflowClient(Runtime().tracking_uri()).search_runs(
        [e.experiment_id for e in mlflow.search_experiments()]
    ):
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(run.data.metrics)]
    leaks = [t[:200] for t in texts if standin in t]
    files = [p for p in lab["root"].rglob("*") if p.is_file() and standin.encode() in p.read_bytes()]
    assert leaks == [] and files == []
