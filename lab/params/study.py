"""The study flow's parameters (a grid of configurations × seeds of one feature method): the
``qllm run study`` options, the Prefect UI form and ``prefect.yaml``. Every grid axis is a
parameter of the method's own flow, checked by its parameter model (light, like this one); the
flow is :mod:`flows.study`."""

from __future__ import annotations

import itertools
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from . import Options, RunOptions, experiment, parse_assignments, parse_values
from .distill import DistillParams
from .head import HeadParams

# The ``--method`` value → the parameters of the method's flow (:data:`flows.study.STUDY_METHODS`
# names the method of each).
STUDY_PARAMS: dict[str, type[HeadParams] | type[DistillParams]] = {"head": HeadParams, "distill": DistillParams}


class StudyFields(Options):
    """The study flow's own parameters (before the run group in the form)."""

    method: Literal["head", "distill"] = Field("head", description="the method whose flow parameters the grid sweeps")
    grid: dict[str, list[Any]] = Field(
        {"qubits": [4, 6, 8, 10, 12]},
        description='axes and values, e.g. "qubits=4,6,8;layers=1,2": every '
        "combination is one point; the first axis is the plot's x axis",
    )
    seeds: int = Field(5, ge=1, le=100, description="seeds per point (0 … seeds-1)")
    fixed: dict[str, Any] = Field(
        {}, description='other method parameters, the same for every point, e.g. "per_label=64;epochs=20"'
    )
    metric: Literal["accuracy", "macro_f1", "train_seconds"] = Field(
        "accuracy", description="the metric plotted against the grid axis"
    )


class StudyParams(RunOptions, StudyFields):
    """Parameters of the study flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    experiment: str = experiment("qllm-study")

    @field_validator("grid", mode="before")
    @classmethod
    def _parse_grid(cls, v: Any) -> Any:
        return parse_assignments(v, "grid") if isinstance(v, str) else v

    @field_validator("fixed", mode="before")
    @classmethod
    def _parse_fixed(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return parse_values(v, "fixed")

    @model_validator(mode="after")
    def _points_valid(self) -> StudyParams:
        """Every axis is a parameter of the method and every point validates: refused up front."""
        model = STUDY_PARAMS[self.method]
        fields = model.model_fields
        allowed = sorted(set(fields) - set(model.not_axes))
        if not self.grid:
            raise ValueError("the grid is empty; give at least one axis, e.g. qubits=4,6,8")
        for name in list(self.grid) + list(self.fixed):
            if name not in allowed:
                raise ValueError(
                    f"{name!r} is not a parameter a {self.method} study can set; allowed: {', '.join(allowed)}"
                )
        if overlap := set(self.grid) & set(self.fixed):
            raise ValueError(f"{sorted(overlap)} given both as grid axes and as fixed")
        for name, values in self.grid.items():
            if not values:
                raise ValueError(f"grid axis {name!r} has no values")
        self.point_params()  # raises, naming the field and value, if any point is invalid
        return self

    def check_data(self) -> None:
        """Every data set the points read, read and split once each: bad data fails here."""
        for request in {p.data_request() for p in self.point_params() if isinstance(p, HeadParams | DistillParams)}:
            request.load()

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the axes' values, in grid order."""
        names = list(self.grid)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.grid.values())]

    def point_params(self) -> list[BaseModel]:
        """The method's parameters at each point (seeds 0 … seeds-1; list fields get one value)."""
        model = STUDY_PARAMS[self.method]
        out: list[BaseModel] = []
        for point in self.points():
            values = {**self.fixed, **point}
            values = {k: _as_field_value(model, k, v) for k, v in values.items()}
            try:
                out.append(model.model_validate({**values, "seeds": list(range(self.seeds))}))
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'point'}: {e['msg']} (got {e.get('input')!r})"
                    for e in err.errors()
                )
                raise ValueError(f"point {point}: {problems}") from None
        return out


def _as_field_value(model: type[BaseModel], name: str, value: Any) -> Any:
    """A grid value for a field: one-element lists for the list-typed fields that sweep in the
    method's own flow (e.g. distill's ``qubits``), ``None`` from the text ``none``."""
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    annotation = model.model_fields[name].annotation
    is_list = typing.get_origin(annotation) is list
    if is_list and isinstance(value, str):
        return [v for v in value.split(",") if v]
    if is_list and not isinstance(value, list):
        return [value]
    return value
