"""The federated flow end to end: a real Prefect run, client trainings and LLM fine-tunes as tasks
on a real Dask cluster, tracked in a real MLflow store; clients that fail are dropped and counted;
bad input is refused before any work."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main as cli
from flows.federated import run_federated
from lab.methods.federated import FederatedParams, simulated_failures
from lab.runtime import Runtime
from tasks.federated import llm_finetune
from tests.stack import assert_linked

pytestmark = pytest.mark.flow  # a real flow run on real servers: not in the fast tier

PARAMS = dict(
    train_size=120,
    test_size=60,
    clients=3,
    rounds=2,
    controller=["none", "adaptive"],
    baseline="logreg",
    llm_steps=2,
    llm_max_length=16,
    fail_rate=0.4,
    seed=1,
    experiment="test-federated",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("artifacts")
    mp = pytest.MonkeyPatch()
    mp.setenv("QLLM_ARTIFACT_ROOT", str(root))
    mp.setenv("QLLM_DASK_WORKERS", "2")
    yield run_federated(FederatedParams(**PARAMS))
    mp.undo()


def test_every_run_reports_and_failed_clients_are_dropped_and_counted(run: dict) -> None:
    expected = {r: simulated_failures(1, r, [0, 1, 2], 0.4) for r in (1, 2)}
    assert all(0 < len(f) < 3 for f in expected.values())  # the seed makes some, not all, fail
    assert [(row["run"], row["model"]) for row in run["table"]] == [
        ("none", "vqc"),
        ("adaptive", "vqc"),
        ("baseline-logreg", "logreg"),
    ]
    for row, detail in zip(run["table"], run["runs"], strict=True):
        records = detail["records"]
        assert len(records) == row["rounds_run"] >= 1  # adaptive may stop early; no round goes missing
        for rec in records:
            assert set(rec["failed"]) == expected[rec["round"]]
            assert set(rec["clients"]) == {0, 1, 2} - expected[rec["round"]]
            assert set(rec["selected"]) <= set(rec["clients"]) and rec["selected"]
        assert row["clients_failed"] == sum(len(expected[rec["round"]]) for rec in records)
        assert 0.0 <= row["final_accuracy"] <= 1.0
    quantum, baseline = run["table"][0], run["table"][2]
    assert quantum["circuit_evaluations"] > 0 and baseline["circuit_evaluations"] == 0
    assert quantum["bytes_down"] == sum(3 * 16 * 4 for _ in run["runs"][0]["records"])  # 16 float32 angles
    assert set(run["llm"]["sst2 iid"]) == {"client0", "client1", "client2", "server"}


def test_mlflow_holds_per_round_metrics_plots_and_models(run: dict) -> None:
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    client = MlflowClient()
    parent = client.get_run(run["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["clients"] == "3"
    assert_linked(run["mlflow_run_id"], "federated-report")
    assert parent.info.run_name.startswith("federated sst2 iid clients=3")
    assert any(k.startswith("system/") for k in parent.data.metrics)  # sampled during the rounds
    assert {f.path for f in client.list_artifacts(parent.info.run_id)} >= {
        "accuracy_sst2_iid.png",
        "results.json",
        "llm_losses.json",
    }
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == [
        "sst2/iid/adaptive",
        "sst2/iid/baseline-logreg",
        "sst2/iid/none",
    ]
    child = next(c for c in children if c.info.run_name == "sst2/iid/none")
    for c in children:  # each says its kind and data, as every flow's children do
        assert c.data.params["kind"] == c.data.tags["kind"] and c.data.params["data.name"] == "sst2"
        assert [d.dataset.name for d in c.inputs.dataset_inputs] == ["sst2"]
    accuracy = client.get_metric_history(child.info.run_id, "test/accuracy")
    assert sorted(m.step for m in accuracy) == [0, 1, 2]  # step = round; 0 is the initial model
    final = next(r for r in run["runs"] if r["run"] == "none")["records"][-1]["accuracy"]
    assert child.data.metrics["test/accuracy"] == pytest.approx(final)  # the final global model's
    dropped = client.get_metric_history(child.info.run_id, "failed_clients")
    assert sorted((m.step, m.value) for m in dropped) == [
        (r, float(len(simulated_failures(1, r, [0, 1, 2], 0.4)))) for r in (1, 2)
    ]
    for key in ("bytes_up", "bytes_down", "circuit_evaluations", "selected_clients", "client0.selected"):
        assert client.get_metric_history(child.info.run_id, key)
    files = {f.path for f in client.list_artifacts(child.info.run_id, "model")}
    assert {"model/weights.safetensors", "model/config.json", "model/circuit.qasm"} <= files


def test_llm_fine_tunes_are_cached_by_content(run: dict) -> None:
    from lab.data import load_dataset
    from lab.methods.federated import FederatedParams as P
    from lab.methods.federated import plan_split

    params = P(**PARAMS)
    data = load_dataset("sst2", train_size=120, test_size=60, seed=0)
    server, _ = plan_split(data.train_labels, "iid", 3, params.server_fraction, params.seed)
    again = llm_finetune.fn(
        "server",
        [data.train_texts[i] for i in server],
        [int(data.train_labels[i]) for i in server],
        2,
        None,
        params.llm_spec(),
        Runtime().artifact_root,
    )
    first = run["llm"]["sst2 iid"]["server"]
    assert again["cached"] and again["loss"] == first["loss"]


def test_rerun_reuses_every_finished_run(run: dict) -> None:
    again = run_federated(FederatedParams(**PARAMS))
    assert not any(r["cached"] for r in run["runs"]) and all(r["cached"] for r in again["runs"])
    assert again["table"] == run["table"] and again["runs"][0]["records"] == run["runs"][0]["records"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--clients", "200", "--train-size", "100"], "clients=200 exceeds the 90 training examples"),
        (["--partition", "dirichlet:0"], "alpha must be a finite number > 0"),
        (["--partition", "dirichlet:-1"], "alpha must be a finite number > 0"),
        (["--rounds", "0"], "greater than or equal to 1"),
        (["--controller", "none,sometimes"], "controller 'sometimes' is unknown"),
        (["--shots", "100"], "needs --backend aer"),
        (["--dataset", "sst3"], "sst3"),
        (["--train-size", "none", "--dataset", "{tiny}", "--clients", "12"], "clients=12 exceeds the"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = tmp_path / "tiny.tsv"
    tiny.write_text("text\tlabel\n" + "".join(f"sentence {i}\t{i % 2}\n" for i in range(12)))
    out = tmp_path / "artifacts"
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(out))
    code = cli(["run", "federated", *[a.replace("{tiny}", str(tiny)) for a in args]])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()  # nothing written, no server started
