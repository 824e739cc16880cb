"""The compare flow end to end on tiny settings: every method trains as Prefect tasks on a real
Dask cluster, the leaderboard lands in a real MLflow store (a child per method, the plot, system
metrics) and in the Prefect API (the table artifact, the trainings' progress artifacts); a re-run
reuses the cached trainings; bad input is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main as cli
from flows.compare import CLASSICAL, CompareParams, run_compare
from lab.data import load_dataset
from lab.methods import LEADERBOARD, METHODS
from lab.methods.peft import preflight as peft_preflight
from lab.runtime import Runtime
from qcore.federated.client_models import build_model
from qcore.models.pqc_head import PQCHead
from qcore.models.pqc_head_config import PQCHeadConfig
from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
from tests.stack import assert_linked, shared_lab

pytestmark = pytest.mark.flow  # a real flow run on real servers: not in the fast tier

TINY = dict(
    train_size=60,
    test_size=40,
    seeds=[0, 1],
    epochs=2,
    batch_size=16,
    finetune_steps=3,
    finetune_batch_size=4,
    max_length=16,
    qubits=4,
    blocks=1,
    head_qubits=3,
    head_encoders=1,
    clients=2,
    rounds=2,
    llm_steps=2,
    trials=0,
    experiment="test-compare",
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One artifact root, Prefect server and Dask cluster for the module's runs, so the
    artifacts can be read back from the API after a run."""
    with shared_lab(tmp_path_factory) as lab:
        yield lab


@pytest.fixture(scope="module")
def run(api: tuple[Path, str]) -> dict:
    return run_compare(CompareParams(**TINY))


def test_every_method_on_the_leaderboard_with_its_own_parameter_count(run: dict) -> None:
    table = {r["method"]: r for r in run["table"]}
    assert set(table) == set(LEADERBOARD)
    assert [r["accuracy"] for r in run["table"]] == sorted((r["accuracy"] for r in run["table"]), reverse=True)
    for r in run["table"]:
        assert r["seeds"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and r["train_seconds"] >= 0
    params = CompareParams(**TINY)
    expected = {
        "qdllm": QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2, qubits=4, blocks=1)).parameter_counts()[
            "total"
        ],
        "pqc-head": PQCHead(PQCHeadConfig(in_features=384, num_classes=2, qubits=3, encoders=1)).parameter_counts()[
            "total"
        ],
        "logreg": 384 + 1,  # sklearn's one weight vector for two classes
        "llm-qfl": sum(
            p.numel() for p in build_model(METHODS["llm-qfl"].for_budget(params, [0])[0].model_spec(2)).parameters()
        ),
        "llm-qfl-classical": sum(
            p.numel()
            for p in build_model(METHODS["llm-qfl-classical"].for_budget(params, [0])[0].model_spec(2)).parameters()
        ),
        "fed-logreg": (4 + 1) * 2,
    }
    data = load_dataset("sst2", train_size=60, test_size=40, seed=0)
    for m in ("lora", "qpa", "qtha", "qpa-classical", "qtha-classical"):
        plan = peft_preflight(METHODS[m].for_budget(params, [0])[0], data)
        expected[m] = plan.counts[m].trainable
    assert {m: table[m]["trainable_params"] for m in expected} == expected
    assert expected["llm-qfl"] == 16  # the paper's VQC: 4 qubits, RealAmplitudes reps 3
    assert 0.9 * 16 <= expected["llm-qfl-classical"] <= 1.1 * 16  # its stand-in: an MLP of about its size
    assert table["mlp"]["trainable_params"] == table["mlp-distilled"]["trainable_params"]


def test_mlflow_parent_with_a_child_per_method_plot_and_system_metrics(run: dict) -> None:
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    client = MlflowClient()
    parent = client.get_run(run["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert_linked(run["mlflow_run_id"], "compare-report")
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["method"] for c in children) == sorted(LEADERBOARD)
    for child in children:
        assert {"test/accuracy", "test/accuracy_std", "trainable_params", "train_seconds"} <= set(child.data.metrics)
        assert child.data.params["kind"] == "method" and child.data.params["data.hash"] == parent.data.tags["data_hash"]
        assert len(client.get_metric_history(child.info.run_id, "test/seed_accuracy")) == 2
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.png", "leaderboard.json", "seeds.json"} <= files
    png = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert any(k.startswith("system/") for k in parent.data.metrics)  # sampled while the methods trained


def _latest_artifact(url: str, key: str) -> dict:
    """The latest version of an artifact, read through the REST API as the UI reads it."""
    response = httpx.post(
        f"{url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "UPDATED_DESC", "limit": 1, "offset": 0},
    )
    response.raise_for_status()
    assert response.json(), f"no artifact {key}"
    return response.json()[0]


def test_prefect_has_the_table_and_progress_of_every_training(run: dict, api: tuple[Path, str]) -> None:
    table = _latest_artifact(api[1], "compare-leaderboard")
    assert table["type"] == "table" and "qdllm" in str(table["data"])
    for key in ("progress-student-q4-b1-a0-5-s0", "progress-head-q3-e1-l2-r3-m1-s1", "progress-lora-s1"):
        progress = _latest_artifact(api[1], key)
        assert progress["type"] == "progress" and progress["task_run_id"], key  # a training task's
        assert progress["data"] == 100.0  # updated as it trained, finished
    rounds = _latest_artifact(api[1], "progress-federated-sst2-iid-adaptive-s1")  # the flow runs the rounds
    assert rounds["type"] == "progress" and rounds["flow_run_id"] and rounds["data"] == 100.0


def test_rerun_reuses_every_cached_training(run: dict) -> None:
    again = run_compare(CompareParams(**TINY))
    cached = {r["method"]: r["cached"] for r in again["table"]}
    federated = ("llm-qfl", "llm-qfl-classical", "fed-logreg")
    assert all(cached[m] == 2 for m in ("qdllm", "pqc-head", "lora", "qpa", "qtha", *federated))
    first = {r["method"]: r["accuracy"] for r in run["table"]}
    assert {m: r["accuracy"] for m, r in ((r["method"], r) for r in again["table"])} == first


def test_each_methods_best_model_is_the_registered_champion(run: dict) -> None:
    """After the run and its re-run (which registers nothing new): every method that stores a
    model has its best seed registered with the ``champion`` alias, and that pyfunc, loaded by
    alias, classifies the raw test texts with the accuracy the run measured."""
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    client = MlflowClient()
    assert set(run["champions"]) == {"qdllm", "pqc-head", "lora", "qpa", "qpa-published", "qtha"}
    data = load_dataset("sst2", train_size=60, test_size=40, seed=0)
    for m, uri in run["champions"].items():
        champion = client.get_model_version_by_alias(f"qllm-{m}-sst2", "champion")
        assert uri == f"models:/qllm-{m}-sst2/{champion.version}"
        assert champion.tags["qllm.source_run"] == run["mlflow_run_id"]
        best = max(r["accuracy"] for r in run["rows"] if r["method"] == m)
        assert float(champion.tags["test_accuracy"]) == pytest.approx(best, abs=1e-6)
        assert len(client.search_model_versions(f"name = 'qllm-{m}-sst2'")) == 1
    for m in ("qdllm", "lora"):
        predicted = mlflow.pyfunc.load_model(f"models:/qllm-{m}-sst2@champion").predict(list(data.test_texts))
        truth = [data.label_names[y] for y in data.test_labels]
        assert np.mean(predicted["label"] == truth) == pytest.approx(float(champion_accuracy(client, m)), abs=1e-6)


def champion_accuracy(client: MlflowClient, method: str) -> str:
    return client.get_model_version_by_alias(f"qllm-{method}-sst2", "champion").tags["test_accuracy"]


def test_intervals_and_paired_tests_against_the_classical_rows(run: dict) -> None:
    rows = {r["method"]: r for r in run["intervals"]}
    assert set(rows) == set(LEADERBOARD) and all(r["seeds"] == 2 for r in rows.values())
    for r in rows.values():
        assert r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] and r["majority"] == 0.5
        assert r["vs_majority"] in ("indistinguishable", "below", "above")
    for m in ("qdllm", "pqc-head", "lora", "qtha", "llm-qfl"):  # per-example predictions: a paired test
        assert rows[m]["vs"] in {LEADERBOARD[c] for c in CLASSICAL}  # the baselines and the classical stand-ins
        assert 0 <= rows[m]["p_value"] <= 1 and rows[m]["difference_low"] <= rows[m]["difference_high"]
    assert "vs" not in rows["logreg"] and "Untuned (trials 0)" in run["markdown"]
    standins = {"qdllm-classical", "pqc-head-classical", "qpa-classical", "qtha-classical", "llm-qfl-classical"}
    assert set(CLASSICAL) == {"logreg", "mlp", "mlp-distilled", "fed-logreg", *standins}
    # the final global model's predictions: an interval over seeds and test examples, a paired test
    assert rows["fed-logreg"]["accuracy_low"] < rows["fed-logreg"]["accuracy_high"]
    # the accuracy lost at the circuits' (a stand-in's: its own) mean output; LoRA has no circuit
    for m in ("qdllm", "pqc-head", "qpa", "qtha", "llm-qfl", *standins):
        assert rows[m]["contribution_low"] <= rows[m]["contribution"] <= rows[m]["contribution_high"]
    assert "contribution" not in rows["lora"] and "contribution" not in rows["fed-logreg"]


def test_a_tuned_compare_tunes_each_method_under_one_budget(api: tuple[Path, str]) -> None:
    methods = ["qdllm", "lora", "logreg", "llm-qfl", "fed-logreg"]
    runs = api[0] / "federated" / "runs"
    before = set(runs.glob("*.npz"))
    result = run_compare(CompareParams(**{**TINY, "methods": methods, "trials": 2, "experiment": "test-tuned"}))
    assert "Tuned: 2 trials per method" in result["markdown"]
    for method in ("qdllm", "lora", "logreg", "llm-qfl", "fed-logreg"):  # classical rivals too, each on its own
        assert f"- {LEADERBOARD[method]}: " in result["markdown"]
    assert "logreg_c=" in result["markdown"]
    studies = list((api[0] / "tuning").glob("*.db"))
    assert len(studies) == 5  # one study per tuned method, under the artifact root
    rows = {r["method"]: r for r in result["intervals"]}
    assert rows["lora"]["vs"] and rows["qdllm"]["seeds"] == 2
    assert rows["llm-qfl"]["vs"] and "contribution" in rows["llm-qfl"]  # tuned, still from its predictions
    # The federated trials trained on what the hold-out leaves of the training split (60 - 12),
    # less the server's share: their stored runs' clients hold 43 examples, the final runs' 54.
    clients = set()
    for path in set(runs.glob("*.npz")) - before:
        with np.load(path) as npz:
            first = json.loads(str(npz["meta"]))["records"][0]
        clients.add(sum(c["examples"] for c in first["clients"].values()))
    assert clients == {43, 54}


def test_a_setfit_body_is_what_the_feature_methods_read(api: tuple[Path, str], run: dict) -> None:
    """compare --body setfit: the encoder is fine-tuned first (stored under the root) and the
    feature rows read the embeddings of that body, a teacher output of their own."""
    teacher = api[0] / "teacher"
    before = set(teacher.glob("*.npz"))
    params = CompareParams(
        **{**TINY, "methods": ["logreg", "mlp"], "body": "setfit", "body_iterations": 1, "experiment": "test-body"}
    )
    result = run_compare(params)
    assert len(list((api[0] / "bodies").iterdir())) == 1  # the fine-tuned body, stored by content
    assert len(set(teacher.glob("*.npz")) - before) == 1  # embeddings of the body, not the frozen encoder's
    assert "(SetFit body)" in result["markdown"] and "(frozen MiniLM)" in run["markdown"]
    assert {r["method"] for r in result["table"]} == {"logreg", "mlp"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--methods", "qdllm,nope"], "--methods.1"),
        (["--overrides", "qtha.adapter_lr=2"], "qtha.adapter_lr: Value error, qtha=2 is not a learning rate"),
        (["--overrides", "qtha.rank_x=2"], "'rank_x' is not a parameter of qtha"),
        (["--overrides", "qtha.rank=1000"], "rank r=1000 exceeds layer"),  # the adapter's preflight
        (["--methods", "qdllm", "--overrides", "lora.head_lr=0.1"], "override 'lora.head_lr' names no chosen method"),
        (["--trials", "-1"], "--trials: Input should be greater than or equal to 0"),
        (["--methods", "qdllm,qdllm"], "['qdllm'] given more than once"),
        (["--controller", "bogus"], "controller 'bogus' is unknown"),
        (["--train-size", "40", "--clients", "50"], "clients=50 exceeds"),
        (["--dataset", "sst3"], "unknown data set 'sst3'"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifacts"
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(out))
    assert cli(["run", "compare", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "rows,message",
    [
        ("text\tlabel\n" + "".join(f"text number {i}\tpos\n" for i in range(40)), "1 class"),
        ("text\n" + "".join(f"text number {i}\n" for i in range(40)), "no label column"),
    ],
)
def test_data_without_two_classes_is_refused_before_any_work(
    rows: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.tsv"
    data.write_text(rows)
    out = tmp_path / "artifacts"
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(out))
    assert cli(["run", "compare", "--dataset", str(data), "--train-size", "20", "--clients", "2"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
