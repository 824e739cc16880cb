"""Search spaces: the range of each parameter a method lets tuning change.

Each method declares its space beside its parameters (``Method.search_space``), e.g. QD-LLM's

    {"lr": Float(1e-3, 0.1, log=True), "alpha": Float(0.0, 1.0), "blocks": Int(1, 4)}

and ``qllm run tune --space "lr=1e-4:0.3:log;blocks=1:6"`` narrows or widens it; a bound the
method's parameter model refuses is refused before any trial (:func:`lab.tuning.check_space`).
Nothing here imports Optuna: declaring a space costs nothing at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Float:
    """A real range ``[low, high]``, sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False

    @property
    def bounds(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)

    def __str__(self) -> str:
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


@dataclass(frozen=True)
class Int:
    """An integer range ``[low, high]``."""

    low: int
    high: int

    @property
    def bounds(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high)

    def __str__(self) -> str:
        return f"{self.low}:{self.high}"


@dataclass(frozen=True)
class Choice:
    """One of a few values."""

    options: tuple[Any, ...]

    @property
    def bounds(self) -> tuple[Any, ...]:
        return self.options

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.options))

    def __str__(self) -> str:
        return ",".join(map(str, self.options))


Dimension = Float | Int | Choice


def parse_dimension(name: str, text: str, like: Dimension | None) -> Dimension:
    """``"1e-4:0.3:log"`` (a real range), ``"1:6"`` (integers where the declared dimension is
    one, or both bounds are integers), ``"a,b,c"`` (a choice)."""
    parts = text.split(":")
    if len(parts) == 1:
        values = [_number(v) for v in text.split(",") if v]
        if not values:
            raise ValueError(f"space {name}={text!r} is empty: give low:high[:log] or a,b,c")
        return Choice(tuple(values))
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"space {name}={text!r} is not low:high, low:high:log or a,b,c")
    low, high = (_number(p) for p in parts[:2])
    if not all(isinstance(v, (int, float)) for v in (low, high)) or not low < high:
        raise ValueError(f"space {name}={text!r}: the bounds must be numbers with low < high")
    integer = isinstance(like, Int) or (like is None and isinstance(low, int) and isinstance(high, int))
    if integer and len(parts) == 2:
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(f"space {name}={text!r}: {name} is an integer, give integer bounds")
        return Int(int(low), int(high))
    return Float(float(low), float(high), log=len(parts) == 3)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
