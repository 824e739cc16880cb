"""What the clients' circuits read: sentence embeddings reduced by PCA and min-max scaled.

The paper reduces its inputs to 4 PCA components (one per qubit) and min-max scales them to
``[0, 1]`` on each device. Here the projection is fitted once, on the server's own data, and sent
to every client with the model: no client's data leaves it, and all clients see the same
coordinates (per-device scaling would give the same angle a different meaning on every client,
which matters under non-IID splits). Rows outside the server data's range map slightly outside
``[0, 1]``; the feature map takes any real angle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d)
    low: np.ndarray  # (k,) min of the projected fitting data
    high: np.ndarray  # (k,) max of the projected fitting data

    @classmethod
    def fit(cls, x: np.ndarray, components: int) -> Projection:
        """PCA to ``components`` dimensions (exact SVD, so the result is deterministic), then the
        per-component range of the fitting data."""
        x = np.asarray(x, dtype=np.float64)
        if not 1 <= components <= min(x.shape):
            raise ValueError(
                f"cannot fit {components} PCA components to {x.shape[0]} rows of "
                f"{x.shape[1]} features: need 1..{min(x.shape)}"
            )
        pca = PCA(n_components=components, svd_solver="full").fit(x)
        z = pca.transform(x)
        return cls(pca.mean_, pca.components_, z.min(axis=0), z.max(axis=0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        return ((z - self.low) / span).astype(np.float32)
