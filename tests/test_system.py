"""The operations story against real servers on loopback: a Prefect server, an MLflow server on
SQLite with artifacts in a moto S3, and a Dask scheduler with two workers. Every flow is deployed
with `prefect deploy --all` from infra/prefect.yaml, a Prefect worker picks up distill runs
triggered through the API (as the UI's Run button does), and the run must land on the external
Dask workers, in MLflow and in S3; a second trigger must reuse every cache; a federated run goes
the same way; the planted S3 secret must appear nowhere; and MLflow logging must survive the
tracking server or S3 going away for a moment."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from servers import BIN, Gate, Proc, S3Server, clean_env, free_port, http_ok, start, stop, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "qllm-system"
SECRET = f"planted-secret-{uuid.uuid4().hex}"
POOL = "qllm"
TINY = dict(
    dataset="sst2",
    train_size=40,
    test_size=20,
    seeds=[0],
    qubits=[3],
    blocks=[1],
    epochs=1,
    eval_shots=None,
    eval_noise=None,
    experiment="system-distill",
)


@dataclass
class Stack:
    tmp: Path
    s3: S3Server
    api: str
    mlflow_uri: str
    mlflow_cmd: list[str]
    dask: str
    env: dict[str, str]  # what every process running qllm-lab code gets
    procs: list[Proc] = field(default_factory=list)

    def s3_client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3.url,
            aws_access_key_id="system-test",
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )

    def objects(self) -> dict[str, Any]:
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    s3 = S3Server(free_port())
    s3.start()
    api_port, mlflow_port, dask_port = free_port(), free_port(), free_port()
    s3_env = {
        "AWS_ACCESS_KEY_ID": "system-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "QLLM_S3_ENDPOINT_URL": s3.url,
        "MLFLOW_S3_ENDPOINT_URL": s3.url,
    }
    api = f"http://127.0.0.1:{api_port}/api"
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    dask = f"tcp://127.0.0.1:{dask_port}"
    env = clean_env(
        **s3_env,
        PREFECT_API_URL=api,
        PREFECT_HOME=str(tmp / "prefect-client"),
        QLLM_ARTIFACT_ROOT=f"s3://{BUCKET}/artifacts",
        QLLM_MLFLOW_URI=mlflow_uri,
        QLLM_DASK_ADDRESS=dask,
        HF_HUB_OFFLINE="1",
    )
    mlflow_cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(mlflow_port),
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{BUCKET}/mlflow",
        "--workers",
        "1",
    ]
    st = Stack(tmp, s3, api, mlflow_uri, mlflow_cmd, dask, env)
    try:
        st.s3_client().create_bucket(Bucket=BUCKET)
        st.procs.append(
            start(
                "prefect-server",
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
                clean_env(
                    PREFECT_HOME=str(tmp / "prefect-server"),
                    PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
                    PREFECT_UI_API_URL=api,  # the UI's pages call the API here, not on the default port
                ),
                tmp,
            )
        )
        st.procs.append(start("mlflow", mlflow_cmd, clean_env(**s3_env), tmp))
        st.procs.append(
            start(
                "dask-scheduler",
                [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(dask_port), "--no-dashboard"],
                env,
                tmp,
            )
        )
        for i in (1, 2):
            st.procs.append(
                start(
                    f"dask-worker-{i}",
                    [
                        str(BIN / "dask"),
                        "worker",
                        dask,
                        "--name",
                        f"w{i}",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    env,
                    tmp,
                )
            )
        wait_until(http_ok(f"{api}/health"), st.procs, 180, "Prefect server")
        wait_until(http_ok(f"{mlflow_uri}/health"), st.procs, 180, "MLflow server")
        wait_until(lambda: len(scheduler_info(dask)["workers"]) == 2, st.procs, 180, "Dask workers")
        yield st
    finally:
        stop(st.procs)
        s3.stop()


def running(address: str) -> dict[str, list[str]]:
    """The tasks each worker of the scheduler at ``address`` is running, in the workers' own view:
    a task whose result was released is no longer processing for the scheduler, but its thread
    runs on (state ``cancelled``) until it returns."""
    from distributed import Client

    def on_worker(dask_worker: Any) -> list[str]:
        busy = ("executing", "long-running", "cancelled", "resumed")
        return [str(key) for key, task in dask_worker.state.tasks.items() if task.state in busy]

    with Client(address, timeout=30) as client:
        return dict(client.run(on_worker))


def scheduler_info(address: str) -> dict[str, Any]:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return client.scheduler_info(n_workers=-1)


def prefect(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``prefect`` command against the stack's server, from the repository root."""
    return subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=300,
    )


DEPLOYMENTS = [
    "distill/distill",
    "head/head",
    "peft/peft",
    "study/study",
    "federated/federated",
    "hardware/hardware",
    "tune/tune",
    "compare/nightly",
]


def deploy_all(stack: Stack) -> None:
    """``prefect deploy --all`` of infra/prefect.yaml, as its header says; every deployment exists."""
    done = prefect(stack, "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in DEPLOYMENTS:
        assert read(stack, "read_deployment_by_name", name=name).work_pool_name == POOL


@pytest.fixture(scope="module")
def runs(stack: Stack) -> list[Any]:
    """Deploy distill from infra/prefect.yaml, start a worker, trigger two identical runs."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The worker creates its process pool when it is missing; the deployment needs the pool.
    stack.procs.append(
        start(
            "prefect-worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
            {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "2"},
            stack.tmp,
            cwd=ROOT,
        )
    )
    wait_until(lambda: pool_exists(stack), stack.procs, 180, "the work pool")
    deploy_all(stack)
    done = []
    with temporary_settings({PREFECT_API_URL: stack.api}):
        for _ in range(2):
            t0 = time.monotonic()
            run = run_deployment("distill/distill", parameters={"params": TINY}, timeout=900, poll_interval=2)
            print(f"flow run {run.name}: {run.state.type.value} in {time.monotonic() - t0:.1f} s")
            done.append(run)
    return done


def pool_exists(stack: Stack) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        return read(stack, "read_work_pool", work_pool_name=POOL).type == "process"
    except ObjectNotFound:
        return False


def read(stack: Stack, what: str, **kw: Any) -> Any:
    """``client.<what>(**kw)`` against the stack's Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api}), get_client(sync_client=True) as client:
        return getattr(client, what)(**kw)


def run_logs(stack: Stack, run: Any, expect: str | None = None) -> list[str]:
    """The flow run's log messages, once its own last one ("Finished in state ...") is on the
    server (the flow's process sends logs in batches, after it reported the final state) and,
    if ``expect`` is given, one containing it: the tasks' logs come from the Dask workers'
    processes, which send theirs on their own schedule."""

    def messages() -> list[Any]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.client.schemas.sorting import LogSort

        logs: list[Any] = []
        while True:  # pages of the server's largest limit; limit and offset explicit, it refuses nulls
            page = read(
                stack,
                "read_logs",
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                limit=200,
                offset=len(logs),
                sort=LogSort.TIMESTAMP_ASC,
            )
            logs += page
            if len(page) < 200:
                return logs

    def arrived() -> bool:
        logs = messages()
        finished = any(log.task_run_id is None and log.message.startswith("Finished in state") for log in logs)
        return finished and (expect is None or any(expect in log.message for log in logs))

    wait_until(
        arrived, stack.procs, 120, f"the last log line of flow run {run.name}" + (f" and {expect!r}" * bool(expect))
    )
    return [log.message for log in messages()]


def test_deployment_renders_a_form(stack: Stack, runs: list[Any]) -> None:
    deployment = read(stack, "read_deployment_by_name", name="distill/distill")
    schema = deployment.parameter_openapi_schema
    assert list(schema["properties"]) == ["params"]
    form = schema["definitions"]["DistillParams"]["properties"]
    assert {"dataset", "seeds", "qubits", "epochs", "eval_noise"} <= set(form)
    assert deployment.work_pool_name == POOL and deployment.parameters["params"]["dataset"] == "sst2"


def test_every_form_labels_its_fields_in_words_and_keeps_its_placeholders(stack: Stack, runs: list[Any]) -> None:
    """The UI shows a field's title as its label and renders its description as HTML, so
    ``dirichlet:<alpha>`` lost its placeholder there and ``lr`` read "Lr"."""
    from lab.params import field_title

    titles: dict[str, str] = {}
    for name in DEPLOYMENTS:
        schema = read(stack, "read_deployment_by_name", name=name).parameter_openapi_schema
        for model in schema["definitions"].values():
            for key, spec in model.get("properties", {}).items():
                assert not re.search(r"<[A-Za-z/]", spec.get("description", "")), (name, key, spec["description"])
                titles[key] = spec["title"]
    assert all(title == field_title(key) for key, title in titles.items()), titles
    expected = {
        "lr": "Learning rate",
        "llm_model": "LLM model",
        "max_qpu_seconds": "Max QPU seconds",
        "run_id": "Run ID",
        "eval_noise": "Evaluation noise",
    }
    assert {k: titles[k] for k in expected} == expected


# Every rule the JSON schema carries, one bad value each: the Prefect UI validates the form
# against the deployment's schema at Submit (the server's /ui/schemas/validate).
FORM_RULES = [
    ("distill/distill", "qubits", [50]),
    ("distill/distill", "qubits", [1]),
    ("distill/distill", "blocks", [0]),
    ("distill/distill", "alpha", [3.0]),
    ("distill/distill", "eval_noise", "fake_nowhere"),
    ("distill/distill", "noise", "fake_nowhere"),
    ("head/head", "noise_devices", ["fake_nowhere"]),
    ("head/head", "noise_shots", [0]),
    ("head/head", "noise_depolarizing", [0.0]),
    ("head/head", "noise_depolarizing", [1.5]),
    ("peft/peft", "noise_devices", ["fake_torino", "fake_nowhere"]),
    ("federated/federated", "partition", ["dirichlet:0"]),
    ("federated/federated", "partition", ["dirichlet:x"]),
    ("federated/federated", "noise_devices", ["fake_nowhere"]),
    ("hardware/hardware", "backend", "fake_nowhere"),
    ("hardware/hardware", "backend", "torino"),
]
GOOD = [
    ("distill/distill", "qubits", [2, 20]),
    ("distill/distill", "eval_noise", None),
    ("head/head", "noise_depolarizing", [1.0]),
    ("federated/federated", "partition", ["iid", "dirichlet:0.5", "dirichlet:2e-3"]),
    ("hardware/hardware", "backend", "ibm_torino"),
    ("hardware/hardware", "backend", "least_busy"),
]


# What a deployment's form needs filled in: the hardware flow's MLflow run (no default).
REQUIRED = {"hardware/hardware": {"run_id": "0" * 32}}


def form_errors(stack: Stack, deployment: str, changes: dict[str, Any]) -> list[Any]:
    """The errors the server's form validation finds in the deployment's parameters with
    ``changes`` applied."""
    import httpx

    found = read(stack, "read_deployment_by_name", name=deployment)
    values = {"params": {**found.parameters.get("params", {}), **REQUIRED.get(deployment, {}), **changes}}
    reply = httpx.post(
        f"{stack.api}/ui/schemas/validate", json={"schema": found.parameter_openapi_schema, "values": values}
    )
    reply.raise_for_status()
    body = reply.json()
    assert body["valid"] is not bool(body["errors"]), body
    return body["errors"]


def test_forms_refuse_at_submit_what_the_command_line_refuses(stack: Stack, runs: list[Any]) -> None:
    for deployment in DEPLOYMENTS:  # each deployment's own parameters (and REQUIRED) pass its form
        assert form_errors(stack, deployment, {}) == [], deployment
    assert form_errors(stack, "hardware/hardware", {"run_id": None})  # no model named: refused
    for deployment, key, value in FORM_RULES:
        assert form_errors(stack, deployment, {key: value}), (deployment, key, value)
    for deployment, key, value in GOOD:
        assert form_errors(stack, deployment, {key: value}) == [], (deployment, key, value)


def test_runs_complete_on_the_external_dask_workers(stack: Stack, runs: list[Any]) -> None:
    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], [r.state.message for r in runs]
    from distributed import Client

    with Client(stack.dask, timeout=30) as client:
        keys = client.run(lambda dask_worker: sorted({e[0] for e in dask_worker.state.log if isinstance(e[0], str)}))
    ran = {worker: {k.rsplit("-", 1)[0] for k in worker_keys} for worker, worker_keys in keys.items()}
    assert len(ran) == 2
    assert {"train", "baselines"} <= set().union(*ran.values()), ran
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    tasks = read(
        stack,
        "read_task_runs",
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])),
        sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        limit=200,
    )  # explicit: the server refuses nulls
    assert tasks and {t.state.type.value for t in tasks} == {"COMPLETED"}


def test_mlflow_has_the_run_with_a_child_per_configuration(stack: Stack, runs: list[Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.mlflow_uri)
    exp = client.get_experiment_by_name(TINY["experiment"])
    parents = client.search_runs([exp.experiment_id], "tags.flow = 'distill'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    parent = parents[-1]
    assert parent.data.metrics and parent.data.params["train_size"] == "40"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = {c.info.run_name for c in children}
    assert names == {
        "student-q3-b1-a0.5-s0",
        "logistic regression s0",
        "MLP (labels only) s0",
        "classical distilled MLP s0",
    }, names
    assert all("test/accuracy" in c.data.metrics for c in children)
    student = next(c for c in children if c.data.tags.get("kind") == "quantum student")
    assert student.info.artifact_uri.startswith(f"s3://{BUCKET}/artifacts/mlruns/")


def test_artifacts_are_in_s3(stack: Stack, runs: list[Any]) -> None:
    keys = list(stack.objects())
    assert any(k.startswith("artifacts/students/") and k.endswith("/result.json") for k in keys), keys
    assert any(k.startswith("artifacts/teacher/") for k in keys), keys
    assert any(k.startswith("artifacts/mlruns/") and k.endswith("model/weights.safetensors") for k in keys), keys


def test_second_run_hits_the_caches(stack: Stack, runs: list[Any]) -> None:
    first = run_logs(stack, runs[0])
    assert not any("finished before, reusing" in m for m in first)
    run_logs(stack, runs[1], expect="finished before, reusing")  # fails unless the reuse is logged
    results = [o for k, o in stack.objects().items() if k.startswith("artifacts/students/")]
    written = max(o["LastModified"] for o in results)
    assert written < runs[1].start_time  # nothing was trained (or rewritten) by the second run


# What the browser test fills into the distill deployment's form: the small run above, in an
# experiment of its own (the tests above count the runs of TINY's).
BROWSER_RUN = {**TINY, "experiment": "system-browser"}
# What a flow's log says of its MLflow run.
MLFLOW_LINK = re.compile(r"MLflow run ([0-9a-f]{32}): (\S+#/experiments/\d+/runs/[0-9a-f]{32})")


def deployment_run_ids(stack: Stack, deployment_id: Any) -> set[Any]:
    """The ids of every flow run of the deployment."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    found = read(
        stack,
        "read_flow_runs",
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])),
        limit=200,
    )
    return {r.id for r in found}


def open_custom_run(page: Page, ui: str) -> None:
    """From the UI's front page: Deployments → distill → Run → Custom run."""
    page.goto(ui)
    page.get_by_role("link", name="Deployments", exact=True).click()
    page.get_by_role("link", name="distill", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()


def fill_small_run(page: Page) -> None:
    """Turn the form's deployment defaults into BROWSER_RUN, field by field."""
    from browser import form_field
    from playwright.sync_api import expect

    form_field(page, "Train size").get_by_role("spinbutton").fill(str(BROWSER_RUN["train_size"]))
    test_size = form_field(page, "Test size")
    test_size.get_by_role("tab", name="int", exact=True).click()
    test_size.get_by_role("spinbutton").fill(str(BROWSER_RUN["test_size"]))
    seeds = form_field(page, "Seeds").get_by_role("spinbutton")
    for left in range(seeds.count() - 1, 0, -1):  # delete the last item until one is left
        form_field(page, "Seeds").get_by_role("button", name="Open menu").last.click()
        page.get_by_role("menuitem", name="Delete").click()
        expect(seeds).to_have_count(left)
    for name in ("seeds", "qubits", "blocks"):
        [value] = BROWSER_RUN[name]
        form_field(page, name.capitalize()).get_by_role("spinbutton").fill(str(value))
    page.get_by_label("Epochs (Optional)").fill(str(BROWSER_RUN["epochs"]))
    for title in ("Evaluation shots", "Evaluation noise"):  # both None: no noisy evaluation
        form_field(page, title).get_by_role("tab", name="None", exact=True).click()
    page.get_by_label("Experiment (Optional)").fill(BROWSER_RUN["experiment"])


def test_the_ui_form_refuses_bad_values_and_runs_a_good_one(stack: Stack, runs: list[Any], tmp_path: Path) -> None:
    """A researcher's way through Prefect's own UI (its front page opens the V2 UI) in headless
    Chromium: the distill deployment's custom-run form refuses 50 qubits (Chromium checks the
    input against the schema's maximum) and an unknown fake backend (the server validates the
    form, and the run, against the schema), each with a message on the page and no flow run;
    then a small run submitted from the form completes, and its log links its MLflow run."""
    from browser import browser_page, form_field, missing
    from mlflow.tracking import MlflowClient

    if why := missing():
        pytest.skip(why)
    from playwright.sync_api import expect

    deployment = read(stack, "read_deployment_by_name", name="distill/distill")
    before = deployment_run_ids(stack, deployment.id)
    submit_page = re.compile(r"/deployments/deployment/[0-9a-f-]+/run\b")
    with browser_page(tmp_path) as page:
        open_custom_run(page, stack.api.removesuffix("/api"))
        qubits = form_field(page, "Qubits").get_by_role("spinbutton")
        qubits.fill("50")
        page.get_by_role("button", name="Submit").click()
        assert qubits.evaluate("input => input.validationMessage") == "Value must be less than or equal to 20."
        expect(page).to_have_url(submit_page)
        qubits.fill("3")

        noise = form_field(page, "Evaluation noise")
        noise.get_by_role("textbox").fill("fake_nowhere")
        page.get_by_role("button", name="Submit").click()
        expect(noise).to_contain_text("'fake_nowhere' is not one of ['fake_aachen'", timeout=30_000)
        expect(page).to_have_url(submit_page)
        assert deployment_run_ids(stack, deployment.id) == before  # neither refused Submit made a run

        # Prefect 3.8.8's V2 form decides at Submit from the errors of the Submit before (a stale
        # closure in its use-create-flow-run-form.tsx): it sent the bad run above, which the server
        # refused for its schema, and would ignore the next Submit. A fresh form has no errors.
        page.reload()
        fill_small_run(page)
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text("scheduled to start now")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="View run").click()  # on the notice: the run's page, its logs
        page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}\b"))
        [run_id] = deployment_run_ids(stack, deployment.id) - before
        assert f"/runs/flow-run/{run_id}" in page.url

        def finished() -> bool:
            return read(stack, "read_flow_run", flow_run_id=run_id).state.is_final()

        wait_until(finished, stack.procs, 300, "the flow run submitted from the UI")
        run = read(stack, "read_flow_run", flow_run_id=run_id)
        assert run.state.type.value == "COMPLETED", run.state.message
        assert {k: run.parameters["params"].get(k) for k in BROWSER_RUN} == BROWSER_RUN
        logs = run_logs(stack, run, expect="MLflow run ")
        [(mlflow_id, link)] = {m.groups() for line in logs if (m := MLFLOW_LINK.search(line))}
        client = MlflowClient(stack.mlflow_uri)
        experiment = client.get_experiment(client.get_run(mlflow_id).info.experiment_id)
        assert experiment.name == BROWSER_RUN["experiment"]
        assert link == f"{stack.mlflow_uri}/#/experiments/{experiment.experiment_id}/runs/{mlflow_id}"
        page.reload()  # the run's logs as the UI shows them
        expect(page.get_by_text(f"MLflow run {mlflow_id}: {link}")).to_be_visible(timeout=30_000)


FEDERATED = dict(
    dataset=["sst2"],
    train_size=60,
    test_size=30,
    clients=2,
    rounds=2,
    controller=["adaptive"],
    llm_steps=1,
    llm_max_length=8,
    experiment="system-federated",
)


def test_a_federated_deployment_runs_its_rounds_on_the_stack(stack: Stack, runs: list[Any]) -> None:
    """A second kind of flow through its own deployment: the parties' LLM fine-tunes and the
    clients' trainings on the external workers, the finished run stored in S3, rounds in MLflow."""
    from distributed import Client
    from mlflow.tracking import MlflowClient
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api}):
        run = run_deployment("federated/federated", parameters={"params": FEDERATED}, timeout=900, poll_interval=2)
    assert run.state.type.value == "COMPLETED", run.state.message
    logs = run_logs(stack, run)
    assert any("adaptive round 1/2" in m for m in logs), logs
    assert not any("no PREFECT_API_URL" in m for m in logs)  # the workers report to the stack's server
    with Client(stack.dask, timeout=30) as client:
        keys = client.run(lambda dask_worker: sorted({e[0] for e in dask_worker.state.log if isinstance(e[0], str)}))
    assert {"llm_finetune", "train_client"} <= {k.rsplit("-", 1)[0] for ks in keys.values() for k in ks}

    client = MlflowClient(stack.mlflow_uri)
    exp = client.get_experiment_by_name(FEDERATED["experiment"])
    [parent] = client.search_runs([exp.experiment_id], "tags.flow = 'federated'")
    assert parent.info.status == "FINISHED" and any(k.startswith("system/") for k in parent.data.metrics)
    [child] = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert child.info.run_name == "sst2/iid/adaptive" and client.get_metric_history(child.info.run_id, "test/accuracy")
    keys = list(stack.objects())
    assert any(k.startswith("artifacts/federated/runs/") and k.endswith(".npz") for k in keys), keys
    assert any(k.startswith("artifacts/federated/llm/") for k in keys), keys


def test_the_s3_secret_appears_nowhere(stack: Stack, runs: list[Any]) -> None:
    from mlflow.tracking import MlflowClient

    for run in runs:
        assert not [m for m in run_logs(stack, run) if SECRET in m]
        assert SECRET not in str(run.parameters)
    client = MlflowClient(stack.mlflow_uri)
    exp = client.get_experiment_by_name(TINY["experiment"])
    for r in client.search_runs([exp.experiment_id]):
        assert SECRET not in str(r.data.params) + str(r.data.tags)
    s3 = stack.s3_client()
    for key in stack.objects():
        assert SECRET.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key
    for p in stack.procs:
        assert SECRET not in p.tail(10**8), p.name


def test_logging_survives_the_tracking_server_and_s3_going_away(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow's own HTTP retries are switched off, so what keeps the logging alive is
    lab.tracking.with_retries. First the tracking server becomes unreachable (a gate in front
    of it closes) while a child run is created, then S3 stops while the child's model is
    uploaded; each comes back 3 s after the first failed attempt."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from lab import tracking
    from lab.data import Dataset
    from lab.runtime import Runtime

    gate = Gate(int(stack.mlflow_uri.rsplit(":", 1)[1]))
    gate.open()
    for k, v in stack.env.items():
        if k.startswith(("QLLM_", "AWS_", "MLFLOW_")):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("QLLM_MLFLOW_URI", f"http://127.0.0.1:{gate.port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\0" * 1024)
    caplog.set_level("WARNING", logger="lab.tracking")
    labels = np.array([0, 1])
    record = tracking.data_record(
        Dataset("tiny", "two rows", ("neg", "pos"), ["a", "b"], labels, ["c", "d"], labels, {})
    )

    def outage(name: str, down: Any, up: Any, failing: str) -> str:
        caplog.clear()
        with tracking.parent_run(Runtime(), "system-outage", name, {"what": name}) as parent:
            down()
            out: dict[str, Any] = {}
            logger = threading.Thread(
                target=lambda: out.update(
                    run_id=tracking.log_child(
                        parent,
                        f"{name}-child",
                        kind="outage test",
                        data=record,
                        params={"seed": 0},
                        metrics={"accuracy": 0.75},
                        artifacts=model,
                    )
                )
            )
            t0 = time.monotonic()
            logger.start()
            wait_until(lambda: f"MLflow {failing} failed" in caplog.text, [], 120, f"a failed {failing}")
            time.sleep(3)
            up()
            logger.join(120)
            print(
                f"{name} outage: {time.monotonic() - t0:.1f} s from the call to its success; "
                f"{caplog.text.count('retrying in')} retries"
            )
        assert "run_id" in out, caplog.text
        return out["run_id"]

    try:
        ids = [
            outage("tracking-server", gate.close, gate.open, "create child run"),
            outage("s3", stack.s3.stop, stack.s3.start, "log artifacts"),
        ]
    finally:
        gate.close()
        stack.s3.stop()
        stack.s3.start()
    client = MlflowClient(stack.mlflow_uri)
    for run_id in ids:
        run = client.get_run(run_id)
        assert run.data.metrics["test/accuracy"] == 0.75 and run.info.status == "FINISHED"
        assert [f.path for f in client.list_artifacts(run_id, "model")] == ["model/weights.bin"]


def test_a_cancelled_deployment_run_ends_its_mlflow_run_killed(stack: Stack, runs: list[Any]) -> None:
    """A Prefect cancellation (issue 17 item 4) of a deployment run that is training on the stack's
    Dask cluster: within 10 s its MLflow parent ends KILLED, not RUNNING, and the student stops
    training on its Dask worker (a task's thread cannot be interrupted: the training sees at its
    next epoch that its result was released) instead of holding that worker to its 1000th epoch;
    the worker then marks the flow run CANCELLED (9.8 s after the request on a quiet machine)."""
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    params = {**TINY, "seeds": [7], "epochs": 1000, "experiment": "system-cancel"}  # seed 7: no cached student
    with temporary_settings({PREFECT_API_URL: stack.api}):
        run = run_deployment("distill/distill", parameters={"params": params}, timeout=0)
    client = MlflowClient(stack.mlflow_uri)

    def parent() -> Any:
        experiment = client.get_experiment_by_name("system-cancel")
        found = experiment and client.search_runs(
            [experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{run.id}'"
        )
        return found[0] if found else None

    def training() -> bool:
        logs = read(stack, "read_logs", log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        return parent() is not None and any("epoch 2/" in log.message for log in logs)

    wait_until(training, stack.procs, 300, "the cancelled run's student training")
    assert any(running(stack.dask).values()), "the student is not training on the stack's Dask workers"
    t0 = time.monotonic()
    read(stack, "set_flow_run_state", flow_run_id=run.id, state=Cancelling(), force=True)
    wait_until(lambda: parent().info.status != "RUNNING", stack.procs, 60, "the MLflow parent to end")
    ended = time.monotonic() - t0
    assert parent().info.status == "KILLED"
    wait_until(lambda: not any(running(stack.dask).values()), stack.procs, 60, "the Dask workers idle")
    idle = time.monotonic() - t0

    def cancelled() -> bool:
        return bool(read(stack, "read_flow_run", flow_run_id=run.id).state.is_cancelled())

    wait_until(cancelled, stack.procs, 120, "the flow run CANCELLED")
    done = time.monotonic() - t0
    print(f"MLflow parent KILLED {ended:.1f} s after the request, Dask idle {idle:.1f} s, CANCELLED {done:.1f} s")
    assert ended <= 10 and idle <= 10, f"MLflow parent KILLED after {ended:.1f} s, Dask workers idle after {idle:.1f} s"
    # Prefect's worker marks the run CANCELLED once the process has gone (it looks every 3 s) and a
    # fresh process of its own has loaded the flow to look for on_cancellation hooks (8-10 s here).
    assert done <= 30, f"the flow run CANCELLED {done:.1f} s after the request (Prefect kills at 30 s)"
