"""The noise settings a flow evaluates its models under (finite shots, depolarizing noise, a fake
device's calibrated noise) as parameter fields with their checks: the noise groups of the
flows' parameter models. Light (no Qiskit), like every module of :mod:`lab.params`; the
evaluation itself is :mod:`lab.noise`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from qcore.devices import FAKE_DEVICES

from . import Options, items_between, one_of, refuse_unused


@dataclass(frozen=True)
class NoiseSetting:
    """One column of the ablation: a label, the `aer` options, and a number for the x axis."""

    label: str
    kind: str  # "shots", "depolarizing" or "device"
    options: dict[str, Any]
    level: float  # shots for "shots", p for "depolarizing", 0 for "device"


def noise_settings(
    shots: list[int], depolarizing: list[float], devices: list[str], device_shots: int
) -> list[NoiseSetting]:
    """Finite shots alone, depolarizing ``p`` after every gate (exact expectations), and each
    fake device's calibrated noise with ``device_shots`` shots."""
    out = [NoiseSetting(f"shots={s}", "shots", {"shots": s}, s) for s in shots]
    out += [NoiseSetting(f"depolarizing={p:g}", "depolarizing", {"depolarizing": p}, p) for p in depolarizing]
    out += [
        NoiseSetting(f"{d}+shots={device_shots}", "device", {"noise": d, "shots": device_shots}, 0.0) for d in devices
    ]
    return out


# The noise fields' bounds, for their schema and their checks: shots >= 1, 0 < p <= 1.
MIN_SHOTS = 1
DEPOLARIZING = (0, 1)


def shots_field(default: list[int]) -> Any:
    """The ``noise_shots`` field (a flow's own default)."""
    return Field(
        default, description="noise ablation: shot counts (empty: skip)", json_schema_extra=items_between(MIN_SHOTS)
    )


def depolarizing_field(default: list[float]) -> Any:
    """The ``noise_depolarizing`` field."""
    return Field(
        default,
        description="noise ablation: depolarizing p after every gate, 0 < p <= 1 (empty: skip)",
        json_schema_extra=items_between(*DEPOLARIZING, integer=False, low_exclusive=True),
    )


def devices_field(default: list[str]) -> Any:
    """The ``noise_devices`` field: a dropdown of the fake devices per item."""
    return Field(
        default,
        description="noise ablation: IBM fake backends (empty: skip)",
        json_schema_extra=one_of(FAKE_DEVICES, each=True),
    )


class NoiseChecks(Options):
    """The checks of the noise fields, without the fields: :class:`NoiseOptions` and the head's
    fields declare them with their own defaults (and the head where its form wants them, since
    pydantic places a field where it is first declared)."""

    @field_validator("noise_shots", check_fields=False)
    @classmethod
    def _positive_shots(cls, v: list[int]) -> list[int]:
        if bad := [s for s in v if s < MIN_SHOTS]:
            raise ValueError(f"shot counts {bad} are invalid; give positive integers")
        return v

    @field_validator("noise_depolarizing", check_fields=False)
    @classmethod
    def _probabilities(cls, v: list[float]) -> list[float]:
        low, high = DEPOLARIZING
        if bad := [p for p in v if not low < p <= high]:
            raise ValueError(f"depolarizing probabilities {bad} are invalid; allowed 0 < p <= 1")
        return v

    @model_validator(mode="after")
    def _settings_apply(self) -> Self:
        """The ablation's shared settings are refused when no setting reads them."""
        lists = {n: getattr(self, n) for n in ("noise_shots", "noise_depolarizing", "noise_devices")}
        if not lists["noise_devices"]:
            refuse_unused(self, ("device_shots",), "there are no noise_devices to use it; give noise_devices")
        if not any(lists.values()):
            refuse_unused(self, ("noise_samples",), "the noise ablation is off; give noise_shots or noise_devices")
        return self

    @field_validator("noise_devices", check_fields=False)
    @classmethod
    def _fake_backend(cls, v: list[str]) -> list[str]:
        if bad := [d for d in v if d not in FAKE_DEVICES]:
            raise ValueError(f"unknown fake backend(s) {bad}; allowed: {', '.join(FAKE_DEVICES)}")
        return v


class NoiseOptions(NoiseChecks):
    """The noise ablation of the flows whose models run their circuits in one process (peft,
    federated): cheap by default, since an adapter's circuits run once per setting and a VQC's
    once per sample. The PQC head's own fields (``HeadFields``) add more settings and fine-tuning."""

    noise_shots: list[int] = shots_field([1024])
    noise_depolarizing: list[float] = depolarizing_field([])
    noise_devices: list[str] = devices_field(["fake_torino"])
    device_shots: int = Field(1024, ge=1, description="shots under device noise")
    noise_samples: int = Field(200, ge=1, description="noise ablation: the first N test examples")

    def noise_settings(self) -> list[NoiseSetting]:
        return noise_settings(self.noise_shots, self.noise_depolarizing, self.noise_devices, self.device_shots)

    def check_device_qubits(self, qubits: int, what: str) -> None:
        """Refuse a device smaller than the largest circuit, ``qubits`` wide."""
        check_device_qubits(self.noise_devices, qubits, what)


def check_device_qubits(devices: list[str], qubits: int, what: str) -> None:
    """Refuse a device of ``devices`` smaller than ``what``, a circuit ``qubits`` wide."""
    for name in devices:
        if (size := FAKE_DEVICES[name]) < qubits:
            raise ValueError(f"{name} has {size} qubits; {what} needs {qubits}")
