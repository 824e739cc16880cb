"""Finished trainings, stored by content.

A training is stored under ``<artifact root>/students/<key>/`` where ``key`` hashes everything
that determines it (data, configuration, seed): the model folder first, ``result.json`` last, so
a half-written folder is never read, and a re-run after a crash skips every training that had
finished.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qcore.models.base import QuantumModel
from qcore.training import model_size_bytes

from .artifacts import atomic_write_bytes, join_url, read_bytes, upload_folder
from .results import TrainingResult


def cached_result(root: str, key: str) -> TrainingResult | None:
    """The result of a training that finished before (``result.json`` present), else ``None``."""
    raw = read_bytes(join_url(root, "students", key, "result.json"))
    return None if raw is None else TrainingResult.from_json(json.loads(raw), cached=True)


def store_result(
    root: str, key: str, model: QuantumModel, result: TrainingResult, extra_files: dict[str, Any] | None = None
) -> TrainingResult:
    """Save the model (plus ``extra_files``, name → JSON) to ``<root>/students/<key>/model/``,
    then commit the training by writing ``result.json`` beside it; return the result as JSON
    gives it back, so a fresh result has the same form as a cached one."""
    url = join_url(root, "students", key)
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(Path(tmp) / "model")
        for name, content in (extra_files or {}).items():
            (folder / name).write_text(json.dumps(content, indent=2))
        result = dataclasses.replace(
            result, model_url=join_url(url, "model"), metrics={**result.metrics, "size_bytes": model_size_bytes(folder)}
        )
        upload_folder(folder, join_url(url, "model"))
    stored = json.loads(json.dumps(result.to_json()))
    atomic_write_bytes(join_url(url, "result.json"), json.dumps(stored).encode())
    return TrainingResult.from_json(stored, cached=False)


def model_predictions(model: torch.nn.Module, x: np.ndarray) -> list[int]:
    with torch.inference_mode():
        return model(torch.as_tensor(x, dtype=torch.float32)).argmax(-1).tolist()
