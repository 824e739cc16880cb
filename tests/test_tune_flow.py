"""The tune flow end to end: trials as Prefect tasks on a real Dask cluster, each an MLflow child
run of the study's parent in a real MLflow store, the study in SQLite under the artifact root; a
repeated tune resumes instead of starting again, a larger budget runs only the missing trials;
bad input is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main as cli
from flows.tune import TuneParams, run_tune
from lab.corpus import load_corpus
from lab.runtime import Runtime
from tests.stack import assert_linked, child_runs, shared_lab

pytestmark = pytest.mark.flow  # a real flow run on real servers: not in the fast tier

FIXED = "train_size=120;test_size=60;epochs=3;batch_size=16;qubits=4;blocks=1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    with shared_lab(tmp_path_factory) as lab:
        yield lab


@pytest.fixture(scope="module")
def run(lab: tuple[Path, str]) -> dict:
    return run_tune(TuneParams(method="qdllm", trials=3, fixed=FIXED, seeds=[0, 1], experiment="test-tune"))


def test_trials_are_child_runs_and_the_best_is_scored_on_test(run: dict) -> None:
    assert [t["trial"] for t in run["trials"]] == [0, 1, 2]
    assert {t["state"] for t in run["trials"]} <= {"complete", "pruned"}
    assert set(run["best"]) == {"lr", "circuit_lr", "alpha", "temperature", "blocks"}
    (row,) = run["rows"]
    assert row["seeds"] == 2 and row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    client = MlflowClient()
    parent = client.get_run(run["mlflow_run_id"])
    assert parent.data.tags["method"] == "qdllm" and parent.data.tags["study_storage"].endswith(".db")
    assert_linked(run["mlflow_run_id"], "tune-qdllm")
    assert parent.info.run_name == "tune qdllm sst2 trials=3 seeds=0,1"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    kinds = sorted(c.data.tags["kind"] for c in children)
    assert kinds == ["final", "final", "trial", "trial", "trial"]
    for trial in (c for c in children if c.data.tags["kind"] == "trial"):
        assert {"lr", "blocks"} <= set(trial.data.params) and "seconds" in trial.data.metrics
        assert trial.data.params["kind"] == "trial" and trial.data.params["data.hash"] == parent.data.tags["data_hash"]
        assert len(client.get_metric_history(trial.info.run_id, "val/accuracy")) >= 1  # its pruning reports
    assert {"trials.json", "tuned.json"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}


def test_a_repeated_tune_resumes_and_a_larger_budget_runs_only_the_missing_trials(run: dict) -> None:
    again = run_tune(TuneParams(method="qdllm", trials=3, fixed=FIXED, seeds=[0, 1], experiment="test-tune"))
    assert again["study"].resumed == 3 and again["best"] == run["best"] and again["rows"] == run["rows"]
    more = run_tune(TuneParams(method="qdllm", trials=5, fixed=FIXED, seeds=[0, 1], experiment="test-tune"))
    assert more["study"].resumed == 3 and [t["trial"] for t in more["trials"]] == [0, 1, 2, 3, 4]


def test_an_lm_fine_tune_is_tuned_on_held_out_perplexity(lab: tuple[Path, str], tmp_path: Path) -> None:
    """QPA as published on the attention projections of a base pretrained here (two steps):
    trials scored by held-out perplexity, the lowest chosen, no head rate searched; the final
    trainings summarised over seeds, each with the texts its merged model wrote."""
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text(load_corpus("tiny_shakespeare").train_text[:60_000])
    fixed = {"task": "lm", "corpus": str(corpus), "pretrain_steps": 2, "target": ["c_attn"]}
    fixed |= {"steps": 4, "batch_size": 4, "max_length": 16, "eval_blocks": 4}
    run = run_tune(TuneParams(method="qpa-published", trials=2, fixed=fixed, seeds=[0, 1], experiment="test-tune-lm"))
    assert set(run["best"]) == {"adapter_lr", "circuit_lr"} and run["study"].objective.direction == "minimize"
    values = [t["value"] for t in run["trials"] if t["state"] == "complete"]
    assert run["study"].best_value == min(values)
    (row,) = run["rows"]
    assert row["seeds"] == 2 and row["perplexity"] > 1 and row["perplexity_std"] >= 0
    assert row["speech_perplexity"] != row["speech_perplexity_pad_counted"]
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    parent = MlflowClient().get_run(run["mlflow_run_id"])
    for trial in child_runs(parent, "tags.kind = 'trial'"):
        assert len(MlflowClient().get_metric_history(trial.info.run_id, "val/perplexity")) >= 1
    for final in child_runs(parent, "tags.kind = 'final'"):
        assert final.data.tags["merged_model"] and final.data.metrics["merged_max_abs_diff"] < 1e-3
        assert mlflow.artifacts.load_text(f"{final.info.artifact_uri}/samples.txt").count("---") == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "nope"], "--method: Input should be 'qdllm', 'qdllm-classical', 'logreg'"),
        (
            ["--space", "lr=1e-3:2"],
            "qdllm: search bound lr=2.0 is not allowed (Input should be less than or equal to 1)",
        ),
        (["--space", "qubitz=2:4"], "'qubitz' is not a parameter of qdllm"),
        (["--trials", "-1"], "--trials: Input should be greater than or equal to 0"),
        (["--fixed", "qubit=3"], "fixed ['qubit'] are not parameters of qdllm"),
        (["--fixed", "qubits=4;blocks=1,2"], "fixed ['blocks'] name several values"),
        (["--seeds", "1,1"], "--seeds: Value error, [1] given more than once"),
        (["--fixed", "dataset=sst3"], "unknown data set 'sst3'"),
        (["--method", "pqc-head", "--fixed", "per_label=2", "--tune-fraction", "0.9"], "leaves a class without"),
        (["--method", "qtha", "--fixed", "task=lm;max_length=256"], "above the pretrained base's context of 128"),
        (["--method", "qpa", "--fixed", "task=lm;target=c_atn"], "target_modules ['c_atn'] match no module"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifacts"
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(out))
    assert cli(["run", "tune", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
