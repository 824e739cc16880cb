"""The hardware flow's parameters (a trained quantum model run on an IBM quantum computer, or a
fake one offline): the ``qllm run hardware`` options, the Prefect UI form and ``prefect.yaml``.
The flow is :mod:`flows.hardware`."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from qcore.devices import FAKE_DEVICES

from . import Options, RunOptions, experiment

BACKEND_PATTERN = re.compile(r"^(fake_[a-z0-9_]+|ibm_[a-z0-9_]+|least_busy)$")
# The form's rule: one of the fake devices by name, an IBM device's name, or least_busy.
FORM_BACKENDS = "^(" + "|".join([*FAKE_DEVICES, "ibm_[a-z0-9_]+", "least_busy"]) + ")$"


class HardwareFields(Options):
    """The hardware flow's own parameters (before the run group in the form)."""

    run_id: str = Field(
        ...,
        min_length=1,
        description="MLflow run holding a trained quantum model (a child run of distill, head or study), "
        "or a registered one: models:/NAME@ALIAS (e.g. models:/qllm-qdllm-sst2@champion) or models:/NAME/VERSION",
    )
    backend: str = Field(
        "fake_torino",
        description="fake_DEVICE, e.g. fake_torino (offline: the runtime's local testing "
        "mode with that device's noise), ibm_NAME, e.g. ibm_torino, or least_busy",
        json_schema_extra={"pattern": FORM_BACKENDS},
    )
    primitive: Literal["sampler", "estimator"] = Field(
        "sampler",
        description="executor-based runtime primitive: sampler (⟨Z⟩ from counts; runs on "
        "every fake device) or estimator (resilience levels)",
    )
    shots: int = Field(1024, ge=1, le=100_000, description="shots per circuit")
    samples: int = Field(200, ge=1, le=100_000, description="test examples (a stratified sample of the test split)")
    sample_seed: int = Field(0, description="seed of the test sample")
    dataset: str | None = Field(
        None,
        description="data set of the test examples (default: the one the model was trained on, from its MLflow run)",
    )
    optimization_level: int = Field(2, ge=0, le=3, description="preset pass manager optimisation level")
    resilience_level: int = Field(
        1,
        ge=0,
        le=2,
        description="estimator: 0 none, 1 readout mitigation (TREX), 2 readout + zero-noise extrapolation",
    )
    dynamical_decoupling: Literal["XX", "XpXm", "XY4"] | None = Field(
        None, description="dynamical-decoupling sequence on idle qubits (None: off)"
    )
    twirling: bool = Field(False, description="Pauli-twirl gates and measurements")
    job_size: int = Field(100, ge=1, description="test examples per job; all jobs go in one Batch")
    max_qpu_seconds: float = Field(
        600.0, gt=0, description="refuse to submit when the estimated QPU time is above this, unless --confirm"
    )
    confirm: bool = Field(False, description="submit even above --max-qpu-seconds")
    dry_run: bool = Field(
        False, description="stop after transpiling: print the circuit metrics and the QPU-time estimate, submit nothing"
    )
    noisy_simulation: bool = Field(
        True,
        description="also simulate the same samples with Aer and the "
        "device's noise model (needs a fake twin of the device)",
    )
    timeout_seconds: float = Field(
        6 * 3600, gt=0, description="the QPU task's timeout (queue included); its retries resume the same jobs"
    )
    poll_max_seconds: float = Field(60.0, gt=0, description="longest wait between two job-status polls")


class HardwareParams(RunOptions, HardwareFields):
    """Parameters of the hardware flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    experiment: str = experiment("qllm-hardware")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if not BACKEND_PATTERN.match(v):
            raise ValueError(f"backend {v!r} is not fake_<device>, ibm_<name> or least_busy")
        if v.startswith("fake_") and v not in FAKE_DEVICES:
            raise ValueError(f"unknown fake backend {v!r}; available: {', '.join(FAKE_DEVICES)}")
        return v
