"""The head flow and studies end to end: real Prefect runs on real Dask clusters, tracked in a
real MLflow store; a worker killed mid-study; a failing point; resumption; bad input."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import psutil
import pytest
from distributed import Client, LocalCluster
from mlflow.tracking import MlflowClient

from flows import study as study_flow
from flows.cli import main as cli
from flows.head import run_head
from flows.predict import predict
from flows.runner import prefect_api
from flows.study import StudyParams, _log_point, _log_summary, _plot_points, _point_row, run_study, study_method
from lab import reporting, tracking
from lab.artifacts import download_folder
from lab.data import Dataset
from lab.embedded import EmbeddedSplit
from lab.methods.base import Hooks
from lab.methods.pqc_head import HeadParams
from lab.results import FailedTraining, Outcome, TrainingResult, job_record
from lab.runtime import Runtime
from qcore.models.pqc_head_config import PQCHeadConfig
from tests.stack import assert_linked, child_runs

pytestmark = pytest.mark.flow  # a real flow run on real servers: not in the fast tier

FEW = dict(per_label=12, test_size=60, epochs=2, patience=1, encoder_layers=1, layers=1, reuploads=2)


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("QLLM_DASK_WORKERS", "2")
    return tmp_path / "artifacts"


def _children(run_id: str) -> list:
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    return child_runs(MlflowClient().get_run(run_id))


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
    parent = assert_linked(result["mlflow_run_id"], "head-report")
    assert parent.data.tags["data_key"] and any(k.startswith("system/") for k in parent.data.metrics)
    assert "test/accuracy/MLP size-matched" in parent.data.metrics
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

    assert_linked(result["mlflow_run_id"], "study-report")
    points = [c for c in _children(result["mlflow_run_id"]) if c.data.tags["kind"] == "study point"]
    assert len(points) == 2 and all("test/accuracy" in p.data.metrics for p in points)
    assert all(len(_children(p.info.run_id)) == 4 for p in points)  # one model per seed
    assert "study.png" in {f.path for f in MlflowClient().list_artifacts(result["mlflow_run_id"])}

    finished = sorted(root.glob("students/*/result.json"))
    finished[0].unlink()
    again = run_study(params)
    assert again["trainings"] == 8 and again["cached"] == 7


def _one_chunk(costs: list[float | None], workers: int) -> list[list[int]]:
    """Every training of a data group in one task (instead of :func:`tasks.train.chunks`)."""
    return [list(range(len(costs)))]


def _one_each(costs: list[float | None], workers: int) -> list[list[int]]:
    """A task per training, as before trainings were grouped."""
    return [[i] for i in range(len(costs))]


def test_a_failing_point_is_reported_and_the_study_finishes(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers in this process (threads), so the injected fault reaches them; all four trainings
    share one task, whose failed two are each retried and reported on their own."""
    from qcore.models import pqc_head

    monkeypatch.setattr(study_flow, "chunks", _one_chunk)

    original = pqc_head.PQCHead.__init__
    attempts: list[int] = []  # the qubits of every head built

    def broken(self: pqc_head.PQCHead, config: PQCHeadConfig, **kw: object) -> None:
        attempts.append(config.qubits)
        if config.qubits == 3:
            raise RuntimeError("injected fault for qubits=3")
        original(self, config, **kw)

    monkeypatch.setattr(pqc_head.PQCHead, "__init__", broken)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        result = run_study(_study(dask_address=cluster.scheduler_address))
    table = {r["qubits"]: r for r in result["table"]}
    assert table[2]["status"] == "ok" and table[3]["status"] == "failed"
    assert attempts.count(3) == 2 * 3  # each seed tried once and retried twice (the method's retries)
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


# --- what a study logs to MLflow ---------------------------------------------------------------


def _synthetic_split(seed: int) -> EmbeddedSplit:
    """A tiny two-class split of random unit vectors: real heads train on it in a second."""
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        x = rng.normal(size=(n, 8)).astype("float32")
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    logits = np.zeros((40, 2), "float32")
    return EmbeddedSplit(
        unit(40), np.arange(40) % 2, logits, unit(20), np.arange(20) % 2, logits[:20], ("neg", "pos"), f"k{seed}", {}
    ).with_validation(0.25, 0)


def _logged(client: MlflowClient, experiment_id: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every run of the experiment as MLflow gives it back, keyed by its names from the root run
    down: status, tags (parent ids as the parent's name), params, each metric's (step, value)
    history, and each artifact's bytes (PNG files by their decoded pixels)."""
    runs = {r.info.run_id: r for r in client.search_runs([experiment_id], max_results=10_000)}

    def path(run_id: str) -> tuple[str, ...]:
        run = runs[run_id]
        parent = run.data.tags.get("mlflow.parentRunId")
        return (*(path(parent) if parent else ()), run.info.run_name)

    def files(run_id: str, folder: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in client.list_artifacts(run_id, folder):
            if f.is_dir:
                out.update(files(run_id, f.path))
            else:
                local = client.download_artifacts(run_id, f.path)
                out[f.path] = _content(Path(local))
        return out

    out = {}
    for run_id, run in runs.items():
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.source") and k != "mlflow.user"}
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = runs[tags["mlflow.parentRunId"]].info.run_name
        out[path(run_id)] = {
            "status": run.info.status,
            "tags": tags,
            "params": run.data.params,
            "metrics": {
                k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in run.data.metrics
            },
            "artifacts": files(run_id),
        }
    return out


def _content(path: Path) -> Any:
    """A file's bytes by their hash; a PNG by its pixels (the encoder's bytes are not the point)."""
    if path.suffix == ".png":
        return hashlib.sha256(plt.imread(path).tobytes()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _figure(fig: Any, tmp: Path, name: str) -> Any:
    """What MLflow's ``log_figure`` stores for ``fig`` (``savefig`` to a file of that name)."""
    tmp.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp / name)
    reporting.close(fig)
    return _content(tmp / name)


def _expected(
    points: list[dict[str, Any]],
    trained: list[list[Outcome]],
    baselines: list[TrainingResult],
    table: list[dict[str, Any]],
    split: EmbeddedSplit,
    record: tracking.DataRecord,
    tmp: Path,
) -> dict[tuple[str, ...], dict[str, Any]]:
    """The runs a study logs under its parent: a child per point (its row's numbers, FAILED if no
    seed finished) with a grandchild per seed (a model's folder, curves and confusion matrix, or
    a failed training's error), a child per classical baseline, the table and the plot."""

    def run(parent: str, name: str, status: str, tags: dict[str, str], params: dict[str, Any], **kw: Any) -> dict:
        return {
            "status": status,
            "tags": {"mlflow.parentRunId": parent, "mlflow.runName": name, **tags},
            "params": tracking.flat_params({**params, "kind": tags["kind"], **record.params()}),
            "metrics": kw.get("metrics", {}),
            "artifacts": kw.get("artifacts", {}),
        }

    def metrics(values: dict[str, float], history: dict[str, list[float]]) -> dict[str, list[tuple[int, float]]]:
        out = {tracking.metric_name(k): [(0, float(v))] for k, v in values.items()}
        for k, vs in history.items():
            name = tracking.metric_name(k, curve=True)
            out[name] = sorted(out.get(name, []) + [(step, float(v)) for step, v in enumerate(vs, 1)])
        return out

    def seed_run(parent: str, r: Outcome) -> dict:
        if isinstance(r, FailedTraining):
            return run(parent, r.name, "FAILED", {"kind": "failed", "error": r.error[:5000]}, r.job)
        model = download_folder(str(r.model_url), tmp / r.name / "model")
        artifacts = {f"model/{f.relative_to(model)}": _content(f) for f in model.rglob("*") if f.is_file()}
        artifacts["training_curves.png"] = _figure(reporting.training_curves(r.history, r.name), tmp / r.name, "t.png")
        confusion = reporting.confusion(split.test_y, np.array(r.test_predictions), split.label_names, r.name)
        artifacts["confusion_matrix.png"] = _figure(confusion, tmp / r.name, "c.png")
        numbers = {**r.metrics, **{f"params_{k}": v for k, v in r.params.items()}}
        tags = {"kind": r.kind, "qllm.model": "pqc_head"}
        params = {**r.job, "seed": r.seed}
        return run(parent, r.name, "FINISHED", tags, params, metrics=metrics(numbers, r.history), artifacts=artifacts)

    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for point, rows, row in zip(points, trained, table, strict=True):
        name = "point " + ", ".join(f"{k}={v}" for k, v in point.items())
        tags = {"kind": "study point", "status": row["status"], **({"error": row["error"]} if "error" in row else {})}
        # one seed (the partial point): no spread
        numbers = {k: v for k, v in row.items() if isinstance(v, float) and (row["seeds_ok"] > 1 or "_std" not in k)}
        status = "FAILED" if row["status"] == "failed" else "FINISHED"
        out["study", name] = run("study", name, status, tags, point, metrics=metrics(numbers, {}))
        for r in rows:
            out["study", name, r.name] = seed_run(name, r)
    for b in baselines:  # their settings and parameter counts, as the quantum models'
        numbers = {**b.metrics, **{f"params_{k}": v for k, v in b.params.items()}}
        params = {**b.job, "seed": b.seed}
        out["study", b.name] = run(
            "study", b.name, "FINISHED", {"kind": b.kind}, params, metrics=metrics(numbers, b.history)
        )
    return out


def test_a_study_logs_its_points_seeds_and_baselines(root: Path, tmp_path: Path) -> None:
    """The study's MLflow runs, read back from a real store, are exactly the ones it is meant to
    log: every run, name, status, tag, param, metric step and artifact byte."""
    params = _study(grid={"qubits": [2, 3, 4]}, fixed={**FEW, "encoders": 1, "reuploads": 1})
    method = study_method("head")
    split = _synthetic_split(0)
    trained: list[list[Outcome]] = []
    for i, p in enumerate(params.point_params()):
        jobs = method.jobs(p, split)
        rows: list[Outcome] = [method.train(job, split, str(root), Hooks()) for job in jobs]
        failed = [FailedTraining(method.id, j.name, j.seed, job_record(j), "RuntimeError: injected") for j in jobs]
        trained.append([rows, [rows[0], failed[1]], failed][i])  # ok, partial, failed
    baselines = [r for seed in (0, 1) for r in method.baselines(params.point_params()[0], split, seed)]
    points = params.points()
    table = [_point_row(point, rows, params.metric) for point, rows in zip(points, trained, strict=True)]
    fig = reporting.sweep_plot(_plot_points(params, table), "qubits", params.metric, {}, "study")
    drawn = [  # as the workers draw them (tasks.train.train_chunk)
        [
            reporting.result_figures(r, split.test_y, split.label_names) if isinstance(r, TrainingResult) else {}
            for r in rows
        ]
        for rows in trained
    ]
    texts = [f"text {i}" for i in range(60)]
    labels = np.arange(60) % 2
    data = Dataset("synthetic", "unit vectors", ("neg", "pos"), texts[:40], labels[:40], texts[40:], labels[40:], {})
    record = tracking.data_record(data)
    with tracking.parent_run(Runtime(), "test-study-logging", "study", {}) as parent:
        for point, rows, figures, row in zip(points, trained, drawn, table, strict=True):
            _log_point(parent, method, point, rows, figures, row, split, record)
        _log_summary(parent, {"k": baselines}, {"k": record}, table, fig)
    client = MlflowClient()
    logged = _logged(client, parent.info.experiment_id)
    study_run = logged.pop(("study",))
    assert study_run["artifacts"].pop("study.png") == _figure(fig, tmp_path / "plot", "study.png")
    assert list(study_run["artifacts"]) == ["study.json"] and study_run["metrics"] == {}
    assert study_run["tags"]["mlflow.loggedArtifacts"] == '[{"path": "study.json", "type": "table"}]'
    logged_table = json.loads(Path(client.download_artifacts(parent.info.run_id, "study.json")).read_text())
    assert logged_table["columns"] == list(table[0])
    table_rows = [pytest.approx({k: row.get(k) for k in table[0]}) for row in table]  # pandas writes 10 digits
    assert [dict(zip(logged_table["columns"], r, strict=True)) for r in logged_table["data"]] == table_rows
    expected = _expected(points, trained, baselines, table, split, record, tmp_path / "expected")
    assert sorted(logged) == sorted(expected)
    for key, run in expected.items():
        assert logged[key] == run, key


def test_trainings_sharing_a_task_give_the_numbers_they_give_alone(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same study with a task per training and with all its trainings in one task: every
    training's stored result and model, and the study's table, are the same, timings aside."""
    stored, tables = {}, {}
    for label, grouping in (
        ("alone", lambda costs, workers: [[i] for i in range(len(costs))]),
        ("together", _one_chunk),
    ):
        monkeypatch.setattr(study_flow, "chunks", grouping)
        monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(tmp_path / label))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
            result = run_study(_study(dask_address=cluster.scheduler_address))
        assert result["trainings"] == 4 and result["failed"] == result["cached"] == 0
        stored[label] = {f.parent.name: _untimed(f) for f in (tmp_path / label).glob("students/*/result.json")}
        tables[label] = [{k: v for k, v in r.items() if not k.startswith("train_seconds")} for r in result["table"]]
    assert len(stored["alone"]) == 4 and stored["together"] == stored["alone"]
    assert tables["together"] == tables["alone"]


def _untimed(result_json: Path) -> dict[str, Any]:
    """A stored training without what depends on the clock, with its model's weights."""
    raw = json.loads(result_json.read_text())
    raw["metrics"] = {k: v for k, v in raw["metrics"].items() if k not in ("train_seconds", "latency_ms")}
    raw["history"] = {k: v for k, v in raw["history"].items() if k != "seconds"}
    raw["weights"] = (result_json.parent / "model" / "weights.safetensors").read_bytes()
    del raw["model_url"]  # under each run's own root
    return raw
