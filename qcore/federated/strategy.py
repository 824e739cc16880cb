"""Server strategies, in the manner of Flower's: what the clients are told each round, and how
their updates become the next global model.

    config = strategy.configure_round(server_round, weights)     # sent to every client
    weights = strategy.aggregate(server_round, weights, updates)  # the new global weights

Weights are named numpy arrays (a model's trainable parameters by name), so any torch model
can be federated. FedAvg (McMahan et al., arXiv 1602.05629) averages updates weighted by the
clients' example counts; FedProx (Li et al., arXiv 1812.06127) aggregates the same way but asks
each client to add ``mu/2 · ||w − w_global||²`` to its loss; FedAdam (Reddi et al., arXiv
2003.00295, Algorithm 2) treats the averaged update as a pseudo-gradient for a server-side Adam.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Weights = dict[str, np.ndarray]


class Update(Protocol):
    """What aggregation needs from a client's result (read-only, so frozen dataclasses fit)."""

    @property
    def weights(self) -> Weights: ...

    @property
    def num_examples(self) -> int: ...


def weights_nbytes(weights: Weights) -> int:
    """Bytes on the wire for one copy of ``weights`` (the raw arrays, no framing)."""
    return int(sum(a.nbytes for a in weights.values()))


def weighted_average(updates: Sequence[Update]) -> Weights:
    """``Σ n_i w_i / Σ n_i`` per tensor: FedAvg's aggregate."""
    if not updates:
        raise ValueError("cannot average zero client updates")
    total = sum(u.num_examples for u in updates)
    if total <= 0:
        raise ValueError(f"client updates hold {total} examples in total; weights need a positive count")
    names = updates[0].weights.keys()
    zero = np.zeros(())  # an array start (not the int 0) keeps the sum an array
    return {
        name: sum((u.num_examples * u.weights[name].astype(np.float64) for u in updates), zero) / total
        for name in names
    }


def _like(reference: Weights, values: Weights) -> Weights:
    """``values`` in the dtypes of ``reference`` (aggregation computes in float64)."""
    return {k: np.asarray(values[k], dtype=reference[k].dtype) for k in reference}


class Strategy(Protocol):
    name: str

    def configure_round(self, server_round: int, weights: Weights) -> dict[str, Any]:
        """Training options every client receives with the weights this round."""
        ...

    def aggregate(self, server_round: int, weights: Weights, updates: Sequence[Update]) -> Weights:
        """The next global weights from the current ones and this round's updates."""
        ...


@dataclass
class FedAvg:
    name: str = field(default="fedavg", init=False)

    def configure_round(self, server_round: int, weights: Weights) -> dict[str, Any]:
        return {}

    def aggregate(self, server_round: int, weights: Weights, updates: Sequence[Update]) -> Weights:
        return _like(weights, weighted_average(updates))


@dataclass
class FedProx(FedAvg):
    """FedAvg's aggregate; the client adds the proximal term ``mu/2 ||w − w_global||²``."""

    mu: float = 0.01
    name: str = field(default="fedprox", init=False)

    def __post_init__(self) -> None:
        if not self.mu >= 0:
            raise ValueError(f"FedProx mu={self.mu!r} is invalid: give a number >= 0")

    def configure_round(self, server_round: int, weights: Weights) -> dict[str, Any]:
        return {"proximal_mu": self.mu}


@dataclass
class FedAdam:
    """Server Adam on the pseudo-gradient ``Δ = FedAvg(updates) − w`` (Reddi et al., Alg. 2):

        m ← β1·m + (1−β1)·Δ,   v ← β2·v + (1−β2)·Δ²,   w ← w + η·m / (√v + τ)

    No bias correction, as in the paper; ``τ`` bounds the step where ``v`` is tiny. The moments
    live in the strategy, so one instance serves one run.
    """

    eta: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    name: str = field(default="fedadam", init=False)
    m: Weights = field(default_factory=dict, init=False, repr=False)
    v: Weights = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.eta > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.tau > 0):
            raise ValueError(f"FedAdam needs eta > 0, 0 <= beta1, beta2 < 1 and tau > 0; got {self}")

    def configure_round(self, server_round: int, weights: Weights) -> dict[str, Any]:
        return {}

    def aggregate(self, server_round: int, weights: Weights, updates: Sequence[Update]) -> Weights:
        average = weighted_average(updates)
        new = {}
        for k, w in weights.items():
            delta = average[k] - w
            self.m[k] = self.beta1 * self.m.get(k, 0.0) + (1 - self.beta1) * delta
            self.v[k] = self.beta2 * self.v.get(k, 0.0) + (1 - self.beta2) * delta**2
            new[k] = w + self.eta * self.m[k] / (np.sqrt(self.v[k]) + self.tau)
        return _like(weights, new)


STRATEGIES = ("fedavg", "fedprox", "fedadam")


def make_strategy(name: str, *, proximal_mu: float = 0.01, server_lr: float = 0.1) -> Strategy:
    """A fresh strategy by name (FedAdam keeps per-run state, so never share one between runs)."""
    if name == "fedavg":
        return FedAvg()
    if name == "fedprox":
        return FedProx(mu=proximal_mu)
    if name == "fedadam":
        return FedAdam(eta=server_lr)
    raise ValueError(f"strategy {name!r} is unknown; choose one of {list(STRATEGIES)}")
