"""``qllm predict``: classify new text with a trained model, no retraining: a quantum model (QD-LLM
student or PQC head) saved in an MLflow run, or any registered model (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``), fine-tunes included."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from lab import registry, tracking
from lab.hardware import load_source
from lab.runtime import Runtime
from lab.teacher import TeacherSpec, teacher_features


def predict(source: str, texts: Sequence[str]) -> list[tuple[str, str, dict[str, float]]]:
    """``(text, predicted label, class probabilities)`` for each text. ``source`` is an MLflow
    run id (a quantum model) or a ``models:/`` reference (any registered text classifier); one
    that does not exist or holds no model is refused (:class:`HardwareError`,
    :class:`~lab.registry.RegistryError`), naming it."""
    runtime = Runtime()
    if registry.is_model_uri(source):
        tracking.connect(runtime)
        frame = registry.load(source).predict(list(texts))
        return [(t, row["label"], probabilities(row)) for t, (_, row) in zip(texts, frame.iterrows(), strict=True)]
    model = load_source(source, runtime)
    names = list(model.label_names)
    features = teacher_features(TeacherSpec(**model.teacher), names, texts)
    with torch.inference_mode():
        probs = torch.softmax(model.model(torch.as_tensor(features, dtype=torch.float32)), -1).numpy()
    return [
        (t, names[int(p.argmax())], {n: round(float(v), 4) for n, v in zip(names, p, strict=True)})
        for t, p in zip(texts, probs, strict=True)
    ]


def probabilities(row: pd.Series) -> dict[str, float]:
    """A prediction row's ``probability_<label>`` columns as ``{label: probability}``."""
    prefix = "probability_"
    return {k.removeprefix(prefix): round(float(v), 4) for k, v in row.items() if str(k).startswith(prefix)}
