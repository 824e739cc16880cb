"""A local stand-in for IBM Quantum Platform, with the interface of ``qcore.hardware.service``.

The real service cannot be reached from here, and could not be made to fail a job on demand
anyway. This one keeps its jobs as files under ``$QLLM_STANDIN_DIR`` (so a killed process and a
fresh one see the same jobs, as with the real service), answers ``ibm_<name>`` with the fake twin
of that device, and ends each job as ``$QLLM_STANDIN_DIR/behaviour.json`` says:

    {"outcome": "DONE" | "ERROR" | "CANCELLED", "polls": <status polls before the job ends>,
     "error": "<message of a failed job>", "raise_polls": <polls that fail first, as in an outage>}

A job that ends DONE is run then, in the runtime's local testing mode on the fake twin.
Selected with ``QLLM_QPU_SERVICE=tests.qpu_standin:StandInService``.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qiskit.providers import BackendV2

from qcore.hardware.service import JobNotFoundError, LocalTestingService, Mitigation
from qcore.simulators.aer import fake_backend

DEVICES = {"ibm_torino": 3, "ibm_fez": 1, "ibm_manila": 0}  # name -> pending jobs (least_busy picks fez)


def folder() -> Path:
    return Path(os.environ["QLLM_STANDIN_DIR"])


def behaviour() -> dict[str, Any]:
    path = folder() / "behaviour.json"
    return {"outcome": "DONE", "polls": 1, "error": "", **(json.loads(path.read_text()) if path.exists() else {})}


def set_behaviour(**values: Any) -> None:
    folder().mkdir(parents=True, exist_ok=True)
    (folder() / "behaviour.json").write_text(json.dumps(values))


def submitted() -> list[str]:
    """Ids of every job ever submitted, oldest first."""
    log = folder() / "submitted.txt"
    return log.read_text().split() if log.exists() else []


class StandInJob:
    def __init__(self, path: Path):
        self._path = path

    def _state(self) -> dict[str, Any]:
        return pickle.loads(self._path.read_bytes())

    def _save(self, state: dict[str, Any]) -> None:
        # Atomic, as a real service's job store is: a client killed mid-poll must not leave half a job.
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(state))
        os.replace(tmp, self._path)

    def job_id(self) -> str:
        return self._path.stem

    def status(self) -> str:
        state = self._state()
        if state["status"] in ("DONE", "ERROR", "CANCELLED"):
            return state["status"]
        rule = behaviour()
        if state.get("raised", 0) < rule.get("raise_polls", 0):  # a transient outage of the service
            state["raised"] = state.get("raised", 0) + 1
            self._save(state)
            raise ConnectionError("503 Service Unavailable")
        state["polls"] += 1
        if state["polls"] >= rule["polls"]:
            state["status"] = rule["outcome"]
            state["error"] = rule["error"]
            if rule["outcome"] == "DONE":
                with LocalTestingService().batch(
                    fake_backend(state["device"]), state["primitive"], state["mitigation"]
                ) as submit:
                    state["result"] = submit(state["pubs"], state["shots"]).result()
        else:
            state["status"] = "RUNNING"
        self._save(state)
        return state["status"]

    def result(self) -> Any:
        return self._state()["result"]

    def error_message(self) -> str:
        return self._state()["error"] or "cancelled by the user"


class StandInService:
    is_local = False

    def __init__(self, *, token: str, instance: str | None):
        if token == "reject-me":  # a sign-in error that quotes the token, as some clients do
            raise PermissionError(f"401 Unauthorized: token {token} is not valid for {instance}")
        self.token = token  # held like the real client holds it; must never reach logs or MLflow

    def backend(self, name: str) -> BackendV2:
        if name not in DEVICES:
            raise ValueError(f"no backend {name}; this service has {sorted(DEVICES)}")
        device = fake_backend("fake_" + name.removeprefix("ibm_"))
        device.name = name  # type: ignore[misc]
        return device

    def least_busy(self, min_qubits: int) -> BackendV2:
        fits = [n for n in DEVICES if fake_backend("fake_" + n.removeprefix("ibm_")).num_qubits >= min_qubits]
        return self.backend(min(fits, key=DEVICES.__getitem__))

    @contextmanager
    def batch(self, backend: BackendV2, primitive: str, mitigation: Mitigation) -> Iterator[Any]:
        jobs = folder() / "jobs"
        jobs.mkdir(parents=True, exist_ok=True)

        def submit(pubs: list[Any], shots: int) -> StandInJob:
            path = jobs / f"{uuid.uuid4().hex}.pkl"
            job = StandInJob(path)
            job._save(
                {
                    "status": "QUEUED",
                    "polls": 0,
                    "pubs": pubs,
                    "shots": shots,
                    "primitive": primitive,
                    "mitigation": mitigation,
                    "device": "fake_" + backend.name.removeprefix("ibm_"),
                    "error": "",
                }
            )
            with open(folder() / "submitted.txt", "a") as log:
                log.write(job.job_id() + "\n")
            return job

        yield submit

    def job(self, job_id: str) -> StandInJob:
        path = folder() / "jobs" / f"{job_id}.pkl"
        if not path.exists():
            raise JobNotFoundError(f"no job {job_id}")
        return StandInJob(path)
