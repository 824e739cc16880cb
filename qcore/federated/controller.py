"""The LLM-QFL controller: after every round it decides each client's local steps for the next
round, which clients' updates are aggregated, and whether to stop.

LLM-QFL (arXiv 2505.18656) compares every client's VQC objective with the loss of the language
model that client fine-tuned on its own data. Where the objective is larger, the ratio
``r = objective / llm_loss`` rescales the client's local steps ``m`` (the paper's ``maxiter``)
by one of five rules, each capped at ``max_steps`` (the code's ``MAX_MAXITER = 100``):

    incremental        m + int(m·(r − 1))
    dynamic-weighted   int(0.5·m + 0.5·m·r)
    logarithmic        m + int(log(1 + r)·m)
    adaptive           int(m·r)                          (the paper's default)
    hybrid             m + min(int(m·r), max_increment)

Selection keeps the ``select_fraction`` of clients (at least one) whose loss is closest to the
server's, and the run stops once ``|server objective − server LLM loss| < stop_threshold``
(0.4 in the paper's simulations, 0.02 on hardware). In the public code both are computed but
unused (every client is averaged, the ``break`` is commented out); here they act.

Controllers:

- :class:`NoController` (``none``): plain QFL, every update aggregated, steps fixed, no stop;
- :class:`RuleController`: the rules above;
- :class:`GenerativeController`: a user's generative LLM reads :func:`summary_text` and answers
  JSON; an answer that does not parse or validate falls back to a rule with a logged warning.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

RULES = ("incremental", "dynamic-weighted", "logarithmic", "adaptive", "hybrid")


@dataclass(frozen=True)
class ClientReport:
    """One client's round. ``loss`` is its VQC objective in the run's unit (bits as in the
    paper's code, or nats), ``llm_loss`` its language model's loss in nats, as the paper compares
    them; ``steps`` the local steps it was asked for."""

    client: int
    examples: int
    steps: int
    loss: float
    llm_loss: float | None


@dataclass(frozen=True)
class RoundSummary:
    """Everything a controller may read after a round's training.

    ``server_loss`` is the loss on the server's own data of the average of all this round's
    updates (the paper's server starts from that average); ``failed`` lists dropped clients.
    """

    round: int
    rounds: int
    clients: tuple[ClientReport, ...]
    failed: tuple[int, ...]
    server_loss: float
    server_llm_loss: float | None


@dataclass(frozen=True)
class Decision:
    """``steps``: next round's local steps by client (absent clients keep theirs);
    ``source``: who decided (``rule``, ``none``, ``generative`` or ``fallback``)."""

    aggregate: tuple[int, ...]
    steps: dict[int, int]
    stop: bool
    source: str
    note: str = ""


class Controller(Protocol):
    # Read-only members, so frozen dataclasses and properties satisfy the protocol.
    @property
    def name(self) -> str: ...

    @property
    def uses_llm(self) -> bool: ...  # whether the run must fine-tune the clients' language models for it

    def decide(self, summary: RoundSummary) -> Decision: ...


def scale_steps(rule: str, steps: int, ratio: float, max_steps: int, max_increment: int) -> int:
    """One of the paper's five rules, capped at ``max_steps`` and kept >= 1."""
    if rule == "incremental":
        new = steps + int(steps * (ratio - 1))
    elif rule == "dynamic-weighted":
        new = int(steps * 0.5 + steps * 0.5 * ratio)
    elif rule == "logarithmic":
        new = steps + int(math.log(1 + ratio) * steps)
    elif rule == "adaptive":
        new = int(steps * ratio)
    elif rule == "hybrid":
        new = steps + min(int(steps * ratio), max_increment)
    else:
        raise ValueError(f"rule {rule!r} is unknown; choose one of {list(RULES)}")
    return max(1, min(new, max_steps))


def closest_to_server(summary: RoundSummary, fraction: float) -> tuple[int, ...]:
    """The ``max(1, int(n·fraction))`` clients with the smallest ``|loss − server loss|``
    (ties by client id), as the paper's code selects them."""
    keep = max(1, int(len(summary.clients) * fraction))
    ranked = sorted(summary.clients, key=lambda c: (abs(c.loss - summary.server_loss), c.client))
    return tuple(sorted(c.client for c in ranked[:keep]))


@dataclass(frozen=True)
class NoController:
    """Plain quantum federated learning."""

    name: str = field(default="none", init=False)
    uses_llm: bool = field(default=False, init=False)

    def decide(self, summary: RoundSummary) -> Decision:
        return Decision(
            tuple(c.client for c in summary.clients),
            {c.client: c.steps for c in summary.clients},
            stop=False,
            source="none",
        )


@dataclass(frozen=True)
class RuleController:
    """The paper's controller with one of the five step rules."""

    rule: str = "adaptive"
    max_steps: int = 100
    max_increment: int = 100
    select_fraction: float = 0.1
    stop_threshold: float = 0.4
    uses_llm: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule {self.rule!r} is unknown; choose one of {list(RULES)}")
        if self.max_steps < 1 or self.max_increment < 0:
            raise ValueError(f"need max_steps >= 1 and max_increment >= 0, got {self.max_steps}, {self.max_increment}")
        if not 0 < self.select_fraction <= 1:
            raise ValueError(f"select_fraction={self.select_fraction} must lie in (0, 1]")
        if not self.stop_threshold >= 0:
            raise ValueError(f"stop_threshold={self.stop_threshold} must be >= 0 (0 never stops)")

    @property
    def name(self) -> str:
        return self.rule

    def next_steps(self, report: ClientReport) -> int:
        """Rescaled when the client's objective exceeds its LLM's loss, else unchanged."""
        if report.llm_loss is None or report.loss <= report.llm_loss:
            return report.steps
        ratio = report.loss / report.llm_loss if report.llm_loss > 0 else math.inf
        if math.isinf(ratio):
            return self.max_steps
        return scale_steps(self.rule, report.steps, ratio, self.max_steps, self.max_increment)

    def should_stop(self, summary: RoundSummary) -> bool:
        return (
            summary.server_llm_loss is not None
            and abs(summary.server_loss - summary.server_llm_loss) < self.stop_threshold
        )

    def decide(self, summary: RoundSummary) -> Decision:
        return Decision(
            closest_to_server(summary, self.select_fraction),
            {c.client: self.next_steps(c) for c in summary.clients},
            stop=self.should_stop(summary),
            source="rule",
        )


# --- generative controller ----------------------------------------------------------------------

Ask = Callable[[str], str]


def summary_text(summary: RoundSummary, max_steps: int) -> str:
    """The round as a language model reads it, with the answer format it must use."""
    lines = [
        f"Federated training of quantum classifiers, round {summary.round} of {summary.rounds}.",
        f"Server loss (average of this round's updates, on server data): {summary.server_loss:.4f}.",
        "Server language-model loss: "
        + ("unknown." if summary.server_llm_loss is None else f"{summary.server_llm_loss:.4f}."),
        f"Clients that failed this round: {list(summary.failed) or 'none'}.",
        "client | examples | local steps | loss | language-model loss",
    ]
    for c in summary.clients:
        llm = "unknown" if c.llm_loss is None else f"{c.llm_loss:.4f}"
        lines.append(f"{c.client} | {c.examples} | {c.steps} | {c.loss:.4f} | {llm}")
    ids = [c.client for c in summary.clients]
    lines.append(
        "Decide which clients to aggregate, each client's local steps next round (integers from 1 "
        f"to {max_steps}) and whether to stop. Answer with JSON only, e.g. "
        + json.dumps({"aggregate": ids, "steps": {str(i): 10 for i in ids}, "stop": False})
    )
    return "\n".join(lines)


class InvalidAnswer(ValueError):
    """A generative controller's answer that cannot be used; the message says why."""


def parse_decision(answer: str, summary: RoundSummary, max_steps: int) -> Decision:
    """The first JSON object in ``answer`` (code fences and prose around it are allowed), checked:
    ``aggregate`` a non-empty list of this round's clients, ``steps`` integers in
    ``1..max_steps`` for this round's clients (absent: unchanged), ``stop`` a boolean."""
    match = re.search(r"\{.*\}", answer, flags=re.DOTALL)
    if match is None:
        raise InvalidAnswer(f"no JSON object in the answer {answer[:200]!r}")
    try:
        raw = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"the answer's JSON does not parse ({exc})") from None
    if not isinstance(raw, dict):
        raise InvalidAnswer(f"the answer's JSON is a {type(raw).__name__}, not an object")
    known = {c.client for c in summary.clients}
    aggregate = raw.get("aggregate")
    if (
        not isinstance(aggregate, list)
        or not aggregate
        or any(isinstance(i, bool) or not isinstance(i, int) or i not in known for i in aggregate)
    ):
        raise InvalidAnswer(
            f"'aggregate' must be a non-empty list of this round's clients {sorted(known)}, got {aggregate!r}"
        )
    steps_raw = raw.get("steps", {})
    if not isinstance(steps_raw, dict):
        raise InvalidAnswer(f"'steps' must map client ids to integers, got {steps_raw!r}")
    steps = {c.client: c.steps for c in summary.clients}
    for key, value in steps_raw.items():
        try:
            client = int(key)
        except (TypeError, ValueError):
            raise InvalidAnswer(f"'steps' key {key!r} is not a client id") from None
        if client not in known:
            raise InvalidAnswer(f"'steps' names client {client}, not among this round's {sorted(known)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_steps:
            raise InvalidAnswer(f"'steps' for client {client} must be an integer in 1..{max_steps}, got {value!r}")
        steps[client] = value
    stop = raw.get("stop", False)
    if not isinstance(stop, bool):
        raise InvalidAnswer(f"'stop' must be true or false, got {stop!r}")
    return Decision(tuple(sorted(set(aggregate))), steps, stop=stop, source="generative")


@dataclass
class GenerativeController:
    """Asks ``ask(prompt) -> answer`` (any generative LLM) for each round's decisions; when the
    answer is invalid or the call fails, logs a warning and uses ``fallback``'s decision.
    Steps are capped by the fallback rule's ``max_steps``."""

    ask: Ask
    fallback: RuleController
    name: str = "generative"
    uses_llm: bool = field(default=True, init=False)

    def decide(self, summary: RoundSummary) -> Decision:
        prompt = summary_text(summary, self.fallback.max_steps)
        try:
            return parse_decision(str(self.ask(prompt)), summary, self.fallback.max_steps)
        except Exception as exc:  # noqa: BLE001 - a user's LLM may fail in any way; fall back, never crash
            log.warning(
                "round %d: the generative controller's answer is unusable (%s); using the %s rule",
                summary.round,
                exc,
                self.fallback.rule,
            )
            decision = self.fallback.decide(summary)
            return Decision(decision.aggregate, decision.steps, decision.stop, source="fallback", note=str(exc))


def load_callable(path: str) -> Ask:
    """``package.module:function`` → that callable (how the command line names a generative LLM)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"generative controller {path!r}: write it as 'generative:package.module:function'")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"generative controller {path!r} cannot be loaded: {exc}") from None
    if not callable(target):
        raise ValueError(f"generative controller {path!r} is not callable")
    return target


def make_controller(
    spec: str,
    *,
    max_steps: int = 100,
    max_increment: int = 100,
    select_fraction: float = 0.1,
    stop_threshold: float = 0.4,
    fallback_rule: str = "adaptive",
) -> Controller:
    """``none``, a rule name, or ``generative:package.module:function`` (with ``fallback_rule``)."""

    def rule_controller(rule: str) -> RuleController:
        return RuleController(
            rule,
            max_steps=max_steps,
            max_increment=max_increment,
            select_fraction=select_fraction,
            stop_threshold=stop_threshold,
        )

    if spec == "none":
        return NoController()
    if spec in RULES:
        return rule_controller(spec)
    if spec.startswith("generative:"):
        path = spec.removeprefix("generative:")
        return GenerativeController(load_callable(path), rule_controller(fallback_rule), name=spec)
    raise ValueError(
        f"controller {spec!r} is unknown; use 'none', one of {list(RULES)} or 'generative:package.module:function'"
    )
