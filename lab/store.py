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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from qcore.ablation import CircuitSite, circuit_mean, circuit_replaced
from qcore.models.base import QuantumModel
from qcore.training import model_size_bytes

from .artifacts import atomic_write_bytes, join_url, read_bytes, upload_folder
from .embedded import EmbeddedSplit
from .results import TrainingResult


def cached_result(root: str, key: str) -> TrainingResult | None:
    """The result of a training that finished before (``result.json`` present), else ``None``."""
    raw = read_bytes(join_url(root, "students", key, "result.json"))
    return None if raw is None else TrainingResult.from_json(json.loads(raw), cached=True)


def store_result(
    root: str, key: str, model: QuantumModel, result: TrainingResult, data: EmbeddedSplit
) -> TrainingResult:
    """Save the model to ``<root>/students/<key>/model/`` with ``teacher.json`` beside it (what
    ``qllm predict`` needs to turn new text into the model's features: ``data``'s teacher and
    labels), then commit the training by writing ``result.json``; return the result as JSON
    gives it back, so a fresh result has the same form as a cached one."""
    url = join_url(root, "students", key)
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(Path(tmp) / "model")
        meta = {"teacher": data.teacher, "label_names": list(data.label_names)}
        (folder / "teacher.json").write_text(json.dumps(meta, indent=2))
        result = dataclasses.replace(
            result, model_url=join_url(url, "model"), metrics={**result.metrics, "size_bytes": model_size_bytes(folder)}
        )
        upload_folder(folder, join_url(url, "model"))
    text = json.dumps(result.to_json())
    atomic_write_bytes(join_url(url, "result.json"), text.encode())
    return TrainingResult.from_json(json.loads(text), cached=False)


def model_predictions(model: torch.nn.Module, x: np.ndarray) -> list[int]:
    with torch.inference_mode():
        return model(torch.as_tensor(x, dtype=torch.float32)).argmax(-1).tolist()


def ablated_predictions(
    model: torch.nn.Module, predict: Callable[[], list[int]], inputs: torch.Tensor | None = None
) -> list[int] | None:
    """``predict()`` with every circuit's output replaced by its mean over ``inputs`` (the
    training inputs; ``None`` for adapters, whose circuits read no data): what the model knows
    without its circuit. ``None`` for a model with no circuit."""
    if not any(isinstance(m, CircuitSite) for m in model.modules()):
        return None
    with torch.inference_mode():
        means = circuit_mean(model, inputs)
    with circuit_replaced(model, means):
        return predict()


def feature_ablation(model: torch.nn.Module, train_x: np.ndarray, test_x: np.ndarray) -> list[int] | None:
    """:func:`ablated_predictions` of a model on features: the mean over ``train_x``."""
    inputs = torch.as_tensor(train_x, dtype=torch.float32)
    return ablated_predictions(model, lambda: model_predictions(model, test_x), inputs)
