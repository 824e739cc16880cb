"""Plain-text corpora for causal-LM fine-tuning: the named ``tiny_shakespeare`` or any text file.

The named corpus is found like the labelled sets of :mod:`lab.data`: in ``$QLLM_DATA_DIR``,
else the download cache, else downloaded from its canonical source and checked against a pinned
sha256. There is no official split; as nanoGPT and char-rnn do, the first 90% of the characters
train and the last 10% validate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import fsspec

from lab.data import FILES, DataError, RemoteFile, fetch

# Registered beside the labelled sets' files, so `fetch` finds, downloads and checks it the same way.
FILES["tiny_shakespeare"] = {
    "input.txt": RemoteFile(
        "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
        "/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    )
}
NAMED_CORPORA = {"tiny_shakespeare": "Tiny Shakespeare (char-rnn input.txt, 1,115,394 characters)"}


@dataclass(frozen=True)
class Corpus:
    """A text split into training and validation parts; ``content_hash`` keys caches."""

    name: str
    source: str
    train_text: str
    val_text: str
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256(self.train_text.encode())
        h.update(b"\0" + self.val_text.encode())
        object.__setattr__(self, "content_hash", h.hexdigest())

    def tuning_view(self, fraction: float) -> Corpus:
        """What hyper-parameter tuning reads: the last ``fraction`` of the training text in the
        place of the validation text, which tuning never sees. One contiguous cut, not scattered
        blocks, so no held-out block is the continuation of a training one."""
        cut = int(len(self.train_text) * (1 - fraction))
        if cut == 0 or cut == len(self.train_text):
            raise DataError(
                f"tune_fraction {fraction:g} of the {len(self.train_text)} training characters of "
                f"{self.name!r} leaves nothing to train or to hold out"
            )
        return Corpus(f"{self.name}[tuning {fraction:g}]", self.source, self.train_text[:cut], self.train_text[cut:])


def load_corpus(name_or_path: str, val_fraction: float = 0.1) -> Corpus:
    """The named corpus or a UTF-8 text file (local path or fsspec URL), split by characters."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction!r} is invalid: it must lie strictly between 0 and 1")
    if name_or_path in NAMED_CORPORA:
        text = fetch(name_or_path, "input.txt").read_text(encoding="utf-8")
        source = f"{name_or_path}: {NAMED_CORPORA[name_or_path]}"
    elif "/" in name_or_path or "." in name_or_path or "://" in name_or_path:
        fs, path = fsspec.core.url_to_fs(name_or_path)
        if not fs.isfile(path):
            raise DataError(f"corpus file not found: {name_or_path}")
        try:
            with fsspec.open(name_or_path, "rt", encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"corpus {name_or_path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        source = name_or_path
    else:
        raise DataError(
            f"unknown corpus {name_or_path!r}: named corpora are {sorted(NAMED_CORPORA)}; "
            "otherwise give the path or fsspec URL of a UTF-8 text file"
        )
    cut = int(len(text) * (1 - val_fraction))
    if not text.strip() or cut == 0 or cut == len(text):
        raise DataError(f"corpus {name_or_path!r} has {len(text)} characters: too few to split")
    return Corpus(name_or_path, source, text[:cut], text[cut:])
