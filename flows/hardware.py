"""The hardware flow: a trained quantum model (QD-LLM student or PQC head) from any MLflow run,
run on an IBM quantum computer — or a fake one offline — beside the exact and the noisy simulation
of the same test samples.

    text → teacher features → classical part (local) → angles ─┐
    trained circuit → transpiled once to the device's ISA ─────┴→ one binding per sample
    → Batch of executor-based Sampler/Estimator jobs (ids written before waiting) → ⟨Z⟩ → logits

Nothing is submitted before every check has passed: backend name, credentials, the run and its
model, the model's width against the device, and the QPU-time budget.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lab import reporting, tracking
from lab.artifacts import hash_json, upload_folder
from lab.data import load_dataset
from lab.hardware import Ledger, SourceRun, chunks, load_source
from lab.params.hardware import HardwareParams
from lab.params.noise import NoiseSetting
from lab.runtime import Runtime
from lab.teacher import TeacherSpec, teacher_features
from qcore.hardware.plan import build_plan
from qcore.hardware.service import HardwareError, Mitigation, QPUService
from qcore.simulators.aer import fake_backend, fake_backend_names
from tasks.hardware import credentials, run_on_qpu, service_for
from tasks.train import evaluate_under_noise

from .runner import CRASH_HOOKS, check_dask_address, dask_runner, flow_run_tags, mlflow_hint, run_from_cli

# Offline, the executor Estimator's boxes touch every qubit of the device: 16 qubits already take
# about 25 s per binding here, 27 do not fit in memory.
LOCAL_ESTIMATOR_QUBITS = 16


def mitigation(params: HardwareParams) -> Mitigation:
    """The error mitigation ``params`` ask for (resilience levels apply to the estimator only)."""
    return Mitigation(
        resilience_level=params.resilience_level if params.primitive == "estimator" else 0,
        dynamical_decoupling=params.dynamical_decoupling,
        twirling=params.twirling,
    )


def ledger_key(params: HardwareParams, source: SourceRun) -> str:
    """Same model, samples and circuit settings → same jobs (a re-run resumes them)."""
    fields = (
        "backend",
        "primitive",
        "shots",
        "samples",
        "sample_seed",
        "dataset",
        "optimization_level",
        "job_size",
    )
    return hash_json(
        {
            "weights": source.weights_hash,
            "mitigation": dataclasses.asdict(mitigation(params)),
            **{k: getattr(params, k) for k in fields},
        }
    )


def check_hardware(params: HardwareParams) -> None:
    """The cheap refusals, before any server starts: credentials and the run's model."""
    if not params.backend.startswith("fake_"):
        credentials()
    qubits = load_source(params.run_id, Runtime()).model.hardware_layer.circuit.num_qubits
    if params.backend.startswith("fake_"):
        check_device(params, fake_backend(params.backend), qubits, local=True)


@dataclasses.dataclass(frozen=True)
class TestSample:
    features: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]


def sample_test_set(source: SourceRun, params: HardwareParams) -> TestSample:
    """``samples`` stratified test examples, as the model's features."""
    name = params.dataset or source.data.get("dataset")
    if not name:
        raise HardwareError(f"run {source.run_id} does not say which data set it was trained on; pass --dataset")
    data = load_dataset(
        name,
        test_size=params.samples,
        seed=params.sample_seed,
        text_column=source.data.get("text_column"),
        label_column=source.data.get("label_column"),
    )
    if tuple(data.label_names) != source.label_names:
        raise HardwareError(
            f"data set {name} has labels {list(data.label_names)}; the model was trained on {list(source.label_names)}"
        )
    spec = TeacherSpec(**source.teacher)
    return TestSample(
        teacher_features(spec, source.label_names, data.test_texts), np.asarray(data.test_labels), source.label_names
    )


def resolve_backend(service: QPUService, params: HardwareParams, ledger: Ledger, qubits: int) -> Any:
    """The device: the ledger's (a resumed least_busy run returns to its jobs' device), else by
    name; refused when the model is wider than the device."""
    name = ledger.backend or params.backend
    backend = service.least_busy(qubits) if name == "least_busy" else service.backend(name)
    check_device(params, backend, qubits, local=service.is_local)
    return backend


def check_device(params: HardwareParams, backend: Any, qubits: int, *, local: bool) -> None:
    """Refuse a device narrower than the model's circuit, or, offline, one too wide for the
    executor Estimator's local testing mode, which simulates every qubit of the device."""
    if local and params.primitive == "estimator" and backend.num_qubits > LOCAL_ESTIMATOR_QUBITS:
        raise HardwareError(
            f"the executor Estimator's local testing mode simulates every qubit of the "
            f"device ({backend.num_qubits} on {backend.name}): use --primitive sampler, "
            f"or a fake device of at most {LOCAL_ESTIMATOR_QUBITS} qubits"
        )
    if backend.num_qubits < qubits:
        raise HardwareError(
            f"{backend.name} has {backend.num_qubits} qubits; this model's circuit needs "
            f"{qubits}. Pick a larger device (e.g. fake_torino, 133 qubits) or a narrower model."
        )


def noisy_twin(backend_name: str) -> str | None:
    """The fake device whose calibrated noise stands for ``backend_name`` (ibm_torino → fake_torino)."""
    twin = "fake_" + backend_name.removeprefix("ibm_").removeprefix("fake_")
    return twin if twin in fake_backend_names() else None


@flow(
    name="hardware",
    task_runner=dask_runner(),
    log_prints=True,
    on_crashed=CRASH_HOOKS,
)
def hardware(params: HardwareParams) -> dict[str, Any]:
    """Run a trained quantum model on a (fake) IBM backend; compare with exact and noisy simulation."""
    check_dask_address(params.dask_address)
    log = get_run_logger()
    settings = Runtime()
    source = load_source(params.run_id, settings)
    model = source.model
    service = service_for(params.backend)
    ledger = Ledger.open(settings.artifact_root, ledger_key(params, source))
    layer = model.hardware_layer
    backend = resolve_backend(service, params, ledger, layer.circuit.num_qubits)
    ledger.backend = backend.name
    test = sample_test_set(source, params)
    features = torch.as_tensor(test.features, dtype=torch.float32)
    with torch.inference_mode():
        angles = model.angles(features)
        exact_z = layer(angles).real.numpy()
    plan = build_plan(
        layer, angles.numpy(), backend, primitive=params.primitive, optimization_level=params.optimization_level
    )
    jobs = len(chunks(plan.samples, params.job_size))
    seconds = plan.qpu_seconds(params.shots, jobs, noise_factors=mitigation(params).noise_factors(params.primitive))
    metrics = {
        "backend": backend.name,
        **plan.metrics.as_dict(),
        "circuits": plan.samples,
        "jobs": jobs,
        "shots": params.shots,
        "estimated_qpu_seconds": round(seconds, 1),
    }
    log.info(
        "%d circuits x %d shots in %d job(s) on %s: depth %d, %d two-qubit gates, %d qubits; estimated QPU time %.1f s",
        plan.samples,
        params.shots,
        jobs,
        backend.name,
        plan.metrics.depth,
        plan.metrics.two_qubit_gates,
        plan.metrics.qubits_used,
        seconds,
    )
    if params.dry_run:
        log.info("dry run: nothing submitted\n%s", reporting.rows_markdown([metrics]))
        return {"dry_run": True, "metrics": metrics}
    if not service.is_local and seconds > params.max_qpu_seconds and not params.confirm:
        raise HardwareError(
            f"estimated QPU time {seconds:.0f} s is above --max-qpu-seconds "
            f"{params.max_qpu_seconds:g}: pass --confirm to submit anyway, or fewer "
            "--samples / --shots"
        )

    noisy = _submit_noisy_simulation(params, model, test, backend.name, ledger)
    tags = {"flow": "hardware", "qllm.source_run": source.run_id, "qllm.backend": backend.name, **flow_run_tags()}
    if params.run_id != source.run_id:  # a registered model: the reference as given, beside its run
        tags["qllm.source_model"] = params.run_id
    name = tracking.run_name(
        "hardware", backend.name, f"run {source.run_id[:8]}", samples=plan.samples, shots=params.shots
    )
    with tracking.parent_run(
        settings, params.experiment, name, params.model_dump(exclude={"dask_address"}), tags=tags
    ) as run:

        def record_job_ids(ids: list[str]) -> None:
            tracking.set_tags(run, {"qllm.job_ids": ",".join(ids)[:5000]})
            tracking.log_file(run, f"{ledger.url}/jobs.json")

        hw_z = run_on_qpu.with_options(timeout_seconds=params.timeout_seconds)(
            plan,
            service,
            backend,
            ledger,
            shots=params.shots,
            job_size=params.job_size,
            mitigation=mitigation(params),
            observables=list(layer.observables),
            on_job_ids=record_job_ids,
            poll_max_seconds=params.poll_max_seconds,
        )
        record_job_ids(ledger.job_ids())  # again: the ledger now holds every job's final state
        predictions = {
            "exact": _predict(model, exact_z),
            ("fake hardware" if service.is_local else "hardware"): _predict(model, hw_z),
        }
        if noisy is not None:
            label, futures = noisy
            predictions[label] = [
                p for c in sorted((f.result() for f in futures), key=lambda c: c["start"]) for p in c["noisy"]
            ]
        table = report_rows(predictions, test.labels, test.label_names, metrics)
        tracking.log_summary(table)
        tracking.log_table(run, table, "hardware.json")
        run_id = run.info.run_id
    create_table_artifact(
        key="hardware-results",
        table=table,
        description=f"{source.run_id} on {backend.name}: hardware vs exact vs noisy simulation",
    )
    md = reporting.rows_markdown(table)
    create_markdown_artifact(key="hardware-report", markdown=tracking.run_markdown(settings, run) + "\n\n" + md)
    return {
        "table": table,
        "markdown": md,
        "mlflow_run_id": run_id,
        "job_ids": ledger.job_ids(),
        "metrics": metrics,
        "ledger": ledger.url,
    }


def _submit_noisy_simulation(
    params: HardwareParams, model: Any, test: TestSample, backend: str, ledger: Ledger
) -> tuple[str, list[Any]] | None:
    """Aer with the device's noise model on the same samples, split over the Dask workers."""
    twin = noisy_twin(backend)
    if not params.noisy_simulation:
        return None
    if twin is None:
        get_run_logger().warning("no fake twin of %s: the noisy simulation is skipped", backend)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        model_url = upload_folder(model.save(Path(tmp) / "model"), f"{ledger.url}/model")
    setting = NoiseSetting(
        f"noisy simulation ({twin}, {params.shots} shots)", "device", {"noise": twin, "shots": params.shots}, 0.0
    )
    return setting.label, evaluate_under_noise(
        model_url,
        test.features,
        test.labels,
        setting,
        len(test.labels),
        Runtime().dask_workers,
        seed=params.sample_seed,
    )


def _predict(model: Any, z: np.ndarray) -> list[int]:
    with torch.inference_mode():
        return model.readout(torch.as_tensor(z)).argmax(-1).tolist()


def report_rows(
    predictions: dict[str, list[int]], labels: np.ndarray, names: tuple[str, ...], metrics: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per setting: accuracy, per-class accuracy, agreement with exact, circuit cost."""
    exact = np.asarray(predictions["exact"])
    rows = []
    for setting, predicted in predictions.items():
        pred = np.asarray(predicted)
        row: dict[str, Any] = {"model": setting, "samples": len(labels), "accuracy": float((pred == labels).mean())}
        for c, name in enumerate(names):
            mask = labels == c
            row[f"accuracy.{name}"] = float((pred[mask] == c).mean()) if mask.any() else float("nan")
        row["agreement_with_exact"] = float((pred == exact).mean())
        if setting in ("hardware", "fake hardware"):  # the circuit the QPU ran
            row.update({k: metrics[k] for k in ("backend", "depth", "two_qubit_gates", "qubits_used")})
        rows.append(row)
    return rows


def run_hardware(params: HardwareParams) -> dict[str, Any]:
    """Run the flow from the command line and print the report (refusals come before any server)."""
    check_hardware(params)
    result = run_from_cli(hardware, params)
    if result.get("dry_run"):
        print(reporting.rows_markdown([result["metrics"]]))
        return result
    print(result["markdown"])
    print(f"\njobs {', '.join(result['job_ids']) or '(local)'}; ledger {result['ledger']}/jobs.json")
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
