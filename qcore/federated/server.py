"""The federated round loop: send the global weights, collect the updates that arrive, let the
controller decide, aggregate with the strategy, evaluate, repeat.

    run = FederatedRun(clients, model, FedAvg(), RuleController("adaptive"), server_data, test_data,
                       LocalTraining(), local_steps=10, llm_losses=..., server_llm_loss=...)
    result = run.run(rounds=10)                  # clients train one after another, in process
    result = run.run(rounds=10, fit=my_executor)  # or any executor, e.g. Prefect tasks on Dask

``fit`` receives one round's :class:`ClientJob` list and returns, per job, a
:class:`~qcore.federated.client.ClientUpdate` or a :class:`ClientFailure`. A failed or timed-out
client is dropped from that round and counted; the round aggregates the rest. A round in which
every client failed keeps the global model, is recorded as such and logged, never skipped.

The server holds a small labelled set of its own (as the paper's server device does): it scores
the average of each round's updates there (the *server loss* the controller reads). Global
accuracy and loss are measured on the test split. Both use the exact simulator, whatever backend
the clients train on.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from qcore.federated.client import Client, ClientUpdate, LocalTraining
from qcore.federated.client_models import ModelSpec, build_model, get_weights, set_weights
from qcore.federated.controller import ClientReport, Controller, Decision, RoundSummary
from qcore.federated.strategy import Strategy, Weights, weighted_average, weights_nbytes

log = logging.getLogger(__name__)

OBJECTIVE_UNITS = ("bits", "nats")


@dataclass(frozen=True)
class ClientJob:
    """One client's work for one round: what travels to a worker."""

    client: Client
    round: int
    weights: Weights
    steps: int
    config: dict[str, Any]
    settings: LocalTraining
    seed: int

    def run(self) -> ClientUpdate:
        return self.client.fit(
            self.weights, steps=self.steps, settings=self.settings, config=self.config, seed=self.seed
        )


@dataclass(frozen=True)
class ClientFailure:
    """A client dropped from a round: ``kind`` is ``"failed"`` or ``"timed out"``."""

    client: int
    kind: str
    message: str


Outcome = ClientUpdate | ClientFailure
Fit = Callable[[list[ClientJob]], list[Outcome]]


def failure(client: int, exc: BaseException) -> ClientFailure:
    """Classify an exception from a client's training (timeouts apart from other failures)."""
    kind = "timed out" if isinstance(exc, TimeoutError) else "failed"
    return ClientFailure(client, kind, f"{type(exc).__name__}: {exc}")


def fit_sequentially(jobs: list[ClientJob]) -> list[Outcome]:
    """The reference executor: every job in this process, one after another."""
    outcomes: list[Outcome] = []
    for job in jobs:
        try:
            outcomes.append(job.run())
        except Exception as exc:  # noqa: BLE001 - any client error drops that client, not the round
            outcomes.append(failure(job.client.id, exc))
    return outcomes


@dataclass(frozen=True)
class RoundRecord:
    """What one round did and cost. ``clients`` holds, per reporting client, its ``steps``,
    ``loss`` (nats, own data), ``circuit_evaluations``, ``seconds`` and ``examples``.

    ``idle_fraction`` is the compute the clients spent waiting for the busiest one in a
    synchronous round, ``Σ (max e − e_i) / (n · max e)`` over circuit evaluations ``e``
    (``idle_seconds_fraction`` the same over measured seconds); ``discarded_evaluations`` the
    circuit evaluations of updates the controller left out of the aggregate.
    """

    round: int
    accuracy: float
    test_loss: float
    server_loss: float | None
    selected: tuple[int, ...]
    failed: dict[int, str]
    clients: dict[int, dict[str, float]]
    bytes_up: int
    bytes_down: int
    circuit_evaluations: int
    client_seconds: float
    idle_fraction: float
    idle_seconds_fraction: float
    discarded_evaluations: int
    next_steps: dict[int, int]
    stop: bool
    decision: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_dict`, also after JSON turned the client ids into strings."""

        def by_client(m: dict[Any, Any]) -> dict[int, Any]:
            return {int(k): v for k, v in m.items()}

        return cls(
            **{
                **d,
                "selected": tuple(d["selected"]),
                "failed": by_client(d["failed"]),
                "clients": by_client(d["clients"]),
                "next_steps": by_client(d["next_steps"]),
            }
        )


@dataclass(frozen=True)
class RunResult:
    initial_accuracy: float
    initial_loss: float
    records: list[RoundRecord]
    weights: Weights


def _idle(busy: Sequence[float]) -> float:
    peak = max(busy, default=0.0)
    return 0.0 if peak <= 0 else float(sum(peak - b for b in busy) / (len(busy) * peak))


def job_seed(seed: int, round_: int, client: int) -> int:
    """A distinct, reproducible seed for every (run, round, client)."""
    return int(np.random.SeedSequence([seed, round_, client]).generate_state(1)[0])


@dataclass
class FederatedRun:
    """One federated training run. ``llm_losses`` maps client ids to their fine-tuned LLM's loss
    (nats); ``objective_unit`` is the unit the controller sees the VQC's cross-entropy in:
    ``bits`` as Qiskit-ML's ``CrossEntropyLoss`` (log2) in the paper's code, or ``nats``."""

    clients: list[Client]
    model: ModelSpec
    strategy: Strategy
    controller: Controller
    server_data: tuple[np.ndarray, np.ndarray]
    test_data: tuple[np.ndarray, np.ndarray]
    settings: LocalTraining
    local_steps: int = 10
    llm_losses: dict[int, float] = field(default_factory=dict)
    server_llm_loss: float | None = None
    objective_unit: str = "bits"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective_unit not in OBJECTIVE_UNITS:
            raise ValueError(f"objective_unit={self.objective_unit!r}; choose one of {list(OBJECTIVE_UNITS)}")
        if self.local_steps < 1:
            raise ValueError(f"local_steps={self.local_steps} must be >= 1")
        if len({c.id for c in self.clients}) != len(self.clients) or not self.clients:
            raise ValueError("need at least one client, with distinct ids")
        self._evaluator = build_model(replace(self.model, backend="exact", backend_options={}))

    def _objective(self, nats: float) -> float:
        return nats / math.log(2) if self.objective_unit == "bits" else nats

    def evaluate(self, weights: Weights, data: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
        """(accuracy, cross-entropy in nats) of ``weights`` on ``data``."""
        set_weights(self._evaluator, weights)
        x = torch.tensor(data[0], dtype=torch.float32)  # copies: the arrays may be read-only (Dask)
        y = torch.tensor(data[1], dtype=torch.long)
        with torch.no_grad():
            logits = self._evaluator(x).float()
            return float((logits.argmax(-1) == y).float().mean()), float(torch.nn.functional.cross_entropy(logits, y))

    def _job_model(self, seed: int) -> ModelSpec:
        if self.model.backend != "aer":
            return self.model
        return replace(self.model, backend_options={**self.model.backend_options, "simulator_seed": seed})

    def run(
        self, rounds: int, fit: Fit = fit_sequentially, on_round: Callable[[RoundRecord], None] | None = None
    ) -> RunResult:
        if rounds < 1:
            raise ValueError(f"rounds={rounds} must be >= 1")
        weights = get_weights(build_model(self.model))
        initial_accuracy, initial_loss = self.evaluate(weights, self.test_data)
        steps = {c.id: self.local_steps for c in self.clients}
        records: list[RoundRecord] = []
        for r in range(1, rounds + 1):
            config = self.strategy.configure_round(r, weights)
            jobs = []
            for c in self.clients:
                seed = job_seed(self.seed, r, c.id)
                jobs.append(
                    ClientJob(
                        replace(c, model=self._job_model(seed)), r, weights, steps[c.id], config, self.settings, seed
                    )
                )
            outcomes = fit(jobs)
            updates = [o for o in outcomes if isinstance(o, ClientUpdate)]
            failed = {o.client: o.kind for o in outcomes if isinstance(o, ClientFailure)}
            for o in outcomes:
                if isinstance(o, ClientFailure):
                    log.warning(
                        "round %d: client %d %s and is dropped from the round: %s", r, o.client, o.kind, o.message
                    )
            record = self._round(r, rounds, weights, jobs, updates, failed, steps)
            if record.selected:
                chosen = [u for u in updates if u.client in record.selected]
                weights = self.strategy.aggregate(r, weights, chosen)
            accuracy, test_loss = self.evaluate(weights, self.test_data)
            record = replace(record, accuracy=accuracy, test_loss=test_loss)
            steps.update(record.next_steps)
            records.append(record)
            if on_round is not None:
                on_round(record)
            if record.stop:
                log.info("round %d: the controller stops the run (%s)", r, record.note or record.decision)
                break
        return RunResult(initial_accuracy, initial_loss, records, weights)

    def _round(
        self,
        r: int,
        rounds: int,
        weights: Weights,
        jobs: list[ClientJob],
        updates: list[ClientUpdate],
        failed: dict[int, str],
        steps: dict[int, int],
    ) -> RoundRecord:
        """The round's decision and costs (accuracy is filled in after aggregation)."""
        evaluations = [u.circuit_evaluations for u in updates]
        record = functools.partial(
            RoundRecord,
            round=r,
            accuracy=math.nan,
            test_loss=math.nan,
            failed=failed,
            clients={
                u.client: {
                    "steps": u.steps,
                    "loss": u.loss,
                    "circuit_evaluations": u.circuit_evaluations,
                    "seconds": u.seconds,
                    "examples": u.num_examples,
                }
                for u in updates
            },
            bytes_up=sum(weights_nbytes(u.weights) for u in updates),
            bytes_down=sum(weights_nbytes(j.weights) for j in jobs),
            circuit_evaluations=sum(evaluations),
            client_seconds=sum(u.seconds for u in updates),
            idle_fraction=_idle(evaluations),
            idle_seconds_fraction=_idle([u.seconds for u in updates]),
        )
        if not updates:
            log.warning("round %d: no client finished (%s); the global model is kept", r, failed)
            return record(
                server_loss=None,
                selected=(),
                discarded_evaluations=0,
                next_steps={},
                stop=False,
                decision="no updates",
                note="every client was dropped",
            )
        server_loss = self._objective(self.evaluate(weighted_average(updates), self.server_data)[1])
        summary = RoundSummary(
            round=r,
            rounds=rounds,
            failed=tuple(sorted(failed)),
            server_loss=server_loss,
            server_llm_loss=self.server_llm_loss,
            clients=tuple(
                ClientReport(
                    u.client, u.num_examples, steps[u.client], self._objective(u.loss), self.llm_losses.get(u.client)
                )
                for u in updates
            ),
        )
        decision: Decision = self.controller.decide(summary)
        discarded = sum(u.circuit_evaluations for u in updates if u.client not in decision.aggregate)
        return record(
            server_loss=server_loss,
            selected=decision.aggregate,
            discarded_evaluations=discarded,
            next_steps=decision.steps,
            stop=decision.stop,
            decision=decision.source,
            note=decision.note,
        )
