"""Teachers: the probe reproduces sentence-transformers and classifies SST-2, tiny local
classifier / causal-LM teachers give the same numbers batched as one by one, and outputs are
cached by content on local disk and on S3."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lab import teacher as T
from lab.data import Dataset, load_dataset
from lab.teacher import (
    ModelNotFoundError,
    TeacherError,
    TeacherSpec,
    cached_teacher_outputs,
    embed_texts,
    make_teacher,
)

SHARED = Path(os.environ.get("QLLM_DATA_DIR", "/work/shared/data"))
needs_data = pytest.mark.skipif(not (SHARED / "sst2" / "dev.tsv").is_file(), reason="QLLM_DATA_DIR has no data")
MINILM = T.resolve_model(T.DEFAULT_MODEL)
TEXTS = [
    "a gripping , funny film",
    "dull",
    "the plot makes no sense at all and the actors look bored",
    "fine",
    "one of the best films of the year , with a cast that never misses a beat",
    "why ?",
    "ok ok",
]
LABELS = np.array([1, 0, 0, 1, 1, 0, 1])


def _tiny(tmp_path: Path, kind: str, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT classifier or GPT-2 LM with MiniLM's tokenizer, saved locally."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(MINILM, local_files_only=True)
    if kind == "hf-classifier":
        model = BertForSequenceClassification(
            BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=64,
                num_labels=2,
            )
        )
    else:
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64)
        )
    folder = tmp_path / f"{kind}-{seed}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _dataset(texts: list[str] = TEXTS, labels: np.ndarray = LABELS) -> Dataset:
    return Dataset(
        name="toy",
        source="test",
        label_names=("negative", "positive"),
        train_texts=texts[:5],
        train_labels=labels[:5],
        test_texts=texts[5:],
        test_labels=labels[5:],
        split={},
    )


# --- probe ------------------------------------------------------------------------------------


def test_probe_embeddings_match_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    texts = TEXTS * 2 + ["x " * 300]  # longer than the 256-token limit: truncated the same way
    expected = SentenceTransformer(str(MINILM), device="cpu").encode(texts, batch_size=4)
    got = embed_texts(texts, batch_size=4)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(embed_texts(texts, batch_size=3), embed_texts(texts, batch_size=3))


@needs_data
def test_probe_classifies_sst2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLLM_DATA_DIR", str(SHARED))
    d = load_dataset("sst2", train_size=400, test_size=200, seed=0)
    probe = make_teacher(TeacherSpec(), d.label_names)
    with pytest.raises(TeacherError, match="fitted"):
        probe.predict(d.test_texts)
    train = probe.fit_predict(d.train_texts, d.train_labels, progress=False)
    test = probe.predict(d.test_texts, progress=False)
    assert train.logits.shape == (400, 2) and test.features.shape == (200, 384)
    np.testing.assert_allclose(np.exp(test.logits).sum(1), 1.0, atol=1e-5)  # log-probabilities
    accuracy = (test.logits.argmax(1) == d.test_labels).mean()
    assert accuracy > 0.7, accuracy


def test_probe_needs_every_class() -> None:
    probe = make_teacher(TeacherSpec(), ("a", "b", "c"))
    with pytest.raises(TeacherError, match=r"missing \['c'\]"):
        probe.fit(TEXTS[:4], np.array([0, 1, 0, 1]))


# --- tiny local models --------------------------------------------------------------------------


def test_hf_classifier_batched_equals_one_by_one(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _tiny(tmp_path, "hf-classifier")
    threads = torch.get_num_threads()
    out = make_teacher(
        TeacherSpec(kind="hf-classifier", model=str(folder), batch_size=3, threads=1), ("neg", "pos")
    ).predict(TEXTS, progress=False)
    assert torch.get_num_threads() == threads  # the cap applies during inference only
    assert out.logits.shape == (7, 2) and out.features.shape == (7, 16)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        for i, text in enumerate(TEXTS):
            ref = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)
            np.testing.assert_allclose(out.logits[i], ref.logits[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(out.features[i], ref.hidden_states[-1][0].mean(0).numpy(), atol=1e-5)
    with pytest.raises(TeacherError, match="has 2 output labels but the data has 3 classes"):
        make_teacher(TeacherSpec(kind="hf-classifier", model=str(folder)), ("a", "b", "c"))


@pytest.mark.parametrize("keep_positions", [True, False])
def test_causal_lm_scores_label_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_positions: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _tiny(tmp_path, "causal-lm")
    spec = TeacherSpec(
        kind="causal-lm",
        model=str(folder),
        batch_size=4,
        prompt="Review: {text}\nSentiment:",
        label_words=("terrible", "great"),
    )
    teacher = make_teacher(spec, ("neg", "pos"))
    assert teacher.keep_positions  # GPT-2 projects only the kept positions
    teacher.keep_positions = keep_positions  # the fallback path must give the same numbers
    out = teacher.predict(TEXTS, progress=False)
    assert out.logits.shape == (7, 2) and out.features.shape == (7, 16)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    words = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("terrible", "great")]
    with torch.inference_mode():
        for i, text in enumerate(TEXTS):
            ref = model(**tokenizer(f"Review: {text}\nSentiment:", return_tensors="pt"), output_hidden_states=True)
            np.testing.assert_allclose(out.logits[i], ref.logits[0, -1, words].numpy(), atol=1e-5)
            np.testing.assert_allclose(out.features[i], ref.hidden_states[-1][0, -1].numpy(), atol=1e-5)


def test_causal_lm_refuses_ambiguous_label_words(tmp_path: Path) -> None:
    folder = str(_tiny(tmp_path, "causal-lm"))
    with pytest.raises(TeacherError, match="share a first token"):
        make_teacher(TeacherSpec(kind="causal-lm", model=folder, label_words=("good", "good")), ("a", "b"))
    with pytest.raises(TeacherError, match="1 label words"):
        make_teacher(TeacherSpec(kind="causal-lm", model=folder, label_words=("good",)), ("a", "b"))


def test_bad_specs_and_unknown_models() -> None:
    with pytest.raises(TeacherError, match=r"kinds are \['probe', 'hf-classifier', 'causal-lm'\]"):
        TeacherSpec(kind="llm")
    with pytest.raises(TeacherError, match="a hf-classifier teacher needs model="):
        TeacherSpec(kind="hf-classifier")
    with pytest.raises(TeacherError, match="placeholder"):
        TeacherSpec(kind="causal-lm", model="gpt2", prompt="no slot")
    with pytest.raises(
        ModelNotFoundError, match="'no-such-org/no-such-model' was not found offline: it must be a local folder"
    ):
        T.resolve_model("no-such-org/no-such-model")


# --- cache ------------------------------------------------------------------------------------


def _count_teachers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    original = T.make_teacher

    def counting(spec: TeacherSpec, label_names):
        made.append(spec.kind)
        return original(spec, label_names)

    monkeypatch.setattr(T, "make_teacher", counting)
    return made


def test_cache_hit_skips_inference_and_keys_on_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _count_teachers(monkeypatch)
    folder = _tiny(tmp_path, "hf-classifier")
    spec = TeacherSpec(kind="hf-classifier", model=str(folder), batch_size=2)
    root = str(tmp_path / "artifacts")
    first = cached_teacher_outputs(_dataset(), spec, root, progress=False)
    again = cached_teacher_outputs(
        _dataset(), TeacherSpec(kind="hf-classifier", model=str(folder), batch_size=5), root, progress=False
    )  # batch size does not change the numbers
    assert made == ["hf-classifier"]
    np.testing.assert_array_equal(first.train.logits, again.train.logits)
    np.testing.assert_array_equal(first.test.features, again.test.features)
    assert first.train.logits.shape == (5, 2) and first.test.logits.shape == (2, 2)
    assert [p.name for p in (tmp_path / "artifacts" / "teacher").iterdir()] == [f"{first.key}.npz"]

    copy = tmp_path / "copy"  # the same weights elsewhere: same key
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert cached_teacher_outputs(_dataset(), TeacherSpec(kind="hf-classifier", model=str(copy)), root).key == first.key
    other_weights = TeacherSpec(kind="hf-classifier", model=str(_tiny(tmp_path, "hf-classifier", seed=1)))
    other_data = _dataset(texts=[t.upper() for t in TEXTS])
    keys = {
        first.key,
        T.teacher_cache_key(_dataset().content_hash, other_weights),
        T.teacher_cache_key(other_data.content_hash, spec),
        T.teacher_cache_key(
            _dataset().content_hash, TeacherSpec(kind="hf-classifier", model=str(folder), max_length=8)
        ),
    }
    assert len(keys) == 4
    assert made == ["hf-classifier"]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A local moto S3 server and the storage options that reach it."""
    moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}, "skip_instance_cache": True}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("lab")
    yield options
    server.stop()


def test_cache_on_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: dict) -> None:
    made = _count_teachers(monkeypatch)
    spec = TeacherSpec(kind="causal-lm", model=str(_tiny(tmp_path, "causal-lm")), label_words=("bad", "good"))
    first = cached_teacher_outputs(_dataset(), spec, "s3://lab/runs", storage_options=s3, progress=False)
    second = cached_teacher_outputs(_dataset(), spec, "s3://lab/runs/", storage_options=s3, progress=False)
    assert made == ["causal-lm"]
    np.testing.assert_array_equal(first.test.logits, second.test.logits)
    import s3fs

    assert s3fs.S3FileSystem(**s3).ls("lab/runs/teacher") == [f"lab/runs/teacher/{first.key}.npz"]


def test_sharded_inference_equals_one_pass(tmp_path) -> None:
    """Shards joined in order give the same soft labels and features as one pass."""
    import numpy as np

    from lab.data import load_dataset
    from lab.teacher import TeacherOutput, TeacherSpec, cached_teacher_outputs, unfitted_outputs

    data = load_dataset("sst2", train_size=120, test_size=40, seed=3)
    spec = TeacherSpec()
    calls = []

    def sharded(texts):
        parts = [unfitted_outputs(spec, data.label_names, texts[i : i + 50]) for i in range(0, len(texts), 50)]
        calls.append(len(parts))
        return TeacherOutput(np.concatenate([p.logits for p in parts]), np.concatenate([p.features for p in parts]))

    one = cached_teacher_outputs(data, spec, str(tmp_path / "a"), progress=False)
    many = cached_teacher_outputs(data, spec, str(tmp_path / "b"), progress=False, infer=sharded)
    assert calls == [3, 1]
    np.testing.assert_allclose(many.train.features, one.train.features, atol=1e-5)
    np.testing.assert_allclose(many.test.logits, one.test.logits, atol=1e-4)
