"""The head flow and studies end to end: real Prefect runs on real Dask clusters, tracked in a
real MLflow store; a worker killed mid-study; a failing point; resumption; bad input."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from distributed import Client, LocalCluster
from mlflow.tracking import MlflowClient

from flows.cli import main as cli
from flows.head import run_head
from flows.predict import predict
from flows.runner import prefect_api
from flows.study import StudyParams, run_study
from lab.methods.pqc_head import HeadParams
from lab.results import TrainingResult
from lab.runtime import Runtime

pytestmark = pytest.mark.flow  # a real flow run on real servers: not in the fast tier

FEW = dict(per_label=12, test_size=60, epochs=2, patience=1, encoder_layers=1, layers=1, reuploads=2)


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("QLLM_DASK_WORKERS", "2")
    return tmp_path / "artifacts"


def _children(run_id: str) -> list:
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    client = MlflowClient()
    parent = client.get_run(run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")


def test_head_flow_with_baselines_noise_ablation_and_predict(root: Path) -> None:
    result = run_head(
        HeadParams(
            **FEW,
            qubits=3,
            seeds=[0, 1],
            noise_shots=[128],
            noise_depolarizing=[0.02],
            noise_devices=["fake_manila", "fake_lima"],
            noise_samples=6,
            noise_finetune_steps=1,
            experiment="test-head",
        )
    )
    models = {r["model"]: r for r in result["table"]}
    assert set(models) == {"PQC head", "logistic regression", "linear SVM", "MLP (size-matched)"}
    assert models["PQC head"]["seeds"] == 2 and 0 <= models["PQC head"]["accuracy"] <= 1
    rows = {r["label"]: r for r in result["noise"]["rows"]}
    assert set(rows) == {"shots=128", "depolarizing=0.02", "fake_manila+shots=1024", "fake_lima+shots=1024"}
    assert all(r["samples"] == 6 and r["models"] == 2 for r in rows.values())
    assert "finetuned_accuracy" in rows["fake_manila+shots=1024"]
    assert [d["device"] for d in result["noise"]["devices"]] == ["fake_manila", "fake_lima"]
    assert all(d["two_qubit_gates"] > 0 for d in result["noise"]["devices"])

    children = _children(result["mlflow_run_id"])
    heads = [c for c in children if c.data.tags["kind"] == "PQC head"]
    assert len(heads) == 2 and len(children) == 2 + 3 * 2  # three classical heads per seed
    client = MlflowClient()
    assert {"model/module2.qasm", "model/encoder.qasm", "model/teacher.json"} <= {
        f.path for f in client.list_artifacts(heads[0].info.run_id, "model")
    }
    assert {"noise.json", "transpiled.json", "noise.png", "results.json"} <= {
        f.path for f in client.list_artifacts(result["mlflow_run_id"])
    }
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.data.tags["data_key"] and any(k.startswith("system/") for k in parent.data.metrics)
    out = predict(heads[0].info.run_id, ["a wonderful, moving film"])
    assert out[0][1] in ("negative", "positive")


def _study(**kw: object) -> StudyParams:
    return StudyParams(
        **{"grid": {"qubits": [2, 3]}, "seeds": 2, "fixed": {**FEW, "encoders": 1}, "experiment": "test-study", **kw}
    )


def _worker_processes(cluster: LocalCluster) -> list[psutil.Process]:
    """The worker processes of ``cluster`` (not the session's, nor the Prefect server)."""
    with Client(cluster) as client:
        return [psutil.Process(pid) for pid in client.run(os.getpid).values()]


def test_study_survives_a_killed_worker_and_resumes(root: Path) -> None:
    """Kill a Dask worker while the study trains: it still finishes every point. Then remove one
    finished point: the re-run trains only that one and reuses the rest."""
    params = _study(seeds=4)
    # The API first, so the workers inherit its address: a worker without one starts a Prefect
    # server of its own, which the kill below would orphan.
    with (
        prefect_api(),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
    ):
        killed: list[float] = []
        workers = _worker_processes(cluster)

        def kill_when_training_starts() -> None:
            deadline = time.time() + 400
            while time.time() < deadline and not killed:
                if list(root.glob("students/*/result.json")):
                    workers[0].kill()
                    killed.append(time.time())
                time.sleep(0.1)

        watcher = threading.Thread(target=kill_when_training_starts, daemon=True)
        watcher.start()
        result = run_study(params.model_copy(update={"dask_address": cluster.scheduler_address}))
        finished_at = time.time()
        watcher.join()
    assert killed and killed[0] < finished_at
    assert len(list(root.glob("students/*/result.json"))) == 8
    assert result["trainings"] == 8 and result["failed"] == 0
    assert [r["status"] for r in result["table"]] == ["ok", "ok"]
    assert {"logistic regression", "linear SVM", "MLP (size-matched)"} <= set(result["baselines"])

    points = [c for c in _children(result["mlflow_run_id"]) if c.data.tags["kind"] == "study point"]
    assert len(points) == 2 and all("accuracy" in p.data.metrics for p in points)
    assert all(len(_children(p.info.run_id)) == 4 for p in points)  # one model per seed
    assert "study.png" in {f.path for f in MlflowClient().list_artifacts(result["mlflow_run_id"])}

    finished = sorted(root.glob("students/*/result.json"))
    finished[0].unlink()
    again = run_study(params)
    assert again["trainings"] == 8 and again["cached"] == 7


def test_a_failing_point_is_reported_and_the_study_finishes(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers in this process (threads), so the injected fault reaches them."""
    from qcore.models import pqc_head

    original = pqc_head.PQCHead.__init__

    def broken(self: pqc_head.PQCHead, config: pqc_head.PQCHeadConfig, **kw: object) -> None:
        if config.qubits == 3:
            raise RuntimeError("injected fault for qubits=3")
        original(self, config, **kw)

    monkeypatch.setattr(pqc_head.PQCHead, "__init__", broken)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        result = run_study(_study(dask_address=cluster.scheduler_address))
    table = {r["qubits"]: r for r in result["table"]}
    assert table[2]["status"] == "ok" and table[3]["status"] == "failed"
    assert "injected fault for qubits=3" in table[3]["error"] and result["failed"] == 2
    failed = [c for c in _children(result["mlflow_run_id"]) if c.data.tags.get("status") == "failed"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "injected fault" in failed[0].data.tags["error"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["study", "--grid", "qubitz=2,3"], "'qubitz' is not a parameter a head study can set"),
        (
            ["study", "--grid", "qubits=2,40"],
            "point {'qubits': '40'}: qubits: Input should be less than or equal to 16",
        ),
        (["study", "--method", "distill", "--grid", "noise=fake_nowhere"], "unknown fake backend 'fake_nowhere'"),
        (["study", "--grid", "per_label=100000"], "per_label=100000 leaves no test rows"),
        (["head", "--noise-devices", "fake_torino,fake_nowhere"], "unknown fake backend(s) ['fake_nowhere']"),
        (["head", "--measured", "9"], "measured=9 exceeds qubits=8"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    args: list[str], message: str, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli(["run", *args])
    except Exception as exc:  # noqa: BLE001 - the message is the check; data errors surface from the preflight check
        code, text = 1, str(exc)
    else:
        text = capsys.readouterr().err
    assert code != 0 and message in text, text
    assert not root.exists()  # nothing written


def test_noise_ablation_switched_off_evaluates_nothing() -> None:
    from flows.head import noise_ablation

    params = HeadParams(noise_shots=[], noise_depolarizing=[], noise_devices=[])
    trained = [TrainingResult("pqc-head", "head", "PQC head", 0, {}, {})]
    assert noise_ablation(params, None, trained, workers=2) == {"rows": [], "devices": []}
