"""The leaderboard's statistics on predictions whose answers are known: intervals cover the truth
at about their level, the paired test tells a real difference from none, a row at the majority
class says so, and the circuit contribution is the accuracy lost at the circuit's mean."""

from __future__ import annotations

import numpy as np
import pytest

from lab import statistics as stats
from lab.leaderboard import Group, tuned_markdown, tuned_rows
from lab.results import TrainingResult


def noisy_predictions(labels: np.ndarray, accuracy: float, seeds: int, rng: np.random.Generator) -> list[list[int]]:
    return [np.where(rng.random(len(labels)) < accuracy, labels, 1 - labels).tolist() for _ in range(seeds)]


def test_the_interval_covers_the_true_accuracy_at_about_its_level() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(60):
        labels = rng.integers(0, 2, 300)
        interval = stats.accuracy_interval(noisy_predictions(labels, 0.8, 3, rng), labels, seed=trial)
        hits += interval.contains(0.8)
        assert interval.low <= interval.mean <= interval.high
    assert 0.85 <= hits / 60 <= 1.0


def test_the_paired_test_tells_a_real_difference_from_none() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    better, worse = noisy_predictions(labels, 0.85, 3, rng), noisy_predictions(labels, 0.70, 3, rng)
    real = stats.paired_difference(better, worse, labels)
    assert real.p_value < 0.01 and real.difference.low > 0.05
    same = stats.paired_difference(better, better, labels)
    assert same.p_value == 1.0 and same.difference.mean == 0.0
    with pytest.raises(ValueError, match="do not match 500 test labels"):
        stats.paired_difference(better, [[0, 1]], labels)


def result(method: str, seed: int, predictions: list[int], labels: np.ndarray, params: int, **extra) -> TrainingResult:
    accuracy = float(np.mean(np.array(predictions) == labels))
    return TrainingResult(
        method, f"{method}-{seed}", "x", seed, {"accuracy": accuracy, "train_seconds": 1.0}, {"total": params},
        test_predictions=predictions, **extra,
    )  # fmt: skip


def test_rows_flag_the_majority_class_and_measure_the_circuit_contribution() -> None:
    rng = np.random.default_rng(2)
    labels = (rng.random(400) < 0.7).astype(int)  # 70 % ones
    constant = [1] * 400
    good = noisy_predictions(labels, 0.9, 3, rng)
    groups = [
        Group("stuck", [result("stuck", s, constant, labels, 100) for s in range(3)]),
        Group(
            "quantum",
            [result("quantum", s, good[s], labels, 100, ablated_predictions=constant) for s in range(3)],
        ),
        Group(
            "logreg", [result("logreg", s, noisy_predictions(labels, 0.8, 1, rng)[0], labels, 150) for s in range(3)]
        ),
    ]
    rows = {r["method"]: r for r in tuned_rows(groups, {}, labels, classical=["logreg"])}
    assert rows["stuck"]["vs_majority"] == "indistinguishable" and rows["quantum"]["vs_majority"] == "above"
    assert rows["quantum"]["contribution"] == pytest.approx(rows["quantum"]["accuracy"] - 0.7, abs=0.03)
    assert rows["quantum"]["vs"] == "logreg" and rows["quantum"]["p_value"] < 0.01
    assert "vs" not in rows["logreg"] and "contribution" not in rows["stuck"]
    md = tuned_markdown(list(rows.values()))
    assert "(majority class)" in md and "Majority-class rate of the test split: 0.7" in md
