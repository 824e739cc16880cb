"""SetFit bodies: a sentence encoder fine-tuned contrastively on a few-shot training split.

SetFit (Tunstall et al. 2022, the ``setfit`` package) first fine-tunes the sentence-transformer
body on pairs of training sentences, cosine similarity 1 for a pair of the same label and 0
otherwise (``CosineSimilarityLoss``), and only then fits a head on the new embeddings. The
PQC-head paper (arXiv 2504.08732) reads such a body. Here the body phase alone runs, through
``setfit.Trainer.train_embeddings``; any head (the PQC head, logistic regression, SVM, MLP) then
reads the fine-tuned folder as its encoder.

    job = BodyJob(encoder=None, texts=train_texts, labels=train_labels, settings=BodySettings())
    folder = fine_tuned_body(job, root)      # <root>/bodies/<key>/, trained once per content

The folder is keyed by content (the encoder's weights, the training texts and labels, the
settings and the setfit version) and appears whole or not at all: training writes to a hidden
temporary folder beside it, which is renamed into place when complete. Only the texts a caller
puts in the job are read; a head's caller passes its training split without the validation
hold-out (:meth:`lab.methods.pqc_head.PQCHeadMethod.body_job`), never validation or test texts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from .artifacts import atomic_write_bytes, download_folder, hash_json, join_url, read_bytes, url_to_fs
from .data import CACHE_DIR_ENV, Dataset
from .params.body import BodyError, BodyOptions, BodySettings
from .teacher import model_fingerprint, resolve_model, torch_threads

BODIES = "bodies"
MARKER = "body.json"  # written last: a folder without it is not a finished body


@dataclass(frozen=True)
class BodyJob:
    """One body fine-tune: the encoder (name or folder; None: the embedded MiniLM), the training
    texts and integer labels it learns from, and the settings."""

    encoder: str | None
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    settings: BodySettings = BodySettings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "labels", tuple(int(y) for y in self.labels))
        if len(self.texts) != len(self.labels):
            raise BodyError(
                f"a SetFit body needs one label per text: got {len(self.texts)} texts, {len(self.labels)} labels"
            )
        if bad := [i for i, t in enumerate(self.texts) if not isinstance(t, str) or not t.strip()]:
            raise BodyError(f"a SetFit body's training texts must be non-empty strings; texts at {bad[:5]} are not")
        if len(set(self.labels)) < 2:
            raise BodyError(
                f"a SetFit body needs training texts of at least 2 labels (negative pairs); got labels "
                f"{sorted(set(self.labels))} in {len(self.texts)} texts"
            )

    def key(self) -> str:
        """Content key: the encoder's weights, the training texts and labels, the settings, setfit."""
        return hash_json(
            {
                "kind": "setfit-body",
                "v": 1,
                "encoder": model_fingerprint(resolve_model(self.encoder)),
                "texts": list(self.texts),
                "labels": list(self.labels),
                "settings": asdict(self.settings),
                "setfit": setfit_version(),
            }
        )


def body_job(options: BodyOptions, encoder: str | None, data: Dataset, keep: Sequence[bool]) -> BodyJob | None:
    """The body fine-tune ``options`` ask for, on ``data``'s training examples whose ``keep`` flag
    is set (the caller leaves out every text a model validates or tunes on); ``None`` for a
    frozen body. Refuses a training set SetFit cannot use, naming it."""
    if options.body == "frozen":
        return None
    setfit_version()
    labels = [int(y) for y, k in zip(data.train_labels, keep, strict=True) if k]
    return BodyJob(encoder, texts_of(data.train_texts, keep), tuple(labels), options.body_settings())


@lru_cache(maxsize=1)
def setfit_version() -> str:
    """The installed setfit's version; refuses, naming the fix, when it is missing."""
    try:
        return metadata.version("setfit")
    except metadata.PackageNotFoundError:
        raise BodyError("body='setfit' needs the setfit package: pip install setfit (see constraints.txt)") from None


def local_cache() -> Path:
    """Where bodies of a remote artifact root are copied to be loaded (the data cache's sibling)."""
    root = os.environ.get(CACHE_DIR_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "qllm-lab") / BODIES


def fine_tuned_body(
    job: BodyJob, root: str, *, log: Callable[[str], None] = lambda _: None, threads: int | None = None
) -> Path:
    """The local folder of ``job``'s fine-tuned body: stored under ``<root>/bodies/<key>/`` (any
    fsspec URL), trained first when no finished one is there. A remote root's body is copied to
    :func:`local_cache` to be loaded."""
    key = job.key()
    url = join_url(root, BODIES, key)
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        final = Path(path)
        if (final / MARKER).is_file():
            log(f"SetFit body {key[:12]}: trained before, reusing {final}")
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        return _train_into(job, final, key, log, threads)
    local = local_cache() / key
    if (local / MARKER).is_file():
        return local
    if read_bytes(join_url(url, MARKER)) is not None:
        log(f"SetFit body {key[:12]}: trained before, copying it from {url}")
        with tempfile.TemporaryDirectory(dir=_mkdir(local.parent), prefix=f".{key[:12]}-") as tmp:
            download_folder(url, Path(tmp) / "body")
            return _commit(Path(tmp) / "body", local)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _train_into(job, Path(tmp) / key, key, log, threads)
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
            atomic_write_bytes(join_url(url, str(file.relative_to(folder))), file.read_bytes())
        atomic_write_bytes(join_url(url, MARKER), (folder / MARKER).read_bytes())  # the commit, last
        local.parent.mkdir(parents=True, exist_ok=True)
        return _commit(folder, local)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _commit(folder: Path, final: Path) -> Path:
    """Rename the finished ``folder`` to ``final`` (atomic on one filesystem); when another run
    committed the same content first, keep its folder."""
    try:
        os.replace(folder, final)
    except OSError:
        if not (final / MARKER).is_file():
            raise
        shutil.rmtree(folder, ignore_errors=True)
    return final


def _train_into(job: BodyJob, final: Path, key: str, log: Callable[[str], None], threads: int | None) -> Path:
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{key[:12]}-") as tmp:
        folder = Path(tmp) / "body"
        meta = train_body(job, folder, log=log, threads=threads)
        (folder / MARKER).write_text(json.dumps({**meta, "key": key}, indent=2))
        return _commit(folder, final)


def train_body(
    job: BodyJob, out: Path, *, log: Callable[[str], None] = lambda _: None, threads: int | None = None
) -> dict[str, Any]:
    """Fine-tune ``job``'s encoder with setfit's body phase and save it to ``out`` as a
    sentence-transformers folder; return what was done (pairs, steps, seconds)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import disable_progress_bars
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    disable_progress_bars()
    s = job.settings
    folder = resolve_model(job.encoder)

    class Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            every = max(1, state.max_steps // 10)
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                log(f"SetFit body: step {state.global_step}/{state.max_steps}")

    t0 = time.perf_counter()
    with torch_threads(threads), tempfile.TemporaryDirectory() as scratch:
        model = SetFitModel.from_pretrained(str(folder), local_files_only=True)
        args = TrainingArguments(
            output_dir=scratch,
            batch_size=s.batch_size,
            num_epochs=s.epochs,
            num_iterations=s.iterations,
            body_learning_rate=s.lr,
            seed=s.seed,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            show_progress_bar=False,
        )
        trainer = Trainer(model=model, args=args, callbacks=[Progress()])
        trainer.st_trainer.remove_callback(ProgressCallback)  # its tqdm bar: `log` reports the steps
        log(
            f"SetFit body: fine-tuning {folder.name} on {len(job.texts)} texts "
            f"({2 * s.iterations * len(job.texts)} pairs, {s.epochs} epoch(s), batch {s.batch_size}, lr {s.lr})"
        )
        trainer.train_embeddings(list(job.texts), list(job.labels), args=args)
        steps = int(trainer.st_trainer.state.global_step)
        model.model_body.save(str(out))
    seconds = time.perf_counter() - t0
    log(f"SetFit body: {steps} steps in {seconds:.0f} s")
    return {
        "encoder": str(job.encoder),
        "encoder_fingerprint": model_fingerprint(folder),
        "texts": len(job.texts),
        "settings": asdict(s),
        "pairs": 2 * s.iterations * len(job.texts),
        "steps": steps,
        "seconds": seconds,
        "setfit": setfit_version(),
    }


def texts_of(texts: Sequence[str], keep: Sequence[bool]) -> tuple[str, ...]:
    """The texts whose ``keep`` flag is set, in order."""
    return tuple(t for t, k in zip(texts, keep, strict=True) if k)
