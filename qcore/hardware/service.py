"""The small interface the hardware flow needs from a quantum service, and its two
implementations: IBM Quantum Platform through qiskit-ibm-runtime, and the runtime's local testing
mode on fake devices (offline, with the device's noise).

Anything with the same four methods — ``backend``, ``least_busy``, ``batch`` and ``job`` — can
stand in for the service (``QLLM_QPU_SERVICE=module:factory``): the tests use a folder-backed one
to rehearse failed, cancelled and interrupted jobs, which the real service cannot be made to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from qiskit.primitives import PrimitiveResult
from qiskit.providers import BackendV2

from .plan import Primitive

JobStatus = Literal["QUEUED", "RUNNING", "DONE", "ERROR", "CANCELLED"]
FINAL_STATES = ("DONE", "ERROR", "CANCELLED")


class HardwareError(RuntimeError):
    """A refusal or failure on the way to a quantum computer, with what to do about it."""


class JobNotFoundError(HardwareError):
    """The service does not know a job id the ledger holds."""


@dataclass(frozen=True)
class Mitigation:
    """Error-mitigation options of the runtime primitives (keyword-only, all off by default
    except what the estimator's resilience level turns on)."""

    resilience_level: int = 1  # estimator only: 0 none, 1 readout (TREX), 2 readout + ZNE
    dynamical_decoupling: str | None = None  # None, or a sequence: XX, XpXm, XY4
    twirling: bool = False  # Pauli-twirl gates and measurements

    def noise_factors(self, primitive: Primitive) -> int:
        """How many times each binding runs: ZNE (level 2) folds gates at three noise factors."""
        return 3 if primitive == "estimator" and self.resilience_level >= 2 else 1


class QPUJob(Protocol):
    def job_id(self) -> str: ...
    def status(self) -> JobStatus: ...
    def result(self) -> PrimitiveResult: ...
    def error_message(self) -> str: ...


Submit = Callable[[list[Any], int], QPUJob]  # (pubs, shots) -> submitted job


class QPUService(Protocol):
    is_local: bool  # True when nothing leaves this machine (no QPU time, no credentials)

    def backend(self, name: str) -> BackendV2: ...
    def least_busy(self, min_qubits: int) -> BackendV2: ...
    def batch(
        self, backend: BackendV2, primitive: Primitive, mitigation: Mitigation
    ) -> AbstractContextManager[Submit]: ...
    def job(self, job_id: str) -> QPUJob: ...


def make_primitive(primitive: Primitive, mode: Any, mitigation: Mitigation) -> Any:
    """The runtime's executor-based Sampler or Estimator (what qiskit-ibm-runtime ≥ 0.50
    recommends over the deprecated server-side V2 primitives), with the mitigation options."""
    if primitive == "estimator":
        from qiskit_ibm_runtime.executor_estimator import Estimator

        prim = Estimator(mode=mode)
        prim.options.resilience_level = mitigation.resilience_level
    else:
        from qiskit_ibm_runtime.executor_sampler import Sampler

        prim = Sampler(mode=mode)
    if mitigation.dynamical_decoupling:
        prim.options.dynamical_decoupling.enable = True
        prim.options.dynamical_decoupling.sequence_type = mitigation.dynamical_decoupling
    prim.options.twirling.enable_gates = mitigation.twirling
    prim.options.twirling.enable_measure = mitigation.twirling
    return prim


def run_primitive(prim: Any, primitive: Primitive, pubs: list[Any], shots: int) -> Any:
    if primitive == "estimator":
        prim.options.default_shots = shots
        return prim.run(pubs)
    return prim.run(pubs, shots=shots)


_STATUS = {
    "INITIALIZING": "QUEUED",
    "QUEUED": "QUEUED",
    "VALIDATING": "QUEUED",
    "RUNNING": "RUNNING",
    "DONE": "DONE",
    "ERROR": "ERROR",
    "CANCELLED": "CANCELLED",
}


class RuntimeJob:
    """A qiskit-ibm-runtime job (remote or local) behind the :class:`QPUJob` interface."""

    def __init__(self, job: Any):
        self._job = job

    def job_id(self) -> str:
        return str(self._job.job_id())

    def status(self) -> JobStatus:
        raw = self._job.status()
        name = getattr(raw, "name", str(raw)).upper()
        return _STATUS.get(name, "RUNNING")  # type: ignore[return-value]

    def result(self) -> PrimitiveResult:
        return self._job.result()

    def error_message(self) -> str:
        message = getattr(self._job, "error_message", None)
        return str(message() if callable(message) else message or "no reason given")


class IBMRuntimeService:
    """IBM Quantum Platform (channel ``ibm_quantum_platform``). The token is handed to
    qiskit-ibm-runtime and kept nowhere else: not in this object's repr, not in errors."""

    is_local = False

    def __init__(self, token: str, instance: str | None):
        from qiskit_ibm_runtime import QiskitRuntimeService

        try:
            self._service = QiskitRuntimeService(channel="ibm_quantum_platform", token=token, instance=instance)
        except Exception as exc:  # noqa: BLE001 - the account error may quote the token
            raise HardwareError(
                "could not sign in to IBM Quantum Platform with QISKIT_IBM_TOKEN / "
                f"QISKIT_IBM_INSTANCE: {redact(str(exc), token)}"
            ) from None

    def backend(self, name: str) -> BackendV2:
        return self._service.backend(name)

    def least_busy(self, min_qubits: int) -> BackendV2:
        return self._service.least_busy(min_num_qubits=min_qubits, operational=True, simulator=False)

    @contextmanager
    def batch(self, backend: BackendV2, primitive: Primitive, mitigation: Mitigation) -> Iterator[Submit]:
        from qiskit_ibm_runtime import Batch

        with Batch(backend=backend) as batch:
            prim = make_primitive(primitive, batch, mitigation)
            yield lambda pubs, shots: RuntimeJob(run_primitive(prim, primitive, pubs, shots))

    def job(self, job_id: str) -> QPUJob:
        from qiskit_ibm_runtime import RuntimeJobNotFound

        try:
            return RuntimeJob(self._service.job(job_id))
        except RuntimeJobNotFound as exc:
            raise JobNotFoundError(f"IBM Quantum has no job {job_id}: {exc}") from None


class LocalTestingService:
    """The runtime's local testing mode: fake devices simulated by Aer with their calibrated
    noise. Jobs live in this process only, so an interrupted run simply simulates again."""

    is_local = True

    def __init__(self) -> None:
        self._jobs: dict[str, RuntimeJob] = {}

    def backend(self, name: str) -> BackendV2:
        from qcore.simulators.aer import fake_backend

        return fake_backend(name)

    def least_busy(self, min_qubits: int) -> BackendV2:
        raise HardwareError(
            "least_busy picks among real IBM backends: set QISKIT_IBM_TOKEN, or name a fake backend such as fake_torino"
        )

    @contextmanager
    def batch(self, backend: BackendV2, primitive: Primitive, mitigation: Mitigation) -> Iterator[Submit]:
        from qiskit_ibm_runtime import Batch

        with Batch(backend=backend) as batch:
            prim = make_primitive(primitive, batch, mitigation)

            def submit(pubs: list[Any], shots: int) -> QPUJob:
                job = RuntimeJob(run_primitive(prim, primitive, pubs, shots))
                self._jobs[job.job_id()] = job
                return job

            yield submit

    def job(self, job_id: str) -> QPUJob:
        if job_id not in self._jobs:
            raise JobNotFoundError(f"local job {job_id} ended with the process that ran it")
        return self._jobs[job_id]


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret (and any ``token=...`` value) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(?i)(token['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+", r"\1***", text)
