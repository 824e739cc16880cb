"""Parameter groups every flow's parameter model is composed of, each defined once.

A flow's parameters are one flat pydantic model (the ``qllm run`` options, the Prefect UI form
and ``prefect.yaml`` all read it), built from these groups plus the method's own fields:

    class DistillParams(RunOptions, DistillFields, DataOptions): ...

Fields appear in the form in reverse order of the bases (data first, run settings last). A flow
that wants another default redeclares only that field's default with :func:`experiment`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

NAMED_SETS = "named set (sst2, subj, trec, trec-fine, ag_news) or a TSV/CSV/JSONL path or fsspec URL"


# How a field name's words read in a title (the Prefect UI form's labels): pydantic's own
# titles capitalise each word ("Lr", "Llm Model", "Qpu Seconds").
TITLE_WORDS = {
    "lr": "learning rate",
    "llm": "LLM",
    "qpu": "QPU",
    "qpa": "QPA",
    "qtha": "QTHA",
    "id": "ID",
    "dim": "dimension",
    "logreg": "logistic regression",
    "val": "validation",
    "eval": "evaluation",
    "mu": "μ",
    "c": "C",
}


def field_title(name: str, _info: object = None) -> str:
    """``head_lr`` → "Head learning rate", ``llm_model`` → "LLM model": a sentence, not Title Case."""
    words = [TITLE_WORDS.get(w, w) for w in name.split("_")]
    first = words[0]
    return " ".join([first[:1].upper() + first[1:], *words[1:]])


# --- rules in the JSON schema: the Prefect UI form refuses what breaks them at Submit, as
# the validators do on the command line (they keep the messages that name the value).


def items_between(
    low: float, high: float | None = None, *, integer: bool = True, low_exclusive: bool = False
) -> dict[str, Any]:
    """``json_schema_extra`` of a list field whose every item lies in ``[low, high]`` (``(low,
    high]`` when ``low_exclusive``; no upper bound when ``high`` is None)."""
    item: dict[str, Any] = {"type": "integer" if integer else "number"}
    item["exclusiveMinimum" if low_exclusive else "minimum"] = low
    if high is not None:
        item["maximum"] = high
    return {"items": item}


def one_of(names: Iterable[str], *, optional: bool = False, each: bool = False) -> dict[str, Any]:
    """``json_schema_extra`` of a field that takes one of ``names`` (``optional``: or null;
    ``each``: a list field whose every item does): an enum, a dropdown in the form."""
    if each:
        return {"items": {"type": "string", "enum": list(names)}}
    return {"enum": [*names, None] if optional else list(names)}


def repeated(values: Sequence[Any]) -> list[Any]:
    """The values that occur more than once in ``values``, in order of their first repeat."""
    seen: list[Any] = []
    out: list[Any] = []
    for v in values:
        if v in seen and v not in out:
            out.append(v)
        seen.append(v)
    return out


class Options(BaseModel):
    """Base of every group: unknown fields are refused, naming them; titles read as words; a list
    field (or a dict of lists, a study's grid) holding a value twice is refused, naming it (two
    identical tasks would race for one cache entry), unless the field is in ``repeatable``."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)
    repeatable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")
    @classmethod
    def _no_repeats(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name in cls.repeatable:
            return v
        lists = v.items() if isinstance(v, dict) else [(None, v)]
        for key, values in lists:
            if isinstance(values, list) and (twice := repeated(values)):
                where = f" (axis {key!r})" if key is not None else ""
                raise ValueError(f"{twice} given more than once{where}; give each value once")
        return v


@runtime_checkable
class ReadsData(Protocol):
    """Parameters whose data set is read and checked by :mod:`lab.data` alone (names, paths,
    columns, labels, sizes): ``qllm`` calls :meth:`check_data` before a flow's heavy modules load,
    so bad data is refused in a second."""

    def check_data(self) -> None: ...


class DataOptions(Options):
    """Which data set a classification flow reads, and its columns when it is a file."""

    dataset: str = Field("sst2", description=NAMED_SETS)
    text_column: str | None = Field(None, description="text column of a file data set")
    label_column: str | None = Field(None, description="label column of a file data set")


class TrackingOptions(Options):
    """Where a run is tracked."""

    experiment: str = Field("qllm", min_length=1, description="MLflow experiment name")


class ClusterOptions(Options):
    """Where a run's tasks go (``qllm run`` only: a deployment's come from its worker)."""

    dask_address: str | None = Field(None, description="Dask scheduler address (default: a temporary LocalCluster)")


class RunOptions(ClusterOptions, TrackingOptions):
    """Tracking and cluster, the run settings every flow has."""


def refuse_unused(params: BaseModel, names: Sequence[str], remedy: str) -> None:
    """Refuse the fields of ``names`` set away from their defaults: in this combination of
    ``params`` they would be ignored without a word; ``remedy`` says what makes them apply."""
    fields = type(params).model_fields
    given = [n for n in names if getattr(params, n) != fields[n].get_default(call_default_factory=True)]
    if given:
        shown = ", ".join(f"{n}={getattr(params, n)!r}" for n in given)
        raise ValueError(f"{shown} would have no effect: {remedy}, or leave {'them' if len(given) > 1 else 'it'} out")


def experiment(name: str) -> Any:
    """The ``experiment`` field of :class:`TrackingOptions` with a flow's own default."""
    field = copy.copy(TrackingOptions.model_fields["experiment"])
    field.default = name
    return field


def config_defaults(config: type) -> dict[str, Any]:
    """The defaults of a ``qcore`` config dataclass, so a flow's fields take them from there."""
    return {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}


def parse_assignments(text: str, what: str) -> dict[str, list[str]]:
    """``"a=1,2;b=3"`` (``;`` or spaces between axes) → ``{"a": ["1", "2"], "b": ["3"]}``."""
    out: dict[str, list[str]] = {}
    for part in text.replace(";", " ").split():
        name, sep, values = part.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"{what} entry {part!r} is not name=value[,value...]")
        out[name.strip().replace("-", "_")] = [v for v in values.split(",") if v]
    return out


def parse_values(text: str, what: str) -> dict[str, Any]:
    """``"a=1;b=2,3"`` → ``{"a": "1", "b": ["2", "3"]}``: one value as itself, several as a list."""
    return {k: vals if len(vals) > 1 else vals[0] for k, vals in parse_assignments(text, what).items()}
