"""infra/ without Docker: the compose file parses and every command it runs exists in the
installed packages; every deployment of prefect.yaml resolves to a flow whose one pydantic
parameter accepts the deployment's defaults; the settings reach s3fs, MLflow and Prefect."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from servers import BIN

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE = yaml.safe_load((INFRA / "compose.yaml").read_text())
PREFECT = yaml.safe_load((INFRA / "prefect.yaml").read_text())
PROJECT = {name: s for name, s in COMPOSE["services"].items() if s.get("image") == "qllm-lab:latest"}


def commands(service: dict[str, Any]) -> list[list[str]]:
    """The command lines a service runs: its command, or each command of an ``sh -c`` script
    (shell keywords and builtins left out)."""
    cmd = service["command"]
    if cmd[:2] != ["sh", "-c"]:
        return [cmd]
    lines = [shlex.split(part.replace("$$", "$")) for part in re.split(r"&&|\|\||;", cmd[2])]
    lines = [line[1:] if line[:1] == ["do"] else line for line in lines]
    return [line for line in lines if line and line[0] not in {"for", "done", "exit"}]


def test_compose_has_the_full_stack() -> None:
    assert set(COMPOSE["services"]) == {
        "prefect-db",
        "mlflow-db",
        "minio",
        "minio-bucket",
        "prefect-server",
        "mlflow",
        "dask-scheduler",
        "dask-worker",
        "prefect-deploy",
        "prefect-worker",
    }
    assert set(PROJECT) == {
        "prefect-server",
        "mlflow",
        "dask-scheduler",
        "dask-worker",
        "prefect-deploy",
        "prefect-worker",
    }
    assert all(s["build"]["dockerfile"] == "infra/Dockerfile" for s in PROJECT.values())
    assert COMPOSE["services"]["dask-worker"]["deploy"]["replicas"] == 2
    assert "postgresql" in COMPOSE["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "postgresql" in COMPOSE["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert "s3://" in " ".join(COMPOSE["services"]["mlflow"]["command"])


def test_compose_sets_only_real_settings_and_no_secret_values() -> None:
    from lab.runtime import Runtime

    env = COMPOSE["x-qllm-env"]
    qllm = {k.removeprefix("QLLM_").lower() for k in env if k.startswith("QLLM_")}
    assert qllm <= set(Runtime.model_fields), qllm - set(Runtime.model_fields)
    text = (INFRA / "compose.yaml").read_text()
    for secret in ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD"):
        assert re.findall(rf"{secret}: (\S+)", text) and all(
            v.startswith("${") for v in re.findall(rf"{secret}: (\S+)", text)
        ), secret


def test_every_compose_command_exists_in_the_installed_packages() -> None:
    """``<command> --help`` for each project-image command, in parallel (each is a cold start)."""
    lines = [line for s in PROJECT.values() for line in commands(s)]
    checks = {}
    for line in lines:
        words = [w for w in line if w != "--no-prompt"]
        assert (BIN / words[0]).exists(), f"{words[0]} is not installed"
        sub = [w for w in words[1:3] if not w.startswith("-") and "://" not in w]
        checks[" ".join(words[:1] + sub)] = subprocess.Popen(
            [str(BIN / words[0]), *sub, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    assert {
        "prefect server start",
        "prefect worker start",
        "prefect work-pool create",
        "prefect deploy",
        "mlflow server",
        "dask scheduler",
        "dask worker",
    } <= set(checks)
    failed = {name: p.communicate(timeout=120)[1][-500:] for name, p in checks.items() if p.wait(120) != 0}
    assert not failed, failed


def test_dockerfile_installs_the_pinned_project_with_cpu_torch() -> None:
    docker = (INFRA / "Dockerfile").read_text()
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in docker
    assert "-c constraints.txt -e '.[server]'" in docker
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "server" in extras
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def test_the_image_holds_every_package_of_the_project() -> None:
    """Each package `pip install` finds (pyproject's packages.find) is copied by the Dockerfile
    and let through its .dockerignore: an image without one fails at the first import."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.removesuffix("*") for p in include]
    docker = (INFRA / "Dockerfile").read_text()
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert [p for p in packages if f"COPY {p} {p}" not in docker or f"!{p}/" not in ignore] == []
    assert sorted(packages) == sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


DEPLOYMENTS = {d["name"]: d for d in PREFECT["deployments"]}


def test_a_deployment_for_every_flow() -> None:
    flows = {m for f in (ROOT / "flows").glob("*.py") for m in re.findall(r'@flow\(\s*name="(\w+)"', f.read_text())}
    assert {d["entrypoint"].split(".")[1] for d in DEPLOYMENTS.values()} == flows
    assert {d["work_pool"]["name"] for d in DEPLOYMENTS.values()} == {"qllm"}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_entrypoint_is_a_flow_with_one_pydantic_parameter(name: str) -> None:
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    deployment = DEPLOYMENTS[name]
    flow = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
    assert isinstance(flow, Flow)
    params = inspect.signature(flow.fn).parameters
    assert list(params) == ["params"]
    model = params["params"].annotation
    model = flow.fn.__globals__[model] if isinstance(model, str) else model
    assert issubclass(model, BaseModel)
    defaults = deployment["parameters"]["params"]
    # Only which trained model to run has no default; the Run form asks for it.
    asked = {k for k, f in model.model_fields.items() if f.is_required()} - set(defaults)
    assert asked <= {"run_id"}
    model.model_validate({**defaults, **{k: "run-id" for k in asked}})  # the defaults are valid


def test_compare_runs_nightly() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    (schedule,) = DEPLOYMENTS["nightly"]["schedules"]
    assert DEPLOYMENTS["nightly"]["entrypoint"] == "flows.compare.compare"
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert all("schedules" not in d for n, d in DEPLOYMENTS.items() if n != "nightly")


def test_s3_endpoint_reaches_s3fs_and_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lab import tracking
    from lab.artifacts import url_to_fs
    from lab.runtime import Runtime

    monkeypatch.setenv("QLLM_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "")  # so that undo removes what setup() sets
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    fs, path = url_to_fs("s3://bucket/key")
    assert fs.endpoint_url == "http://127.0.0.1:9" and path == "bucket/key"
    assert Runtime().storage_options(str(tmp_path)) == {}
    tracking.setup(Runtime(), "endpoint-check")
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9"


def test_qllm_prefect_api_url_is_exported_for_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.runner import prefect_api

    monkeypatch.setenv("QLLM_PREFECT_API_URL", "http://127.0.0.1:9/api")
    with prefect_api() as url:
        assert url == os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    assert "PREFECT_API_URL" not in os.environ


def test_workers_without_a_prefect_api_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes inherit the environment at start: a cluster started before the flow's
    Prefect API was exported has workers that would each start a Prefect server of their own."""
    from distributed import Client, LocalCluster

    from flows.runner import prefect_api_warning

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # the flow's, too late for the workers
        warning = prefect_api_warning(client)
        assert warning is not None and all(w in warning for w in cluster.scheduler_info["workers"])
        assert "PREFECT_API_URL=http://127.0.0.1:9/api" in warning
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert prefect_api_warning(client) is None
