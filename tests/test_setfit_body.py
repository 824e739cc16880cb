"""SetFit bodies (lab/setfit_body.py): a real contrastive fine-tune that separates the classes,
the content-keyed cache, the head's leak guard (only its training examples reach the body), and
bad input refused before any work."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from flows.compare import CompareParams
from lab import setfit_body
from lab.data import Dataset, hold_out, load_dataset, tuning_mask
from lab.embedded import EmbeddedSplit
from lab.methods.pqc_head import HeadParams, PQCHeadMethod
from lab.params.body import BodyError, BodySettings
from lab.setfit_body import BodyJob, fine_tuned_body
from lab.teacher import embed_texts

pytest.importorskip("setfit")

# Few steps at a high learning rate: enough to move MiniLM visibly in seconds on a CPU.
QUICK = BodySettings(iterations=3, epochs=1, batch_size=16, lr=1e-4, seed=0)


def _sst2_sample(per_label: int, seed: int = 0) -> tuple[list[str], list[int]]:
    data = load_dataset("sst2")
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(data.train_labels == c), per_label, replace=False) for c in (0, 1)])
    return [data.train_texts[i] for i in idx], [int(data.train_labels[i]) for i in idx]


def _separation(x: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine of same-label pairs minus mean cosine of different-label pairs."""
    sim = x @ x.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(sim[same & off].mean() - sim[~same].mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[BodyJob, str, Path, float]:
    texts, labels = _sst2_sample(16)
    job = BodyJob(None, tuple(texts), tuple(labels), QUICK)
    root = str(tmp_path_factory.mktemp("artifacts"))
    t0 = time.perf_counter()
    # One thread, as a Dask task runs it: two beside the suite's other busy worker took 51 s, not 6
    folder = fine_tuned_body(job, root, threads=1)
    return job, root, folder, time.perf_counter() - t0


def test_fine_tune_separates_the_classes_better_than_the_frozen_body(
    trained: tuple[BodyJob, str, Path, float],
) -> None:
    job, _, folder, _ = trained
    y = np.array(job.labels)
    frozen = embed_texts(list(job.texts), threads=1)
    tuned = embed_texts(list(job.texts), str(folder), threads=1)  # read as the teacher reads it
    assert tuned.shape == frozen.shape == (32, 384)
    assert np.allclose(np.linalg.norm(tuned, axis=1), 1, atol=1e-5)
    assert np.abs(tuned - frozen).max() > 0.05  # the weights moved
    # What the contrastive loss pulls apart, measured on its training sentences: the mean cosine
    # of same-label pairs minus that of different-label pairs (measured: 0.033 frozen, 0.10 tuned;
    # 12 steps on 32 sentences are too few for a held-out gain to stand above the noise).
    before, after = _separation(frozen, y), _separation(tuned, y)
    assert after > 2 * before and after - before > 0.04, (before, after)
    meta = (folder / setfit_body.MARKER).read_text()
    assert '"steps": 12' in meta  # 2·3 pairs · 32 texts / 16 per step


def test_second_call_reuses_the_body_without_training(
    trained: tuple[BodyJob, str, Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    job, root, folder, _ = trained

    def no_training(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("retrained a body that was stored")

    monkeypatch.setattr(setfit_body, "train_body", no_training)
    t0 = time.perf_counter()
    assert fine_tuned_body(job, root) == folder
    assert time.perf_counter() - t0 < 5
    assert [p.name for p in Path(root, "bodies").iterdir()] == [job.key()]  # no temporary left behind
    other = BodyJob(None, job.texts, job.labels, BodySettings(iterations=4, lr=1e-4))
    assert other.key() != job.key()
    with pytest.raises(AssertionError, match="retrained"):  # other settings: other content, a new training
        fine_tuned_body(other, root)


def test_a_failed_training_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(job: BodyJob, out: Path, **kwargs: object) -> dict[str, object]:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(setfit_body, "train_body", killed)
    job = BodyJob(None, ("good", "bad"), (1, 0))
    with pytest.raises(KeyboardInterrupt):
        fine_tuned_body(job, str(tmp_path))
    assert list((tmp_path / "bodies").iterdir()) == []


def _dataset(train: list[str], labels: list[int], test: list[str]) -> Dataset:
    return Dataset(
        name="toy",
        source="test",
        label_names=("neg", "pos"),
        train_texts=train,
        train_labels=np.array(labels),
        test_texts=test,
        test_labels=np.array([i % 2 for i in range(len(test))]),
        split={},
    )


def test_the_head_body_reads_only_its_training_examples() -> None:
    method = PQCHeadMethod()
    params = HeadParams(body="setfit", val_fraction=0.25, split_seed=3)
    train = [f"train text {i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    data = _dataset(train, labels, [f"test text {i}" for i in range(10)])
    job = method.body_job(params, data)
    assert job is not None
    # Exactly the examples the heads train on after the split's validation hold-out.
    index = np.arange(40, dtype=np.float32)[:, None]
    embedded = EmbeddedSplit(
        index, data.train_labels, index, index[:10], data.test_labels, index[:10], ("n", "p"), "k", {}
    )
    split = method.split(params, embedded)
    assert split.val_x is not None
    assert job.texts == tuple(train[int(i)] for i in split.train_x[:, 0])
    assert job.labels == tuple(split.train_y.tolist())
    val_texts = {train[int(i)] for i in split.val_x[:, 0]}
    assert len(job.texts) == 30 and not val_texts & set(job.texts)
    assert not set(data.test_texts) & set(job.texts)
    # The hashed content ignores the test and validation texts: changing them keeps the key.
    other_test = _dataset(train, labels, [f"another test {i}" for i in range(10)])
    val_changed = [f"changed {t}" if t in val_texts else t for t in train]
    same = [method.body_job(params, d) for d in (other_test, _dataset(val_changed, labels, data.test_texts))]
    assert all(j is not None and j.key() == job.key() for j in same)
    train_changed = ["a new training text" if t == job.texts[0] else t for t in train]
    changed = method.body_job(params, _dataset(train_changed, labels, data.test_texts))
    assert changed is not None and changed.key() != job.key()
    assert method.body_job(HeadParams(), data) is None  # the frozen body: no fine-tune


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"iterations": 0}, "iterations=0 is invalid: allowed integers 1..100"),
        ({"epochs": 21}, "epochs=21 is invalid: allowed integers 1..20"),
        ({"batch_size": 1}, "batch_size=1 is invalid"),
        ({"lr": 0.0}, "lr=0.0 is invalid: allowed 0 < lr <= 0.01"),
        ({"seed": -1}, "seed=-1 is invalid"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(kw: dict[str, object], message: str) -> None:
    with pytest.raises(BodyError, match=message.replace(".", r"\.").replace("+", r"\+")):
        BodySettings(**kw)  # type: ignore[arg-type]


def test_bad_training_sets_and_parameters_are_refused() -> None:
    with pytest.raises(BodyError, match="at least 2 labels"):
        BodyJob(None, ("a", "b"), (1, 1))
    with pytest.raises(BodyError, match="2 texts, 1 labels"):
        BodyJob(None, ("a", "b"), (1,))
    with pytest.raises(BodyError, match="non-empty strings"):
        BodyJob(None, ("a", " "), (0, 1))
    with pytest.raises(ValidationError, match="'frozen' or 'setfit'"):
        HeadParams(body="tuned")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="body_lr"):
        HeadParams(body_lr=0.5)
    with pytest.raises(ValidationError, match="body_iterations"):
        HeadParams(body_iterations=101)


def test_a_sentence_transformers_6_folder_takes_the_tokenizer_limit(tmp_path: Path) -> None:
    """sentence-transformers 6 (which saves the SetFit body) writes no max_seq_length into
    sentence_bert_config.json; the encoder's limit is then the tokenizer's."""
    from types import SimpleNamespace

    from lab.teacher import TeacherSpec, _max_length

    (tmp_path / "sentence_bert_config.json").write_text('{"transformer_task": "feature-extraction"}')
    tokenizer = SimpleNamespace(model_max_length=256)
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    assert _max_length(TeacherSpec(), tokenizer, model, tmp_path) == 256
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    assert _max_length(TeacherSpec(), tokenizer, model, tmp_path) == 128


def test_the_compare_body_reads_no_text_a_trial_or_the_head_validates_on() -> None:
    """compare --body setfit: the texts no trial scores on and the PQC head does not stop early on."""
    train = [f"train text {i}" for i in range(60)]
    labels = np.array([i % 2 for i in range(60)])
    data = _dataset(train, labels.tolist(), [f"test text {i}" for i in range(10)])
    params = CompareParams(body="setfit", trials=2, tune_fraction=0.2, val_fraction=0.25, train_size=60)
    job = params.body_job(data)
    assert job is not None
    held = tuning_mask(labels, 0.2, params.sampler_seed) | hold_out(labels, 0.25, params.split_seed)
    assert set(job.texts) == {t for t, h in zip(train, held, strict=True) if not h}
    untuned_without_head = CompareParams(body="setfit", trials=0, methods=["qdllm", "logreg"], train_size=60)
    assert untuned_without_head.body_job(data) is not None and len(untuned_without_head.body_job(data).texts) == 60
    assert CompareParams(trials=0).body_job(data) is None
