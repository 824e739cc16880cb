"""Data layer: named sets match their SOURCE.md, files of any format load, splits are
reproducible, bad input is refused with a clear message, and downloads are verified."""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lab import data
from lab.data import ChecksumError, DataError, DataUnavailableError, load_dataset, stratified_indices

SHARED = Path(os.environ.get("QLLM_DATA_DIR", "/work/shared/data"))
needs_data = pytest.mark.skipif(not (SHARED / "sst2" / "dev.tsv").is_file(), reason="QLLM_DATA_DIR has no data")


@pytest.fixture
def shared_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("QLLM_DATA_DIR", str(SHARED))
    monkeypatch.setenv("QLLM_CACHE_DIR", str(tmp_path / "cache"))
    return SHARED


# --- named sets ---------------------------------------------------------------------------------


@needs_data
def test_sst2_uses_dev_as_test_and_matches_source_counts(shared_data: Path) -> None:
    d = load_dataset("sst2")
    assert (len(d.train_texts), len(d.test_texts)) == (67_349, 872)
    assert np.bincount(d.train_labels).tolist() == [29_780, 37_569]
    assert np.bincount(d.test_labels).tolist() == [428, 444]
    assert d.label_names == ("negative", "positive")
    assert d.train_texts[0] == "hide new secretions from the parental units"  # trailing space stripped
    assert not any(t != t.rstrip() for t in d.train_texts + d.test_texts)


@needs_data
def test_a_named_set_is_read_once_and_each_caller_gets_its_own_copy(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset("sst2")

    def read_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("a named set's files read twice in one process")

    monkeypatch.setattr(data, "_read_file", read_again)
    second = load_dataset("sst2", train_size=100)  # the same files: no second read, whatever the split
    second_full = load_dataset("sst2")
    second_full.train_texts.append("changed by a caller")  # (the label arrays are read-only)
    third = load_dataset("sst2")
    assert len(second.train_texts) == 100 and third.train_texts == first.train_texts


@needs_data
def test_trec_coarse_and_fine(shared_data: Path) -> None:
    coarse, fine = load_dataset("trec"), load_dataset("trec-fine")
    assert coarse.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    assert np.bincount(coarse.train_labels).tolist() == [86, 1162, 1250, 1223, 835, 896]
    assert np.bincount(coarse.test_labels).tolist() == [9, 138, 94, 65, 81, 113]
    assert len(fine.label_names) == 50 and len(np.unique(fine.train_labels)) == 50
    assert len(np.unique(fine.test_labels)) == 42
    assert fine.train_texts == coarse.train_texts
    # each fine label's coarse prefix is the coarse label of the same row
    prefixes = [fine.label_names[i].split(":")[0] for i in fine.train_labels]
    assert prefixes == [coarse.label_names[i] for i in coarse.train_labels]
    assert "sister\u00f0city" in coarse.train_texts[65]  # the one re-encoded Latin-1 byte, line 66


@needs_data
def test_subj_and_ag_news_get_stratified_seeded_splits(shared_data: Path) -> None:
    subj = load_dataset("subj")
    assert (len(subj.train_texts), len(subj.test_texts)) == (8000, 2000)
    assert np.bincount(subj.test_labels).tolist() == [1000, 1000]
    assert subj.label_names == ("objective", "subjective")
    ag = load_dataset("ag_news", test_fraction=0.25)
    assert ag.label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert np.bincount(ag.test_labels).tolist() == [475] * 4
    assert len(set(ag.train_texts) | set(ag.test_texts)) == 7600  # disjoint, nothing lost
    # row 2 of test.csv: class 4, title + " " + description
    assert (
        "The Race is On: Second Private Team Sets Launch Date for Human Spaceflight (SPACE.com) SPACE.com - "
        "TORONTO" in next(t for t in ag.train_texts + ag.test_texts if t.startswith("The Race is On"))
    )


@needs_data
def test_same_seed_same_split_other_seed_other_split(shared_data: Path) -> None:
    a = load_dataset("subj", train_size=300, test_size=100, seed=3)
    b = load_dataset("subj", train_size=300, test_size=100, seed=3)
    c = load_dataset("subj", train_size=300, test_size=100, seed=4)
    assert a.train_texts == b.train_texts and a.test_texts == b.test_texts
    assert np.array_equal(a.train_labels, b.train_labels) and a.content_hash == b.content_hash
    assert a.train_texts != c.train_texts and a.content_hash != c.content_hash
    assert np.bincount(a.train_labels).tolist() == [150, 150]
    assert not set(a.train_texts) & set(a.test_texts)
    with pytest.raises(ValueError):
        a.train_labels[0] = 1  # labels are read-only: the hash must keep describing the data


@needs_data
def test_hash_ignores_seed_when_nothing_is_random(shared_data: Path) -> None:
    assert load_dataset("trec", seed=0).content_hash == load_dataset("trec", seed=5).content_hash
    assert load_dataset("trec").content_hash != load_dataset("trec-fine").content_hash


def test_stratified_indices_keep_proportions() -> None:
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    idx = stratified_indices(labels, 15, np.random.default_rng(0))
    assert len(set(idx.tolist())) == 15 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [11, 3, 1]  # 10.5 -> 11 by largest remainder, 3, 1.5 -> 1
    assert np.array_equal(idx, stratified_indices(labels, 15, np.random.default_rng(0)))


# --- files -------------------------------------------------------------------------------------


def test_tsv_csv_jsonl_and_fsspec_urls(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("id\tsentence\tlabel\n1\tgood film \t1\n2\tbad film\t0\n3\tfine\t1\n4\tmeh\t0\n")
    d = load_dataset(str(tmp_path / "a.tsv"), test_fraction=0.5)
    assert d.label_names == ("0", "1") and sorted(d.train_texts + d.test_texts) == [
        "bad film",
        "fine",
        "good film",
        "meh",
    ]

    rows = [{"text": f"question {i}", "label": ["why", "who", "how"][i % 3]} for i in range(30)]
    with gzip.open(tmp_path / "q.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    q = load_dataset(str(tmp_path / "q.jsonl.gz"), test_size=6)
    assert q.label_names == ("how", "who", "why")
    assert np.bincount(q.test_labels).tolist() == [2, 2, 2]
    for text, label in zip(q.train_texts, q.train_labels, strict=True):
        assert rows[int(text.split()[1])]["label"] == q.label_names[label]

    import fsspec

    with fsspec.open("memory://bucket/news.csv", "w") as f:
        f.write('title,body,topic\n"A, b","x",sport\nc,"y ""z""",world\nd,e,sport\nf,g,world\n')
    m = load_dataset(
        "memory://bucket/news.csv",
        text_column="body",
        label_column="topic",
        label_names=["world", "sport"],
        test_fraction=0.5,
    )
    assert m.label_names == ("world", "sport")
    assert dict(zip(m.train_texts + m.test_texts, np.r_[m.train_labels, m.test_labels].tolist(), strict=True)) == {
        "x": 1,
        'y "z"': 0,
        "e": 1,
        "g": 0,
    }


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("text\tlabel\n", {}, "no data rows"),
        ("txt\tlabel\nhello\t1\n", {}, "columns are ['txt', 'label']"),
        (
            "text\tlabel\nhello\t1\n",
            {"label_column": "y"},
            "label column 'y' does not exist; columns are ['text', 'label']",
        ),
        ("text\tlabel\nhello\t1\nbye\n", {}, "line 3 has 1 fields"),
        ("text\tlabel\nhello\t1\n\t0\n", {}, "line 3: text '' is empty"),
        (
            "text\tlabel\nhello\tpos\nbye\tmaybe\n",
            {"label_names": ["neg", "pos"]},
            "line 3: label 'maybe' is outside the declared label set ['neg', 'pos']",
        ),
        ("text\tlabel\nhello\t2\n", {"label_names": ["neg", "pos"]}, "label '2' is outside"),
        ("text\tlabel\nhello\t0.37\nbye\t0.74\n", {}, "line 2: label '0.37' is a decimal number"),
        ("text\tlabel\nhello\t1\nbye\t1e-3\n", {}, "line 3: label '1e-3' is a decimal number"),
        ("text\tlabel\nhello\t1\nbye\t \n", {}, "line 3: the label is empty"),
        ("text\tlabel\nhello\tpos\nbye\t\n", {"label_names": ["neg", "pos"]}, "line 3: the label is empty"),
        (
            "text\tlabel\nhello\tpos\nbye\tpos\n",
            {},
            "the file holds 1 class",
        ),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(tmp_path: Path, content: str, kwargs: dict, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_dataset(str(path), **kwargs)


def test_null_or_fractional_json_labels_are_refused(tmp_path: Path) -> None:
    (tmp_path / "n.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": null}\n')
    with pytest.raises(DataError, match="line 2: the label is empty"):
        load_dataset(str(tmp_path / "n.jsonl"))
    (tmp_path / "f.jsonl").write_text('{"text": "a", "label": 0.25}\n{"text": "b", "label": 1}\n')
    with pytest.raises(DataError, match=r"line 1: label 0\.25 is a decimal number"):
        load_dataset(str(tmp_path / "f.jsonl"))


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nfine,0\ncaf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv: line 3 is not UTF-8 \(byte 0xe9 at column 4\)"):
        load_dataset(str(path))


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 1\n')
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        load_dataset(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b"}\n')
    with pytest.raises(DataError, match="line 2 has no 'label' field"):
        load_dataset(str(tmp_path / "c.jsonl"))


def test_bad_names_paths_and_parameters(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"unknown data set 'sst-2': named sets are \['ag_news', 'sst2', 'subj', 'trec', 'trec-fine'\]"
    ):
        load_dataset("sst-2")
    with pytest.raises(DataError, match=r"data file not found: .*missing\.csv"):
        load_dataset(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match=r"must end in one of \.tsv, \.csv, \.jsonl"):
        load_dataset(str(tmp_path / "data.txt"))
    with pytest.raises(DataError, match="train_size=0 is invalid"):
        load_dataset("sst2", train_size=0)
    with pytest.raises(DataError, match=re.escape("test_fraction=1.5 is invalid")):
        load_dataset("subj", test_fraction=1.5)
    with pytest.raises(DataError, match=r"\['text_column'\] apply only to files"):
        load_dataset("sst2", text_column="text")


@needs_data
def test_size_larger_than_the_data_is_refused(shared_data: Path) -> None:
    with pytest.raises(DataError, match="test_size=501 exceeds the 500 test rows available in trec"):
        load_dataset("trec", test_size=501)


@needs_data
def test_tampered_local_copy_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "trec").mkdir()
    for name in ("train_5500.label", "TREC_10.label"):
        (tmp_path / "trec" / name).write_bytes((SHARED / "trec" / name).read_bytes())
    with open(tmp_path / "trec" / "TREC_10.label", "a") as f:
        f.write("NUM:count How many ?\n")
    monkeypatch.setenv("QLLM_DATA_DIR", str(tmp_path))
    with pytest.raises(ChecksumError, match=r"TREC_10\.label has sha256 .* expected the pinned 033f22c0"):
        load_dataset("trec")


# --- downloads ------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server: (base URL, folder it serves, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    httpd.shutdown()
    httpd.server_close()


def _serve_from(monkeypatch: pytest.MonkeyPatch, folder: str, base: str) -> None:
    table = {name: dataclasses.replace(spec, url=f"{base}/{name}") for name, spec in data.FILES[folder].items()}
    monkeypatch.setitem(data.FILES, folder, table)


@needs_data
def test_download_verifies_reencodes_and_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server) -> None:
    base, www, requests = server
    # the upstream bytes: subj.subjective is cp1252 upstream, UTF-8 here (see subj/SOURCE.md)
    (www / "subj.subjective").write_bytes((SHARED / "subj/subj.subjective").read_text("utf-8").encode("cp1252"))
    (www / "subj.objective").write_bytes((SHARED / "subj/subj.objective").read_bytes())
    _serve_from(monkeypatch, "subj", base)
    monkeypatch.delenv("QLLM_DATA_DIR", raising=False)
    monkeypatch.setenv("QLLM_CACHE_DIR", str(tmp_path / "cache"))

    d = load_dataset("subj")
    cached = tmp_path / "cache" / "data" / "subj"
    assert sorted(p.name for p in cached.iterdir()) == ["subj.objective", "subj.subjective"]  # no temp files left
    assert (cached / "subj.subjective").read_bytes() == (SHARED / "subj/subj.subjective").read_bytes()
    monkeypatch.setenv("QLLM_DATA_DIR", str(SHARED))
    assert load_dataset("subj").content_hash == d.content_hash
    monkeypatch.delenv("QLLM_DATA_DIR")
    load_dataset("subj")
    assert len(requests) == 2  # the second load came from the cache


def test_corrupted_download_is_refused_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server
) -> None:
    base, www, requests = server
    (www / "dev.tsv").write_text("sentence\tlabel\nthis is not the real file \t1\n")
    _serve_from(monkeypatch, "sst2", base)
    monkeypatch.delenv("QLLM_DATA_DIR", raising=False)
    monkeypatch.setenv("QLLM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ChecksumError, match=r"dev.tsv has sha256 [0-9a-f]{64}, expected the pinned 54a9c12c.*refused"):
        data.fetch("sst2", "dev.tsv")
    assert requests == ["/dev.tsv"]
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_offline_without_a_copy_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: the download fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _serve_from(monkeypatch, "trec", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("QLLM_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("QLLM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(
        DataUnavailableError, match=r"QLLM_DATA_DIR=.*empty' has no trec/train_5500.label.*Set QLLM_DATA_DIR"
    ):
        load_dataset("trec")
    monkeypatch.delenv("QLLM_DATA_DIR")
    with pytest.raises(DataUnavailableError, match="QLLM_DATA_DIR is not set"):
        load_dataset("trec")
