"""MLflow metric names say the split they were measured on (``lab.tracking.metric_name``): one
bare ``accuracy`` for a run's test score and its epochs' training accuracy made MLflow show the
last epoch's training accuracy as the run's score."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine, text

from lab import tracking
from lab.data import Dataset
from lab.runtime import Runtime
from lab.tracking import metric_name
from tests.stack import MLFLOW_LINK


@pytest.mark.parametrize(
    "key,curve,name",
    [
        ("accuracy", False, "test/accuracy"),  # a result's final scores are the test split's
        ("macro_f1", False, "test/macro_f1"),
        ("agreement", False, "test/agreement"),
        ("accuracy_low", False, "test/accuracy_low"),
        ("accuracy", True, "train/accuracy"),  # an epoch curve is training
        ("loss", True, "train/loss"),
        ("train_loss", True, "train/loss"),
        ("val_accuracy", True, "val/accuracy"),  # early-stopping hold-out
        ("held_out_accuracy", True, "val/accuracy"),  # a tuning trial's reports
        ("perplexity", False, "val/perplexity"),  # causal LM: held-out validation blocks
        ("final_train_loss", False, "train/final_loss"),
        ("train_seconds", False, "train_seconds"),  # no split
        ("params_total", False, "params_total"),
        ("test/seed_accuracy", True, "test/seed_accuracy"),  # already says its split
    ],
)
def test_metric_names_say_their_split(key: str, curve: bool, name: str) -> None:
    assert metric_name(key, curve=curve) == name


# --- names, links and what every child run records, read back from a real MLflow store ----------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The lab's settings on a fresh SQLite store of their own, with no UI address configured."""
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(tmp_path))
    for name in ("QLLM_MLFLOW_URI", "QLLM_MLFLOW_UI_URL"):
        monkeypatch.delenv(name, raising=False)
    return Runtime()


def _dataset(name: str, train: list[str]) -> Dataset:
    labels = np.arange(len(train)) % 2
    return Dataset(name, f"{name}: a test set", ("neg", "pos"), train, labels, ["c", "d"], np.array([0, 1]), {})


@pytest.mark.parametrize(
    "words,settings,name",
    [
        (
            ("distill", "sst2"),
            {"q": [4, 6], "blocks": [2], "seeds": [0, 1, 2, 3, 4]},
            "distill sst2 q=4,6 blocks=2 seeds=0-4",
        ),
        (("head", "/data/reviews.tsv"), {"seeds": [0, 1]}, "head reviews.tsv seeds=0,1"),  # two seeds: no range
        (("study", "head", ""), {"seeds": 5}, "study head seeds=5"),  # an empty word is left out
        (("tune", "x" * 80), {}, "tune " + "x" * 54 + "…"),  # cut to NAME_CHARS
    ],
)
def test_run_names_say_what_a_run_is(words: tuple[str, ...], settings: dict, name: str) -> None:
    assert tracking.run_name(*words, **settings) == name
    assert len(name) <= tracking.NAME_CHARS


def test_summary_metric_names_are_readable_and_taken_by_mlflow(store: Runtime) -> None:
    names = {
        tracking.summary_name("accuracy", "MLP (labels only)"): "test/accuracy/MLP labels only",
        tracking.summary_name("accuracy_std", "quantum student"): "test/accuracy_std/quantum student",
        tracking.summary_name("train_seconds", "PQC head"): "train_seconds/PQC head",
        tracking.summary_name("accuracy", "noisy fake_manila+shots=256"): "test/accuracy/noisy fake_manila shots 256",
        tracking.summary_name("accuracy", "a/b (c)"): "test/accuracy/a b c",  # no extra path level
    }
    assert list(names) == list(names.values())
    with tracking.parent_run(store, "test-names", "names", {}) as run:
        mlflow.log_metrics(dict.fromkeys(names, 0.5))  # MLflow refuses a name it does not accept
    assert set(MlflowClient().get_run(run.info.run_id).data.metrics) == set(names)


def test_one_seed_logs_no_spread(store: Runtime) -> None:
    table = [
        {"model": "one", "seeds": 1, "accuracy": 0.7, "accuracy_std": 0.0},
        {"model": "two", "seeds": 2, "accuracy": 0.6, "accuracy_std": 0.1},
    ]
    with tracking.parent_run(store, "test-spread", "spread", {}) as run:
        tracking.log_summary(table)
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert metrics == {"test/accuracy/one": 0.7, "test/accuracy/two": 0.6, "test/accuracy_std/two": 0.1}


@pytest.mark.parametrize(
    "tracking_uri,ui",
    [
        (None, "http://127.0.0.1:5000"),  # a local store: what `mlflow ui` serves
        ("http://mlflow:5000/", "http://mlflow:5000"),  # a tracking server serves its own UI
        ("https://alice:s3cret@mlflow.example.org", "https://mlflow.example.org"),  # credentials are not logged
    ],
)
def test_the_ui_address_follows_the_tracking_server(
    tracking_uri: str | None, ui: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QLLM_MLFLOW_UI_URL", raising=False)
    monkeypatch.delenv("QLLM_MLFLOW_URI", raising=False)
    if tracking_uri:
        monkeypatch.setenv("QLLM_MLFLOW_URI", tracking_uri)
    assert Runtime().mlflow_ui() == ui
    monkeypatch.setenv("QLLM_MLFLOW_UI_URL", "https://ui.example.org/mlflow/")
    assert Runtime().mlflow_ui() == "https://ui.example.org/mlflow"


def test_a_parent_run_prints_its_link(store: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    with tracking.parent_run(store, "test-link", "link", {}) as run:
        pass
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("MLflow run")]
    [(run_id, link)] = MLFLOW_LINK.findall(line)
    assert run_id == run.info.run_id
    assert link == f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    url = tracking.run_url(store, run.info.experiment_id, run_id)
    assert tracking.run_markdown(store, run) == f"MLflow run `{run_id}`: [{url}]({url})"


def test_children_record_their_kind_and_data(store: Runtime) -> None:
    """Children of runs on different data are told apart by their params and MLflow datasets."""
    first, second = _dataset("first", ["a", "b", "e"]), _dataset("second", ["a", "b"])
    with tracking.parent_run(store, "test-data", "data", {}) as parent:
        ids = [
            tracking.log_child(
                parent, f"child {i}", kind="PQC head", data=tracking.data_record(d), params={"lr": 0.1}, metrics={}
            )
            for i, d in enumerate((first, second))
        ]
    client = MlflowClient()
    for run_id, data in zip(ids, (first, second), strict=True):
        run = client.get_run(run_id)
        assert run.data.params == {
            "lr": "0.1",
            "kind": "PQC head",
            "data.name": data.name,
            "data.hash": data.content_hash,
            "data.train_size": str(len(data.train_texts)),
            "data.test_size": "2",
        }
        assert run.data.tags["kind"] == "PQC head"
        [logged] = run.inputs.dataset_inputs
        assert (logged.dataset.name, logged.dataset.digest) == (data.name, data.content_hash[: tracking.DIGEST_CHARS])
        assert json.loads(logged.dataset.profile)["num_rows"] == len(data.train_texts) + 2
        assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "train/test")]


def test_a_sqlite_store_keeps_a_write_ahead_log(store: Runtime, tmp_path: Path) -> None:
    """The lab's SQLite store is in WAL mode once MLflow has written to it; another SQLite file
    the same process opens through SQLAlchemy keeps SQLite's default journal."""
    with tracking.parent_run(store, "test-wal", "wal", {"lr": 0.1}):
        pass
    db = store.tracking_uri().removeprefix("sqlite:///")
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other = tmp_path / "other.db"
    with create_engine(f"sqlite:///{other}").connect() as conn:
        conn.execute(text("create table t (x int)"))
        assert conn.execute(text("PRAGMA journal_mode")).fetchone() == ("delete",)


# --- how a parent run ends: an error FAILED, a signal KILLED, with any child it left open -------------


@pytest.mark.parametrize(
    ("error", "status"),
    [(ValueError("bad"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (SystemExit(143), "KILLED")],
    ids=["error", "ctrl-c", "exit"],
)
def test_a_parent_run_ends_as_what_ended_it(store: Runtime, error: BaseException, status: str) -> None:
    """A stop (Ctrl-C, Prefect's TerminationSignal on SIGTERM, an exit) is not a failure: MLflow
    showed stopped runs as FAILED, or left them RUNNING; a child the stop caught between its
    creation and its end (federated's, created by hand) ends with its parent."""
    with pytest.raises(type(error)), tracking.parent_run(store, "test-end", "end", {}) as run:
        parent_id = run.info.run_id
        child = MlflowClient().create_run(run.info.experiment_id, tags={"mlflow.parentRunId": parent_id})
        raise error
    client = MlflowClient()
    assert client.get_run(parent_id).info.status == status
    assert client.get_run(child.info.run_id).info.status == status
    assert tracking.opened_runs()[-1] == parent_id


def test_a_crashed_flow_runs_hook_ends_its_mlflow_runs(store: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    """A flow run whose process died without a word gets the flow's on_crashed hook from its worker:
    the runs tagged with that flow run, left RUNNING, end FAILED; another flow run's stay."""
    import uuid

    from prefect import states
    from prefect.client.schemas.objects import FlowRun

    from flows.distill import distill
    from flows.runner import end_mlflow_runs

    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="killed")
    experiment = tracking.setup(store, "test-hook")
    client = MlflowClient()
    ours = client.create_run(experiment, tags={"prefect.flow_run_id": str(flow_run.id)}).info.run_id
    other = client.create_run(experiment, tags={"prefect.flow_run_id": str(uuid.uuid4())}).info.run_id
    assert end_mlflow_runs in distill.on_crashed_hooks
    end_mlflow_runs(distill, flow_run, states.Crashed())
    assert client.get_run(ours).info.status == "FAILED"
    assert client.get_run(other).info.status == "RUNNING"
    assert f"MLflow run {ours} marked FAILED" in capsys.readouterr().out
