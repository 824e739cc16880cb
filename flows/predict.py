"""``qllm predict``: classify new text with a quantum model (QD-LLM student or PQC head) saved in an MLflow run, no retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from qcore.models import load_model
from tasks import tracking
from tasks.settings import Settings
from tasks.teacher import SentenceEncoder, TeacherSpec, make_teacher, resolve_model
from tasks.teacher import device_for


def teacher_features(spec: TeacherSpec, label_names: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """The features the student was trained on, for new texts (the teacher's own encoder)."""
    if spec.kind == "probe":
        return SentenceEncoder(spec, resolve_model(spec.model), device_for(spec)).encode(texts)
    return make_teacher(spec, label_names).predict(texts, progress=False).features


def predict(run_id: str, texts: Sequence[str]) -> list[tuple[str, str, dict[str, float]]]:
    """``(text, predicted label, class probabilities)`` for each text."""
    folder = Path(tracking.download_model(run_id, Settings()))
    meta_file = folder / "teacher.json"
    if not meta_file.exists():
        raise ValueError(f"MLflow run {run_id} holds no trained student (model/teacher.json is missing)")
    meta = json.loads(meta_file.read_text())
    names = meta["label_names"]
    student = load_model(folder)
    features = teacher_features(TeacherSpec(**meta["teacher"]), names, texts)
    with torch.inference_mode():
        probs = torch.softmax(student(torch.as_tensor(features, dtype=torch.float32)), -1).numpy()
    return [(t, names[int(p.argmax())], {n: round(float(v), 4) for n, v in zip(names, p)})
            for t, p in zip(texts, probs)]
