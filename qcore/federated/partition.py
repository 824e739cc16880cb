"""Splitting a labelled training set across federated clients: IID shards or Dirichlet(α) label skew.

LLM-QFL (arXiv 2505.18656) gives its clients equal IID shards. The Dirichlet split (Hsu et al.,
arXiv 1909.06335) is the usual non-IID benchmark: for every class, the share each client gets is
drawn from Dir(α, …, α), so a small α gives each client a few dominant classes and a large α
approaches IID. Both are seeded: the same labels, clients and seed give the same split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# What :meth:`PartitionSpec.parse` accepts, as a JSON-schema pattern (the form's rule): iid, or
# dirichlet: and a number other than zero (finite, not negative).
PARTITION_PATTERN = r"^(iid|dirichlet:(?!0*\.?0*([eE][-+]?\d+)?$)(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$"


class PartitionError(ValueError):
    """A split that cannot be made; the message names the bad value and what is allowed."""


def _check_clients(labels: np.ndarray, clients: int) -> None:
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise PartitionError(f"clients={clients!r} is invalid: give a positive integer")
    if clients > len(labels):
        raise PartitionError(
            f"clients={clients} exceeds the {len(labels)} training examples to share: "
            f"every client needs at least one; use at most {len(labels)} clients or more data"
        )


def iid(labels: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then cut into ``clients`` shards whose sizes differ by at most one (sorted indices)."""
    labels = np.asarray(labels)
    _check_clients(labels, clients)
    order = np.random.default_rng([seed, 0]).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet(
    labels: np.ndarray, clients: int, alpha: float, seed: int, *, min_size: int = 1, max_tries: int = 100
) -> list[np.ndarray]:
    """Label skew: class ``k``'s examples are cut among the clients in proportions ~ Dir(α).

    Draws are repeated (up to ``max_tries``, each from the same seeded stream) until every client
    holds at least ``min_size`` examples; a split that keeps failing is refused rather than
    handing a client nothing.
    """
    labels = np.asarray(labels)
    _check_clients(labels, clients)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"alpha={alpha!r} is invalid: the Dirichlet concentration must be a finite number > 0")
    if min_size * clients > len(labels):
        raise PartitionError(f"{clients} clients × min_size {min_size} exceeds the {len(labels)} examples")
    rng = np.random.default_rng([seed, 1])
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for k in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == k))
            shares = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise PartitionError(
        f"dirichlet:{alpha} left a client with fewer than {min_size} of the {len(labels)} examples in "
        f"{max_tries} draws: use fewer clients, more data or a larger alpha"
    )


@dataclass(frozen=True)
class PartitionSpec:
    """``iid`` or ``dirichlet:<alpha>``, as the command line writes it."""

    kind: str
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        kind, _, arg = str(text).strip().partition(":")
        if kind == "iid" and not arg:
            return cls("iid")
        if kind == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                raise PartitionError(
                    f"partition {text!r}: the alpha after 'dirichlet:' must be a number, e.g. dirichlet:0.5"
                ) from None
            if not math.isfinite(alpha) or alpha <= 0:
                raise PartitionError(f"partition {text!r}: alpha must be a finite number > 0, got {alpha}")
            return cls("dirichlet", alpha)
        raise PartitionError(f"partition {text!r} is unknown: use 'iid' or 'dirichlet:<alpha>' (alpha > 0)")

    def split(self, labels: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
        if self.kind == "iid":
            return iid(labels, clients, seed)
        assert self.alpha is not None
        return dirichlet(labels, clients, self.alpha, seed)

    def __str__(self) -> str:
        return "iid" if self.kind == "iid" else f"dirichlet:{self.alpha:g}"
