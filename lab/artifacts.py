"""Content hashing and all-or-nothing writes to any fsspec URL.

Caches in this project are keyed by content and must never hold a half-written file: a crash
mid-write would otherwise poison every later run that trusts the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from .runtime import Runtime


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Stream the file so large model weights are not read into memory at once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_bytes(text.encode("utf-8"))


def join_url(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def url_to_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``url``; ``s3://`` gets ``QLLM_S3_ENDPOINT_URL`` unless the
    caller's options say otherwise (credentials stay with botocore's usual sources)."""
    return fsspec.core.url_to_fs(url, **{**Runtime().storage_options(url), **dict(storage_options or {})})


def atomic_write_bytes(
    url: str | os.PathLike[str], data: bytes, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write `data` so readers see either the old state or the whole new file.

    Local files go to a temporary name in the same folder and are renamed (atomic on POSIX).
    Object stores (s3://, gs://, ...) are written with a single put of the final key, which
    is atomic there; a rename would be a non-atomic copy.
    """
    fs, path = url_to_fs(str(url), storage_options)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        fs.pipe_file(path, data)


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    fs, path = url_to_fs(url, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def cached_npz(
    url: str,
    compute: Callable[[], Mapping[str, np.ndarray]],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Return the arrays stored at `url`, computing and storing them first if absent.

    The caller builds `url` from a content key, so a hit is always valid.
    """
    cached = read_bytes(url, storage_options)
    if cached is not None:
        with np.load(io.BytesIO(cached), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in compute().items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(url, buf.getvalue(), storage_options)
    return arrays


def download_folder(url: str, dest: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Path:
    """Copy the folder at ``url`` (any fsspec URL) to the local path ``dest``; return ``dest``."""
    fs, path = url_to_fs(url, storage_options)
    fs.get(path.rstrip("/") + "/", str(dest).rstrip("/") + "/", recursive=True)
    return Path(dest)


def upload_folder(folder: str | os.PathLike[str], url: str) -> str:
    """Copy the local ``folder`` to ``url`` (any fsspec URL), file by file, each atomically."""
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        atomic_write_bytes(join_url(url, str(path.relative_to(folder))), path.read_bytes())
    return url
