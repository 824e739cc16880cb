"""Checks, before a flow starts, that the places its settings name can be reached and written:
a setting that points nowhere is refused within seconds, naming the setting, instead of hanging
in a client's patient retries (MLflow's back-off, Dask's 300 s connect timeout) or failing in
the middle of a run."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from urllib.parse import urlsplit

from .artifacts import join_url, url_to_fs
from .runtime import Runtime

PROBE_SECONDS = 3.0  # a server on the same network answers a TCP connect in milliseconds
DEFAULT_PORTS = {"http": 80, "https": 443, "tcp": 8786, "tls": 8786}


class SettingsError(ValueError):
    """A setting names a place that cannot be reached or written; the message names the setting."""


def connect_error(url: str) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails within :data:`PROBE_SECONDS`
    (``None``: it connects, or the scheme is not one reached over TCP)."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme not in DEFAULT_PORTS:
        return None
    host, port = parts.hostname or "localhost", parts.port or DEFAULT_PORTS[parts.scheme]
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        return f"a TCP connection to {host}:{port} failed within {PROBE_SECONDS:g} s ({exc.strerror or exc})"
    return None


def check_reachable(url: str, what: str, setting: str) -> None:
    """Refuse ``url`` (the ``setting`` naming ``what``) when nothing answers there; the message
    leaves out any ``user:password@`` of the URL (messages end up in logs)."""
    if (error := connect_error(url)) is not None:
        shown = urlsplit(url)._replace(netloc=urlsplit(url).netloc.rpartition("@")[2]).geturl() if "://" in url else url
        raise SettingsError(f"{setting}={shown}: no {what} answers there: {error}. Start it, or change {setting}")


def check_writable(runtime: Runtime) -> None:
    """Refuse a local artifact root this process cannot create or write, naming the setting;
    nothing is left behind (the probe is an anonymous temporary file)."""
    if not runtime.root_is_local:
        return
    root = runtime.local_root
    existing = next(p for p in (root, *root.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    else:
        try:
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as exc:
            problem = f"{existing} cannot be written ({exc.strerror or exc})"
    if problem:
        raise SettingsError(
            f"QLLM_ARTIFACT_ROOT={runtime.artifact_root}: {problem}; set QLLM_ARTIFACT_ROOT to a writable folder"
        )


def check_object_store(runtime: Runtime) -> None:
    """Refuse a remote artifact root (``s3://``, ``gs://``, ...) that cannot be written, naming
    the setting and, for missing credentials, the variables that give them: one empty probe
    object is written and removed, so a run never meets the store's refusal mid-flow. The
    message carries no credential (botocore's do not; any secret-looking variable's value is
    cut out regardless)."""
    if runtime.root_is_local:
        return
    probe = join_url(runtime.artifact_root, f".qllm-write-probe-{uuid.uuid4().hex}")
    try:
        # skip_instance_cache: a filesystem cached with earlier credentials would answer for the new ones
        fs, path = url_to_fs(probe, {"skip_instance_cache": True})
        fs.pipe_file(path, b"")
        fs.rm_file(path)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe refuses the root, saying why
        why = _without_secrets(f"{type(exc).__name__}: {exc}")
        hint = "set QLLM_ARTIFACT_ROOT to a store and prefix this process can write"
        if "credentials" in why.lower():
            hint = (
                "give credentials through AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                "and QLLM_S3_ENDPOINT_URL for a store other than AWS; or " + hint
            )
        root = runtime.artifact_root
        raise SettingsError(f"QLLM_ARTIFACT_ROOT={root}: a test write failed ({why}); {hint}") from None


def _without_secrets(text: str) -> str:
    """``text`` with the value of every secret-looking environment variable cut out (by the
    hardware flow's :func:`~qcore.hardware.service.redact`, imported only on this failure path)."""
    from qcore.hardware.service import redact

    words = ("SECRET", "TOKEN", "PASSWORD", "KEY")
    return redact(text, *(v for n, v in os.environ.items() if len(v) >= 4 and any(w in n.upper() for w in words)))


def check_tracking(runtime: Runtime) -> None:
    """Refuse a configured MLflow tracking server that does not answer (``QLLM_MLFLOW_URI``)."""
    if runtime.mlflow_uri:
        check_reachable(runtime.mlflow_uri, "MLflow tracking server", "QLLM_MLFLOW_URI")


def check_places(dask_address: str | None) -> None:
    """Every place a ``qllm run`` will use: the artifact root (a remote one written once), the
    MLflow server, the Prefect API, the S3 endpoint and the Dask scheduler (``dask_address``,
    the ``--dask-address`` option, else ``QLLM_DASK_ADDRESS``)."""
    runtime = Runtime()
    check_writable(runtime)
    check_tracking(runtime)
    if prefect := os.environ.get("PREFECT_API_URL"):
        check_reachable(prefect, "Prefect API", "PREFECT_API_URL")
    elif runtime.prefect_api_url:
        check_reachable(runtime.prefect_api_url, "Prefect API", "QLLM_PREFECT_API_URL")
    if runtime.s3_endpoint_url:
        check_reachable(runtime.s3_endpoint_url, "S3 endpoint", "QLLM_S3_ENDPOINT_URL")
    check_object_store(runtime)
    if dask_address:
        check_reachable(dask_address, "Dask scheduler", "--dask-address")
    elif runtime.dask_address:
        check_reachable(runtime.dask_address, "Dask scheduler", "QLLM_DASK_ADDRESS")
