"""``qllm predict``: classify new text with a quantum model (QD-LLM student or PQC head) saved in
an MLflow run, no retraining."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lab.hardware import load_source
from lab.runtime import Runtime
from lab.teacher import TeacherSpec, teacher_features


def predict(run_id: str, texts: Sequence[str]) -> list[tuple[str, str, dict[str, float]]]:
    """``(text, predicted label, class probabilities)`` for each text; a run that does not exist
    or holds no quantum model is refused (:class:`HardwareError`), naming it."""
    source = load_source(run_id, Runtime())
    names = list(source.label_names)
    features = teacher_features(TeacherSpec(**source.teacher), names, texts)
    with torch.inference_mode():
        probs = torch.softmax(source.model(torch.as_tensor(features, dtype=torch.float32)), -1).numpy()
    return [
        (t, names[int(p.argmax())], {n: round(float(v), 4) for n, v in zip(names, p, strict=True)})
        for t, p in zip(texts, probs, strict=True)
    ]
