"""How sure a leaderboard row is: intervals over seeds and test examples, paired tests between
two methods on the same test examples, and the majority-class rate a row must beat.

A method's accuracy varies with its training seed and with which examples happen to be in the
test split; the bootstrap here resamples both (seeds, then examples, the same examples for every
seed), so a row's interval covers both. Two methods scored on the same examples are compared
pairwise: the examples are resampled once for both, which removes the shared difficulty of the
examples from the difference (a paired bootstrap, the usual companion of McNemar's test when
there are several seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class Paired:
    """``a`` minus ``b`` in accuracy, its interval, and the two-sided bootstrap p-value."""

    difference: Interval
    p_value: float


def correct(predictions: Sequence[Sequence[int]], labels: np.ndarray) -> np.ndarray:
    """``(seeds, examples)`` booleans: which test example each seed's model got right."""
    p = np.asarray(predictions)
    if p.ndim != 2 or p.shape[1] != len(labels):
        raise ValueError(f"predictions of shape {p.shape} do not match {len(labels)} test labels")
    return p == np.asarray(labels)[None, :]


def accuracy_interval(predictions: Sequence[Sequence[int]], labels: np.ndarray, seed: int = 0) -> Interval:
    """Mean accuracy over seeds, with a bootstrap interval over seeds and test examples."""
    right = correct(predictions, labels)
    rng = np.random.default_rng(seed)
    seeds, n = right.shape
    rows = rng.integers(0, seeds, (BOOTSTRAP, seeds, 1))
    cols = rng.integers(0, n, (BOOTSTRAP, 1, n))
    draws = right[rows, cols].mean(axis=(1, 2))
    return _interval(float(right.mean()), draws)


def seed_interval(values: Sequence[float]) -> Interval:
    """Mean and Student-t interval over seeds, for a row without per-example predictions."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return Interval(float(v.mean()), float("nan"), float("nan"))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half))


def paired_difference(
    a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], labels: np.ndarray, seed: int = 0
) -> Paired:
    """Accuracy of ``a`` minus ``b`` (each averaged over its seeds) on the same resampled examples."""
    ra, rb = correct(a, labels).mean(axis=0), correct(b, labels).mean(axis=0)  # per-example accuracy
    rng = np.random.default_rng(seed)
    n = len(labels)
    draws = (ra - rb)[rng.integers(0, n, (BOOTSTRAP, n))].mean(axis=1)
    observed = float((ra - rb).mean())
    # two-sided: how often the resampled difference lands on the other side of zero
    p = min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())) if observed else 1.0
    return Paired(_interval(observed, draws), float(p))


def majority_rate(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent test label."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def _interval(mean: float, draws: np.ndarray) -> Interval:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(mean, float(low), float(high))
