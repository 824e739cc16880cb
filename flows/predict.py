"""``qllm predict``: classify new text with a quantum model (QD-LLM student or PQC head) saved in
an MLflow run, no retraining."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from lab import tracking
from lab.runtime import Runtime
from lab.teacher import TeacherSpec, teacher_features
from qcore.models import load_model


def predict(run_id: str, texts: Sequence[str]) -> list[tuple[str, str, dict[str, float]]]:
    """``(text, predicted label, class probabilities)`` for each text."""
    with tracking.downloaded_model(run_id, Runtime()) as folder:
        meta_file = folder / "teacher.json"
        if not meta_file.exists():
            raise ValueError(f"MLflow run {run_id} holds no trained student (model/teacher.json is missing)")
        meta = json.loads(meta_file.read_text())
        student = load_model(folder)
    names = meta["label_names"]
    features = teacher_features(TeacherSpec(**meta["teacher"]), names, texts)
    with torch.inference_mode():
        probs = torch.softmax(student(torch.as_tensor(features, dtype=torch.float32)), -1).numpy()
    return [
        (t, names[int(p.argmax())], {n: round(float(v), 4) for n, v in zip(names, p, strict=True)})
        for t, p in zip(texts, probs, strict=True)
    ]
