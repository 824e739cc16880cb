"""Registered models: a real trained QD-LLM student registered as a ``pyfunc`` that classifies raw
text, served by a real ``mlflow models serve`` on loopback and loaded by ``models:/`` reference,
giving what the student gives in-process; unknown references refused by name, with exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from flows.cli import main as cli
from lab import registry, tracking
from lab.data import load_dataset
from lab.results import FailedTraining, TrainingResult
from lab.runtime import Runtime
from lab.teacher import TeacherSpec, embed_texts
from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
from qcore.training import train
from tests.servers import BIN, free_port, http_ok, start, stop, wait_until

pytestmark = pytest.mark.system  # starts a real MLflow scoring server

TEXTS = ["a warm, funny and wholly engaging film", "a tedious, joyless mess", "it is a movie"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 3-qubit student trained for seconds on MiniLM features of SST-2, registered from a
    parent run naming the data set (as the distill flow registers its best seed), with the alias
    ``champion``; the MLflow store is a SQLite file under a fresh artifact root."""
    root = tmp_path_factory.mktemp("registry")
    mp = pytest.MonkeyPatch()
    mp.setenv("QLLM_ARTIFACT_ROOT", str(root))
    data = load_dataset("sst2", train_size=60, test_size=8, seed=0)
    spec = TeacherSpec()
    x = embed_texts(data.train_texts)
    model = QDLLMStudent(QDLLMConfig(in_features=x.shape[1], num_classes=2, qubits=3, blocks=1))
    y = torch.tensor(data.train_labels)
    train(model, torch.as_tensor(x), y, None, epochs=4, batch_size=16, lr=0.05, alpha=0.0)
    folder = model.save(root / "students" / "k" / "model")
    meta = {"teacher": dataclasses.asdict(spec), "label_names": list(data.label_names)}
    (folder / "teacher.json").write_text(json.dumps(meta))
    result = TrainingResult("qdllm", "student-q3-b1-s0", "qdllm", 0, {"accuracy": 0.625}, {}, model_url=str(folder))
    with tracking.parent_run(Runtime(), "test-registry", "distill", {"dataset": "sst2"}) as parent:
        version = registry.register(result, dataset="sst2", label_names=data.label_names, flow="distill")
        again = registry.register(result, dataset="sst2", label_names=data.label_names, flow="distill")
        registry.set_champion(version)
    yield {"root": root, "folder": folder, "version": version, "again": again, "parent": parent.info.run_id}
    mp.undo()


def in_process(lab: dict[str, Any]) -> pd.DataFrame:
    """What the saved student itself says about :data:`TEXTS`."""
    return registry.predictions(registry.QuantumText(lab["folder"]), TEXTS)


def test_registered_once_with_signature_example_and_its_source(lab: dict[str, Any]) -> None:
    version = lab["version"]
    assert version.name == "qllm-qdllm-sst2" and lab["again"].version == version.version  # no second version
    assert version.run_id == lab["parent"] and version.tags["qllm.source_run"] == lab["parent"]
    assert version.tags["qllm.training"] == "student-q3-b1-s0" and lab["parent"] in version.description
    info = mlflow.models.get_model_info("models:/qllm-qdllm-sst2@champion")
    assert [c.type.name for c in info.signature.inputs.inputs] == ["string"]
    assert info.signature.outputs.input_names() == ["label", "probability_negative", "probability_positive"]
    example = mlflow.models.Model.load("models:/qllm-qdllm-sst2@champion").load_input_example()
    assert list(example["text"]) == list(registry.EXAMPLE["text"])


def test_pyfunc_by_alias_and_version_gives_the_students_predictions(lab: dict[str, Any]) -> None:
    expected = in_process(lab)
    assert set(expected["label"]) <= {"negative", "positive"}
    for uri in ("models:/qllm-qdllm-sst2@champion", f"models:/qllm-qdllm-sst2/{lab['version'].version}"):
        model = mlflow.pyfunc.load_model(uri)
        pd.testing.assert_frame_equal(model.predict(TEXTS), expected)
        pd.testing.assert_frame_equal(model.predict(pd.DataFrame({"text": TEXTS})), expected)


def test_mlflow_models_serve_answers_raw_text_as_the_model_does(lab: dict[str, Any], tmp_path: Path) -> None:
    """``mlflow models serve -m models:/…@champion`` on a free loopback port: the posted texts'
    labels and probabilities are the in-process model's."""
    port = free_port()
    # the server runs `uvicorn` by name: the venv's bin first on PATH
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": Runtime().tracking_uri(), "PATH": path}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/qllm-qdllm-sst2@champion"]
    server = start("scoring", [*cmd, "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)], env, tmp_path)
    try:
        wait_until(http_ok(f"http://127.0.0.1:{port}/ping"), [server], 240, "mlflow models serve")
        request = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
        assert response.status_code == 200, response.text
        served = pd.DataFrame(response.json()["predictions"])
        by_list = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": TEXTS}, timeout=60)
        assert by_list.status_code == 200, by_list.text
    finally:
        stop([server])
    print(f"POST /invocations {json.dumps(request)}\n-> {response.text}")
    expected = in_process(lab)
    assert list(served["label"]) == list(expected["label"])
    np.testing.assert_allclose(served.drop(columns="label").to_numpy(), expected.drop(columns="label"), atol=1e-6)
    assert pd.DataFrame(by_list.json()["predictions"])["label"].tolist() == list(expected["label"])


def test_qllm_predict_takes_a_registered_model(lab: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    assert cli(["predict", "--model", "models:/qllm-qdllm-sst2@champion", *TEXTS]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = in_process(lab)
    assert [line["label"] for line in lines] == list(expected["label"])
    assert [line["probabilities"]["positive"] for line in lines] == [
        round(p, 4) for p in expected["probability_positive"]
    ]


@pytest.mark.parametrize(
    "uri,message",
    [
        ("models:/qllm-nowhere@champion", "no registered model 'qllm-nowhere'"),
        (
            "models:/qllm-qdllm-sst2@nobody",
            "has no alias 'nobody' (from 'models:/qllm-qdllm-sst2@nobody'); its aliases: champion",
        ),
        ("models:/qllm-qdllm-sst2/99", "has no version 99"),
        ("models:/qllm-qdllm-sst2", "is not models:/NAME@ALIAS or models:/NAME/VERSION"),
    ],
)
def test_unknown_references_are_refused_by_name(
    lab: dict[str, Any], uri: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    """``qllm predict`` and ``qllm run hardware``: exit 2 and one line naming the value (an
    exception would fail the test: :func:`flows.cli.main` returns only when it refused)."""
    for argv in (["predict", "--run-id", uri, "some text"], ["run", "hardware", "--run-id", uri, "--dry-run"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err


def test_best_seed_per_configuration() -> None:
    """One model per configuration: its most accurate seed; failures and classical rows skipped."""

    def trained(seed: int, qubits: int, accuracy: float) -> TrainingResult:
        job = {"qubits": qubits, "seed": seed, "backend_options": {"simulator_seed": seed}}
        return TrainingResult(
            "qdllm",
            f"q{qubits}-s{seed}",
            "qdllm",
            seed,
            {"accuracy": accuracy},
            {},
            job=job,
            model_url=f"/m/{qubits}/{seed}",
        )

    rows = [trained(0, 4, 0.6), trained(1, 4, 0.7), trained(0, 5, 0.8), trained(1, 5, 0.5)]
    classical = TrainingResult("mlp", "mlp-s0", "mlp", 0, {"accuracy": 0.9}, {})
    failed = FailedTraining("qdllm", "q6-s0", 0, {"qubits": 6, "seed": 0}, "boom")
    best = registry.best_per_configuration([*rows, classical, failed])
    assert sorted(r.name for r in best) == ["q4-s1", "q5-s0"]


def test_names_of_data_sets_given_by_url() -> None:
    assert registry.registered_name("pqc-head", "sst2") == "qllm-pqc-head-sst2"
    a = registry.registered_name("qdllm", "s3://bucket/a/reviews.csv")
    b = registry.registered_name("qdllm", "s3://bucket/b/reviews.csv")
    assert a.startswith("qllm-qdllm-reviews-") and a != b
