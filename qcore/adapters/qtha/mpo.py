"""Matrix product operators: a large matrix held as a short chain of small tensors.

A ``rows × cols`` matrix with ``rows ≤ p₁…p_K`` and ``cols ≤ q₁…q_K`` is the contraction of
cores ``G_k`` of shape ``(χ_{k−1}, p_k, q_k, χ_k)`` (``χ₀ = χ_K = 1``): entry ``[(i₁…i_K),
(j₁…j_K)] = G₁[i₁, j₁] · G₂[i₂, j₂] ⋯ G_K[i_K, j_K]``, a product of ``χ``-sized matrices. Sizes
that do not factor well (GPT-2's vocabulary, 50,257 = 29 · 1,733) are padded up to the nearest
product and the extra rows and columns cropped.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def factorize(d: int, k: int) -> tuple[int, ...]:
    """``k`` ascending factors with product ``≥ d`` and the smallest sum (an MPO's size grows
    with its factors' sum), the smallest product among equal sums: 768 → (8, 8, 12);
    50,257 = 29 · 1,733 → (34, 37, 40) = 50,320, padding 0.1% rather than a core of 1,733."""
    best: tuple[tuple[int, int], tuple[int, ...]] | None = None

    def search(prefix: tuple[int, ...], lo: int) -> None:
        nonlocal best
        done = math.prod(prefix)
        left = k - len(prefix)
        if left == 1:
            last = max(lo, -(-d // done))
            key = (sum(prefix) + last, done * last)
            if best is None or key < best[0]:
                best = (key, (*prefix, last))
            return
        # The smallest remaining factor of a best choice never exceeds the left-th root of what is left.
        for f in range(lo, math.ceil((d / done) ** (1 / left)) + 2):
            search((*prefix, f), f)

    search((), 1)
    assert best is not None
    return best[1]


class MPO(nn.Module):
    """A ``rows × cols`` matrix as ``cores`` MPO cores of bond dimension at most ``bond_dim``.

    Bonds are capped where a larger one could not add anything (at most the smaller side of the
    cut), so no parameter is wasted. Cores are drawn so the matrix's entries have standard
    deviation ``std``; ``zero_last`` then zeroes the last core, making the matrix zero.
    """

    def __init__(self, rows: int, cols: int, *, cores: int, bond_dim: int, std: float, zero_last: bool = False) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        p, q = factorize(rows, cores), factorize(cols, cores)
        sizes = [a * b for a, b in zip(p, q, strict=True)]
        bonds = [1, *(min(bond_dim, math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, cores)), 1]
        # An entry sums prod(bonds) products of `cores` core entries: pick their std to give `std`.
        sigma = (std / math.sqrt(math.prod(bonds))) ** (1 / cores)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.randn(bonds[k], p[k], q[k], bonds[k + 1]) * sigma) for k in range(cores)
        )
        if zero_last:
            nn.init.zeros_(self.cores[-1])

    def matrix(self) -> torch.Tensor:
        t = self.cores[0].new_ones(1, 1, 1)  # (rows so far, cols so far, open bond)
        for core in self.cores:
            t = torch.einsum("PQa,apqb->PpQqb", t, core)
            t = t.reshape(t.shape[0] * t.shape[1], t.shape[2] * t.shape[3], t.shape[4])
        return t[: self.rows, : self.cols, 0]

    def extra_repr(self) -> str:
        shapes = ", ".join("×".join(map(str, c.shape)) for c in self.cores)
        return f"{self.rows}×{self.cols}, cores {shapes}"
