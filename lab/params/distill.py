"""The distill flow's parameters (QD-LLM: a teacher LLM distilled into quantum students): the
``qllm run distill`` options, the Prefect UI form and ``prefect.yaml``. The method is
:mod:`lab.methods.qdllm`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from qcore.devices import FAKE_DEVICES

from ..data import DataRequest
from . import DataOptions, Options, RunOptions, experiment, items_between, one_of, refuse_unused
from .noise import NoiseSetting

MAX_QUBITS = 20
# Each item of these list fields (a list sweeps) lies in its range: the schema and the validator.
RANGES = {"qubits": (2, MAX_QUBITS), "blocks": (1, 20), "alpha": (0, 1)}


class DistillFields(Options):
    """The distill flow's own parameters (between the data and the run groups in the form)."""

    train_size: int | None = Field(2000, ge=2, description="training examples (stratified subsample)")
    test_size: int | None = Field(None, ge=1, description="test examples (None: the whole test split)")
    split_seed: int = Field(0, description="seed of the split and subsampling")
    teacher: Literal["probe", "hf-classifier", "causal-lm"] = Field(
        "probe", description="teacher kind: probe (frozen MiniLM + logistic regression), hf-classifier or causal-lm"
    )
    teacher_model: str | None = Field(
        None, description="teacher model name or folder (default: the embedded all-MiniLM-L6-v2)"
    )
    teacher_batch_size: int = Field(64, ge=1, description="teacher inference batch size")
    teacher_shard_size: int = Field(
        4000, ge=1, description="texts per teacher shard: larger sets are split across the Dask workers"
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds (one student each)")
    qubits: list[int] = Field(
        [11],
        min_length=1,
        description=f"student qubits, 2..{MAX_QUBITS} (a list sweeps)",
        json_schema_extra=items_between(*RANGES["qubits"]),
    )
    blocks: list[int] = Field(
        [2],
        min_length=1,
        description="QD-LLM ansatz blocks, 1..20 (a list sweeps)",
        json_schema_extra=items_between(*RANGES["blocks"]),
    )
    circuit: Literal["quantum", "classical"] = Field(
        "quantum", description="the circuit, or a classical MLP of as many parameters in its place (the ablation)"
    )
    alpha: list[float] = Field(
        [0.5],
        min_length=1,
        description="distillation weight α in [0, 1] (a list sweeps)",
        json_schema_extra=items_between(*RANGES["alpha"], integer=False),
    )
    temperature: float = Field(2.0, gt=0, description="distillation temperature T")
    logreg_c: float = Field(
        1.0, gt=0, le=1e4, description="the logistic-regression baseline's inverse L2 regularisation C"
    )
    epochs: int = Field(10, ge=1, le=1000, description="training epochs")
    batch_size: int = Field(32, ge=1, description="training batch size")
    lr: float = Field(
        0.01,
        gt=0,
        le=1,
        description="Adam learning rate (the classical layers', and the circuit's unless circuit_lr is given)",
    )
    circuit_lr: float | None = Field(
        None, gt=0, le=1, description="Adam learning rate of the circuit's angles (None: lr)"
    )
    backend: Literal["exact", "aer"] = Field(
        "exact", description="training simulator: exact (autograd) or aer (parameter shift, noise-aware)"
    )
    shots: int | None = Field(None, ge=1, description="aer training: shots per circuit (None: exact expectations)")
    noise: str | None = Field(
        None,
        description="aer training: IBM fake backend whose noise to train under",
        json_schema_extra=one_of(FAKE_DEVICES, optional=True),
    )
    eval_shots: int | None = Field(1024, ge=1, description="noisy evaluation: shots (None: skip)")
    eval_noise: str | None = Field(
        "fake_torino",
        description="noisy evaluation: IBM fake backend (None: skip)",
        json_schema_extra=one_of(FAKE_DEVICES, optional=True),
    )
    eval_samples: int = Field(200, ge=1, description="test examples in the shots evaluation")
    noise_samples: int = Field(
        200,
        ge=1,
        description="test examples in the device-noise evaluation (0.3-0.5 CPU s each at 11 qubits on fake_torino)",
    )


class DistillParams(RunOptions, DistillFields, DataOptions):
    """Parameters of the distill flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    # The parameters a study may not sweep (:mod:`lab.params.study`).
    not_axes: ClassVar[tuple[str, ...]] = (
        "seeds",
        "experiment",
        "dask_address",
        "teacher_batch_size",
        "teacher_shard_size",
        "eval_shots",
        "eval_noise",
        "eval_samples",
        "noise_samples",
    )
    experiment: str = experiment("qllm-distill")

    @field_validator("qubits", "blocks", "alpha")
    @classmethod
    def _in_range(cls, v: list[float], info: ValidationInfo) -> list[float]:
        lo, hi = RANGES[str(info.field_name)]
        bad = [x for x in v if not lo <= x <= hi]
        if bad:
            raise ValueError(f"{info.field_name} {bad} out of range; allowed {lo}..{hi}")
        return v

    @field_validator("noise", "eval_noise")
    @classmethod
    def _fake_backend(cls, v: str | None) -> str | None:
        if v is not None and v not in FAKE_DEVICES:
            raise ValueError(f"unknown fake backend {v!r}; allowed: {', '.join(FAKE_DEVICES)}")
        return v

    @model_validator(mode="after")
    def _all_apply(self) -> DistillParams:
        """Options the chosen backend or evaluations would ignore are refused, naming the switch."""
        if self.backend == "exact":
            refuse_unused(self, ("shots", "noise"), "they apply to aer training only; give backend=aer")
        if self.eval_noise is None:
            refuse_unused(self, ("noise_samples",), "the device-noise evaluation is off; give eval_noise")
        if self.eval_shots is None:
            refuse_unused(self, ("eval_samples",), "the shots evaluation is off; give eval_shots")
        return self

    @model_validator(mode="after")
    def _device_fits(self) -> DistillParams:
        for name in {self.noise, self.eval_noise} - {None}:
            size = FAKE_DEVICES[str(name)]
            if max(self.qubits) > size:
                raise ValueError(f"{name} has {size} qubits; a {max(self.qubits)}-qubit student does not fit")
        return self

    def data_request(self) -> DataRequest:
        """Which data set, split and sizes the students learn and are tested on."""
        return DataRequest(
            self.dataset, self.train_size, self.test_size, self.split_seed, self.text_column, self.label_column
        )

    def check_data(self) -> None:
        """Read and split the data set: bad names, paths, columns, labels or sizes fail here."""
        self.data_request().load()

    def noisy_evaluations(self) -> list[tuple[NoiseSetting, int]]:
        """The noisy evaluations of the first student, each with its number of test samples."""
        out = []
        if self.eval_shots:
            out.append(
                (
                    NoiseSetting(f"shots={self.eval_shots}", "shots", {"shots": self.eval_shots}, self.eval_shots),
                    self.eval_samples,
                )
            )
        if self.eval_noise:
            shots = self.eval_shots or 1024
            out.append(
                (
                    NoiseSetting(
                        f"{self.eval_noise}+shots={shots}", "device", {"noise": self.eval_noise, "shots": shots}, 0.0
                    ),
                    self.noise_samples,
                )
            )
        return out
