"""``qllm predict``: classify new text with a trained model, no retraining: a quantum model (QD-LLM
student or PQC head) saved in an MLflow run, or any registered model (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``), fine-tunes included."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lab import registry, tracking
from lab.runtime import Runtime


def predict(source: str, texts: Sequence[str]) -> list[tuple[str, str, dict[str, float]]]:
    """``(text, predicted label, class probabilities)`` for each text; ``source`` is a run id
    or a ``models:/`` reference (an unknown one is a :class:`~lab.registry.RegistryError`)."""
    runtime = Runtime()
    if registry.is_model_uri(source):
        tracking.connect(runtime)
        frame = registry.load(source).predict(list(texts))
    else:
        with tracking.downloaded_model(source, runtime) as folder:
            if not (folder / "teacher.json").exists():
                raise ValueError(f"MLflow run {source} holds no trained student (model/teacher.json is missing)")
            classifier = registry.QuantumText(folder)
        frame = registry.predictions(classifier, texts)
    return [(t, row["label"], probabilities(row)) for t, (_, row) in zip(texts, frame.iterrows(), strict=True)]


def probabilities(row: pd.Series) -> dict[str, float]:
    """A prediction row's ``probability_<label>`` columns as ``{label: probability}``."""
    prefix = "probability_"
    return {k.removeprefix(prefix): round(float(v), 4) for k, v in row.items() if str(k).startswith(prefix)}
