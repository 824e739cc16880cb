"""MLflow metric names say the split they were measured on (``lab.tracking.metric_name``): one
bare ``accuracy`` for a run's test score and its epochs' training accuracy made MLflow show the
last epoch's training accuracy as the run's score."""

from __future__ import annotations

import pytest

from lab.tracking import metric_name


@pytest.mark.parametrize(
    "key,curve,name",
    [
        ("accuracy", False, "test/accuracy"),  # a result's final scores are the test split's
        ("macro_f1", False, "test/macro_f1"),
        ("agreement", False, "test/agreement"),
        ("accuracy_low", False, "test/accuracy_low"),
        ("accuracy", True, "train/accuracy"),  # an epoch curve is training
        ("loss", True, "train/loss"),
        ("train_loss", True, "train/loss"),
        ("val_accuracy", True, "val/accuracy"),  # early-stopping hold-out
        ("held_out_accuracy", True, "val/accuracy"),  # a tuning trial's reports
        ("perplexity", False, "val/perplexity"),  # causal LM: held-out validation blocks
        ("final_train_loss", False, "train/final_loss"),
        ("train_seconds", False, "train_seconds"),  # no split
        ("params_total", False, "params_total"),
        ("test/seed_accuracy", True, "test/seed_accuracy"),  # already says its split
    ],
)
def test_metric_names_say_their_split(key: str, curve: bool, name: str) -> None:
    assert metric_name(key, curve=curve) == name
