"""The peft flow end to end: real Prefect runs on a real Dask cluster, tracked in a real MLflow
store. LoRA, QPA and QTHA fine-tune the embedded MiniLM on SST-2 (classify) and the GPT-2 base
the flow pretrains on part of a text file (lm); the merged models load as plain
Hugging Face folders. Then ``qllm peft count`` from a config alone, and bad input, refused
before anything starts or is written."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pytest
import torch
import transformers
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from flows.cli import count_main, count_parser
from flows.peft import NOISE_TITLE, run_peft
from lab.corpus import load_corpus
from lab.data import DataError
from lab.methods.peft import PeftParams
from lab.runtime import Runtime
from lab.sentence_classifier import PooledClassifier, load_classifier
from lab.teacher import ModelNotFoundError
from qcore.adapters import AdapterError
from tests.stack import assert_linked, shared_lab

pytestmark = pytest.mark.flow  # a real flow run on real servers: not in the fast tier

TINY = dict(steps=3, batch_size=4, max_length=16)
# Shot noise only: a fake device's noise on an adapter's circuits is tests/test_adapter_noise.py's.
CLASSIFY = dict(**TINY, train_size=24, test_size=16, noise_devices=[], experiment="test-peft")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's artifact root, in a lab shared by its flow runs (tests/stack.py)."""
    with shared_lab(tmp_path_factory) as (path, _):
        yield path


@pytest.fixture(scope="module")
def classify(root: Path) -> dict:
    return run_peft(PeftParams(**CLASSIFY))


def test_classify_compares_the_three_methods(classify: dict) -> None:
    rows = {r["method"]: r for r in classify["table"]}
    assert list(rows) == ["lora", "qpa", "qtha"] and classify["targets"] == ["query", "value"]
    assert rows["lora"]["adapter_params"] == 36_864 and rows["lora"]["ratio_to_lora"] == 1.0
    assert rows["lora"]["trainable_params"] == 36_864 + 384 * 2 + 2  # the new head trains in full
    assert rows["qpa"]["adapter_params"] < rows["lora"]["adapter_params"]
    assert rows["qtha"]["ratio_to_lora"] == pytest.approx(8_640 / 36_864)
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and r["final_train_loss"] > 0 and r["seconds_per_step"] > 0
        assert r["peak_memory_mib"] > 80  # MiniLM's weights alone are ~87 MiB
        assert r["merged_max_abs_diff"] <= 1e-5 * 10
    assert "| lora | 36,864 | 100.00% |" in classify["markdown"]
    noisy = classify["markdown"].split(NOISE_TITLE)[1]  # the methods with a circuit, LoRA not
    assert [line.split(" | ")[:2] for line in noisy.splitlines() if line.startswith("| q")] == [
        ["| qpa", "shots=1024"],
        ["| qtha", "shots=1024"],
    ]


def test_merged_classifier_is_a_hugging_face_encoder_and_its_head(classify: dict) -> None:
    """On a sentence transformer the head reads the encoder's own (mean, unit-length) pooling."""
    folder = Path(classify["merged"]["qpa"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = load_classifier(folder).eval()
    encoder = transformers.AutoModel.from_pretrained(folder).eval()  # the merged body, plain
    inputs = tokenizer(["a gorgeous, witty film", "a dull one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = encoder(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1)
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert isinstance(model, PooledClassifier) and (model.pooling, model.normalize) == ("mean", True)
    torch.testing.assert_close(logits, model.classifier(pooled))
    assert logits.shape == (2, 2) and encoder.config.id2label == {0: "negative", 1: "positive"}


def test_mlflow_has_parent_children_curves_and_adapters(classify: dict) -> None:
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    client = MlflowClient()
    parent = client.get_run(classify["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["methods"] == "['lora', 'qpa', 'qtha']"
    assert_linked(classify["mlflow_run_id"], "peft-report")
    assert parent.info.run_name == f"peft classify sst2 lora,qpa,qtha steps={TINY['steps']}"
    assert any(k.startswith("system/") for k in parent.data.metrics)  # sampled while the methods trained
    assert {"loss_curves.png", "results.json"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["method"] for c in children) == ["lora", "qpa", "qtha"]
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == TINY["steps"]
        row = next(r for r in classify["table"] if r["method"] == child.data.tags["method"])
        assert child.data.metrics["test/accuracy"] == pytest.approx(row["accuracy"])  # as the table prints it
        assert child.data.params["kind"] == "adapter" and child.data.params["data.name"] == "sst2"
        assert child.data.metrics["params_total"] == row["trainable_params"]
        files = {f.path for f in client.list_artifacts(child.info.run_id, "model")}
        assert {"model/adapter_config.json", "model/adapter_model.safetensors"} <= files


def test_each_merged_classifier_is_registered(classify: dict) -> None:
    """Each method's merged model as a registered pyfunc of raw text, from the flow's run."""
    mlflow.set_tracking_uri(Runtime().tracking_uri())
    texts = ["a gorgeous, witty film", "a dull one"]
    for method in ("lora", "qpa", "qtha"):
        version = MlflowClient().search_model_versions(f"name = 'qllm-{method}-sst2'")[0]
        assert version.tags["qllm.source_run"] == classify["mlflow_run_id"]
        predicted = mlflow.pyfunc.load_model(f"models:/qllm-{method}-sst2/{version.version}").predict(texts)
        assert set(predicted["label"]) <= {"negative", "positive"}
        assert (predicted["probability_negative"] + predicted["probability_positive"]).round(5).eq(1).all()


def test_rerun_reuses_every_finished_method(classify: dict) -> None:
    again = run_peft(PeftParams(**CLASSIFY))
    assert all(m["cached"] for m in again["methods"])
    assert [r["accuracy"] for r in again["table"]] == [r["accuracy"] for r in classify["table"]]


def test_lm_without_a_model_adapts_a_base_pretrained_on_the_corpus(root: Path, tmp_path: Path) -> None:
    # the first 60,000 characters of tiny Shakespeare: the base learns the first half of its
    # training part, the adapters the second, both are validated on the last 10 %
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text(load_corpus("tiny_shakespeare").train_text[:60_000])
    params = PeftParams(
        **TINY, task="lm", corpus=str(corpus), pretrain_steps=2, eval_blocks=4, experiment="test-peft-lm"
    )
    result = run_peft(params)
    for row in result["table"]:
        assert 1 < row["perplexity"] < float("inf") and row["merged_max_abs_diff"] <= 1e-5 * 10
        assert 1 < row["speech_perplexity"] != row["speech_perplexity_pad_counted"]  # both, told apart
    parent = MlflowClient().get_run(result["mlflow_run_id"])
    children = MlflowClient().search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    for child in children:  # each method's merged model wrote after three speakers' names
        text = mlflow.artifacts.load_text(f"{child.info.artifact_uri}/samples.txt")
        assert text.count("---") == 2 and len(text) > 60
    assert parent.data.tags["base_key"] and parent.data.metrics["base/parameters"] > 1e6
    assert result["targets"] == ["lm_head"]  # as in the QPA paper; GPT-2 ties it to the embedding
    base = transformers.AutoModelForCausalLM.from_pretrained(result["model"])
    assert base.config.n_layer == 4 and base.config.n_positions == 128
    merged = transformers.AutoModelForCausalLM.from_pretrained(result["merged"]["qtha"])
    assert torch.equal(merged.transformer.wte.weight, base.transformer.wte.weight)
    assert not torch.equal(merged.lm_head.weight, base.lm_head.weight)


def test_named_corpus_is_tiny_shakespeare() -> None:
    corpus = load_corpus("tiny_shakespeare")
    assert len(corpus.train_text) + len(corpus.val_text) == 1_115_394
    assert corpus.train_text.startswith("First Citizen:") and len(corpus.val_text) == 111_540


def test_count_command_from_a_folder_holding_only_config_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transformers.GPT2Config().save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    parser = argparse.ArgumentParser()
    count_parser(parser)
    assert count_main(parser.parse_args(["--model", str(tmp_path), "--target", "lm_head", "--rank", "4"])) == 0
    out = capsys.readouterr().out
    assert "| lora | 204,100 | 0 | 100.00% |" in out
    assert "| qpa | 106,264 | 56 | 52.06% | 1 | 7 qubits, 100 chunks |" in out
    assert count_main(parser.parse_args(["--model", "gpt2", "--target", "lm_head"])) == 2
    assert "model 'gpt2' was not found offline" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fields,error,message",
    [
        ({"target": ["nothing"]}, AdapterError, "target_modules ['nothing'] match no module"),
        ({"rank": 1000}, AdapterError, "rank r=1000 exceeds layer"),
        ({"qpa_chunk_size": 4096}, AdapterError, "chunk_size=4096 does not divide layer"),
        ({"dataset": "sst3"}, DataError, "unknown data set 'sst3'"),
        ({"task": "lm", "model": "gpt2"}, ModelNotFoundError, "model 'gpt2' was not found offline"),
        ({"task": "lm", "max_length": 256}, AdapterError, "above the pretrained base's context of 128 tokens"),
        ({"task": "lm", "corpus": "/nonexistent/corpus.txt"}, DataError, "corpus file not found: /nonexistent"),
        ({"model": "CONFIG_ONLY"}, ModelNotFoundError, "has no weights"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    fields: dict, error: type, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "artifacts"
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(out))
    if fields.get("model") == "CONFIG_ONLY":
        transformers.GPT2Config().save_pretrained(tmp_path / "config-only")
        fields = {"model": str(tmp_path / "config-only"), "target": ["lm_head"]}
    with pytest.raises(error) as err:
        run_peft(PeftParams(**fields))
    assert message in str(err.value)
    assert not out.exists()  # nothing written, no server started


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"methods": ["lora", "lora"]}, r"\['lora'\] given more than once"),
        (
            {"methods": ["dora"]},
            "Input should be 'lora', 'qpa', 'qpa-published', 'qpa-classical', 'qtha' or 'qtha-classical'",
        ),
        ({"adapter_lr": "lora=2"}, r"lora=2 is not a learning rate in \(0, 1\]"),
        ({"adapter_lr": "lora"}, "'lora' is not method=rate"),
        (
            {"circuit_lr": {"dora": 1e-3}},
            "Input should be 'lora', 'qpa', 'qpa-published', 'qpa-classical', 'qtha' or 'qtha-classical'",
        ),
        ({"steps": 1}, "greater than or equal to 2"),
        ({"qpa_activation": "swish"}, "Input should be 'relu', 'gelu', 'tanh' or 'silu'"),
    ],
)
def test_bad_parameters_are_refused_by_the_parameter_model(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PeftParams(**fields)
