"""A federated client: its data partition, its model spec, and one round of local training.

    update = client.fit(global_weights, steps=10, settings=LocalTraining(), config={}, seed=7)

Local optimisers, chosen by name:

- ``adam``: ``steps`` gradient steps (autograd on ``exact``, parameter shift on ``aer``), on the
  whole partition or on seeded mini-batches of ``batch_size``;
- ``cobyla``: SciPy's COBYLA with ``maxiter = steps`` objective evaluations on the whole
  partition, as the paper's code (Qiskit-ML's COBYLA wraps SciPy's). SciPy raises ``maxiter`` to
  at least ``parameters + 2`` (18 for the 16-angle VQC); the update reports the evaluations made;
- ``spsa``: ``steps`` SPSA iterations (Spall's gains ``a/(k+1)^0.602``, ``c/(k+1)^0.101`` with
  ``a = lr``, ``c = spsa_perturbation``), two objective evaluations each, seeded.

FedProx's proximal term ``mu/2 ||w − w_global||²`` (``config["proximal_mu"]``) is added to the
objective of all three. Compute is counted as circuit evaluations (:class:`CircuitCounter`), and a
client that passes its time limit raises :class:`ClientTimeout` between steps, so the server can
drop it from the round.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

from qcore.federated.client_models import ModelSpec, build_model, get_weights, set_weights
from qcore.federated.strategy import Weights
from qcore.layer import QuantumLayer

OPTIMIZERS = ("adam", "cobyla", "spsa")


class ClientTimeout(TimeoutError):
    """Local training ran past the client's time limit."""


class CircuitCounter:
    """Counts the circuit executions a quantum computer would need for what the model computes.

    Every forward pass through a quantum layer costs one execution per input row. When autograd
    records the pass (a gradient step), parameter shift would add two executions per row for each
    trainable angle and for each input angle that needs a gradient, so those are counted too,
    whether the backend is ``exact`` (autograd) or ``aer`` (which runs them). Classical models
    count zero.
    """

    def __init__(self, model: nn.Module):
        self.count = 0
        self._handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, QuantumLayer)]

    def _hook(self, layer: QuantumLayer, args: tuple[Any, ...], output: torch.Tensor) -> None:
        x = args[0] if args else None
        rows = x.shape[0] if x is not None and x.dim() == 2 else 1
        evaluations = rows
        if torch.is_grad_enabled():
            shifted = layer.weights.numel() if layer.weights.requires_grad else 0
            if x is not None and x.requires_grad:
                shifted += layer.num_inputs
            evaluations += 2 * shifted * rows
        self.count += evaluations

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass(frozen=True)
class LocalTraining:
    """How every client trains locally (the number of steps comes from the controller)."""

    optimizer: str = "adam"
    lr: float = 0.1
    batch_size: int | None = None  # adam only; None: the whole partition every step
    time_limit: float | None = None  # seconds of local training before ClientTimeout
    spsa_perturbation: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is unknown; choose one of {list(OPTIMIZERS)}")
        if not self.lr > 0 or not self.spsa_perturbation > 0:
            raise ValueError(f"lr and spsa_perturbation must be > 0, got {self.lr} and {self.spsa_perturbation}")
        if self.batch_size is not None and (self.batch_size < 1 or self.optimizer != "adam"):
            raise ValueError(f"batch_size={self.batch_size} needs optimizer 'adam' and must be >= 1")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit={self.time_limit} must be > 0 seconds, or None")


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back: its weights and what it cost.

    ``loss`` is the cross-entropy (nats) of the returned weights on the client's own data,
    without the proximal term; ``steps`` the optimiser steps (COBYLA: objective evaluations) made.
    """

    client: int
    weights: Weights
    num_examples: int
    loss: float
    steps: int
    circuit_evaluations: int
    seconds: float


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).float(), y)


def proximal_term(model: nn.Module, anchor: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``mu/2 · ||w − w_global||²`` over the trainable parameters; its gradient
    ``mu · (w − w_global)`` pulls the client back towards the global model."""
    if mu == 0.0:
        return torch.zeros(())
    squares = [((p - anchor[n].to(p.dtype)) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad]
    if not squares:  # nothing trainable: nothing to pull back
        return torch.zeros(())
    return 0.5 * mu * sum(squares[1:], squares[0])


@dataclass(frozen=True)
class Client:
    """One client: ``x`` (its features), ``y`` (its labels) and the model it trains."""

    id: int
    x: np.ndarray
    y: np.ndarray
    model: ModelSpec

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.y) == 0:
            raise ValueError(
                f"client {self.id}: {len(self.x)} feature rows and {len(self.y)} labels; need the same positive number"
            )

    @property
    def num_examples(self) -> int:
        return len(self.y)

    def fit(
        self, weights: Weights, *, steps: int, settings: LocalTraining, config: dict[str, Any], seed: int
    ) -> ClientUpdate:
        """Train from the global ``weights`` for ``steps`` steps and report the result."""
        if steps < 1:
            raise ValueError(f"client {self.id}: steps={steps} must be >= 1")
        start = time.perf_counter()

        def check_time(done: int) -> None:
            if settings.time_limit is not None and time.perf_counter() - start > settings.time_limit:
                raise ClientTimeout(
                    f"client {self.id} passed its time limit of {settings.time_limit:g} s after {done} of {steps} steps"
                )

        model = build_model(self.model)
        set_weights(model, weights)
        x = torch.as_tensor(self.x, dtype=torch.float32)
        y = torch.as_tensor(self.y, dtype=torch.long)
        anchor = {k: torch.as_tensor(v) for k, v in weights.items()}
        mu = float(config.get("proximal_mu", 0.0))

        def proximal(m: nn.Module) -> torch.Tensor:
            return proximal_term(m, anchor, mu)

        counter = CircuitCounter(model)
        try:
            train = {"adam": _adam, "cobyla": _cobyla, "spsa": _spsa}[settings.optimizer]
            done = train(model, x, y, steps, settings, proximal, seed, check_time)
            with torch.no_grad():
                loss = float(cross_entropy(model, x, y))
        finally:
            counter.close()
        return ClientUpdate(
            client=self.id,
            weights=get_weights(model),
            num_examples=self.num_examples,
            loss=loss,
            steps=done,
            circuit_evaluations=counter.count,
            seconds=time.perf_counter() - start,
        )


Proximal = Callable[[nn.Module], torch.Tensor]
CheckTime = Callable[[int], None]


def _adam(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    settings: LocalTraining,
    proximal: Proximal,
    seed: int,
    check_time: CheckTime,
) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    order = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx: slice | torch.Tensor = slice(None)
        if settings.batch_size is not None and settings.batch_size < len(y):
            idx = torch.randperm(len(y), generator=order)[: settings.batch_size]
        loss = cross_entropy(model, x[idx], y[idx]) + proximal(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        check_time(step + 1)
    return steps


Objective = Callable[[np.ndarray], float]
Assign = Callable[[np.ndarray], None]


def _flat_objective(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, proximal: Proximal, check_time: CheckTime
) -> tuple[np.ndarray, Objective, Assign]:
    """The start point, the objective of a flat weight vector and a setter, for derivative-free optimisers."""
    params = [p for p in model.parameters() if p.requires_grad]
    calls = [0]

    def assign(theta: np.ndarray) -> None:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.as_tensor(theta, dtype=params[0].dtype), params)

    def objective(theta: np.ndarray) -> float:
        assign(theta)
        with torch.no_grad():
            value = float(cross_entropy(model, x, y) + proximal(model))
        calls[0] += 1
        check_time(calls[0])
        return value

    start = torch.nn.utils.parameters_to_vector(params).detach().double().numpy()
    return start, objective, assign


def _cobyla(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    settings: LocalTraining,
    proximal: Proximal,
    seed: int,
    check_time: CheckTime,
) -> int:
    theta0, objective, assign = _flat_objective(model, x, y, proximal, check_time)
    with warnings.catch_warnings():  # SciPy warns when it raises maxiter to parameters + 2; we report nfev
        warnings.filterwarnings("ignore", message="COBYLA: Invalid MAXFUN")
        result = scipy.optimize.minimize(objective, theta0, method="COBYLA", options={"maxiter": steps, "rhobeg": 1.0})
    assign(result.x)
    return int(result.nfev)


def _spsa(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    settings: LocalTraining,
    proximal: Proximal,
    seed: int,
    check_time: CheckTime,
) -> int:
    theta, objective, assign = _flat_objective(model, x, y, proximal, check_time)
    rng = np.random.default_rng(seed)
    for k in range(steps):
        a_k = settings.lr / (k + 1) ** 0.602
        c_k = settings.spsa_perturbation / (k + 1) ** 0.101
        delta = rng.choice([-1.0, 1.0], size=theta.shape)
        slope = (objective(theta + c_k * delta) - objective(theta - c_k * delta)) / (2 * c_k)
        theta = theta - a_k * slope * delta  # 1/delta_i = delta_i for ±1 perturbations
    assign(theta)
    return steps
