"""Bad input through the ``qllm`` command line (issue 17): each case is refused with exit code 2,
one message on stderr that names the bad value, no traceback, within seconds, and nothing written
under the artifact root.

The table runs the command line's own ``main`` in this process; then every case whose checks
need no heavy library runs again through the real command line in one fresh process, which must
refuse each before torch, Qiskit, Prefect, MLflow or transformers load (``bench/refusals.py``
times each as a process of its own)."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.cli import FLOWS, main
from lab.reach import SettingsError, check_object_store, check_reachable, connect_error
from lab.runtime import Runtime
from tests.servers import S3Server, free_port

UNREACHABLE = "http://127.0.0.1:1"  # port 1: nothing listens there
SECONDS = 15.0  # per refusal, after the imports (the data checks read SST-2's 67k rows)

FILES = {
    "fractions.tsv": "text\tlabel\ngood film\t0.37\nbad film\t0.74\n",
    "empty-label.tsv": "text\tlabel\ngood film\t1\nbad film\t\n",
    "blank-text.tsv": "text\tlabel\ngood film\t1\n   \t0\n",
    "one-class.tsv": "text\tlabel\ngood film\tpos\nfine film\tpos\nnice film\tpos\n",
}
LATIN = "latin.csv"  # written as latin-1 bytes: not UTF-8

# (case id, argv with {data} for the folder of FILES, extra environment, what stderr must name)
CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    # item 1: duplicates in list parameters, unreachable services
    ("duplicate-seeds", ["run", "distill", "--seeds", "0,0,1"], {}, "[0] given more than once"),
    ("duplicate-qubits", ["run", "distill", "--qubits", "4,6,4"], {}, "[4] given more than once"),
    ("duplicate-grid-value", ["run", "study", "--grid", "qubits=4,4"], {}, "given more than once (axis 'qubits')"),
    ("duplicate-methods", ["run", "compare", "--methods", "qdllm,qdllm"], {}, "['qdllm'] given more than once"),
    ("duplicate-noise-devices", ["run", "head", "--noise-devices", "fake_torino,fake_torino"], {}, "fake_torino"),
    (
        "dask-unreachable",
        ["run", "distill", "--dask-address", "tcp://127.0.0.1:1"],
        {},
        "dask-address=tcp://127.0.0.1:1",
    ),
    ("dask-env-unreachable", ["run", "head"], {"QLLM_DASK_ADDRESS": "tcp://127.0.0.1:1"}, "QLLM_DASK_ADDRESS="),
    ("mlflow-unreachable", ["run", "distill"], {"QLLM_MLFLOW_URI": UNREACHABLE}, f"QLLM_MLFLOW_URI={UNREACHABLE}"),
    ("prefect-unreachable", ["run", "head"], {"QLLM_PREFECT_API_URL": UNREACHABLE}, "QLLM_PREFECT_API_URL="),
    ("s3-unreachable", ["run", "distill"], {"QLLM_S3_ENDPOINT_URL": UNREACHABLE}, "QLLM_S3_ENDPOINT_URL="),
    # item 2: no silent nonsense
    ("fraction-labels", ["run", "distill", "--dataset", "{data}/fractions.tsv"], {}, "line 2: label '0.37'"),
    ("empty-label", ["run", "head", "--dataset", "{data}/empty-label.tsv"], {}, "line 3: the label is empty"),
    ("blank-text", ["run", "distill", "--dataset", "{data}/blank-text.tsv"], {}, "line 3: text '   ' is empty"),
    ("one-class", ["run", "distill", "--dataset", "{data}/one-class.tsv"], {}, "1 class ('pos' on all 3 rows)"),
    ("shots-noise-exact", ["run", "distill", "--noise", "fake_torino", "--shots", "100"], {}, "backend=aer"),
    ("shots-exact-federated", ["run", "federated", "--shots", "100"], {}, "shots=100 needs --backend aer"),
    ("noise-samples-eval-off", ["run", "distill", "--eval-noise", "none", "--noise-samples", "50"], {}, "eval_noise"),
    ("eval-samples-eval-off", ["run", "distill", "--eval-shots", "none", "--eval-samples", "50"], {}, "eval_samples"),
    ("device-shots-no-devices", ["run", "head", "--noise-devices", "", "--device-shots", "64"], {}, "device_shots=64"),
    ("finetune-no-devices", ["run", "head", "--noise-devices", "", "--noise-finetune-steps", "3"], {}, "noise_devices"),
    ("shots-on-head", ["run", "head", "--shots", "100"], {}, "--shots"),
    ("predict-empty-text", ["predict", "--run-id", "abc", ""], {}, "text #1 ''"),
    ("predict-blank-text", ["predict", "--run-id", "abc", "fine", "  "], {}, "text #2 '  '"),
    # item 3: no traceback for a user's mistake
    ("missing-file", ["run", "head", "--dataset", "{data}/missing.csv"], {}, "missing.csv"),
    ("not-utf8", ["run", "distill", "--dataset", f"{{data}}/{LATIN}"], {}, "line 3 is not UTF-8"),
    (
        "predict-mlflow-unreachable",
        ["predict", "--run-id", "abc", "fine"],
        {"QLLM_MLFLOW_URI": UNREACHABLE},
        "QLLM_MLFLOW_URI",
    ),
    ("predict-no-such-run", ["predict", "--run-id", "no-such-run", "a fine film"], {}, "'no-such-run' does not exist"),
    ("root-not-writable", ["run", "distill"], {"QLLM_ARTIFACT_ROOT": "/proc/nope"}, "QLLM_ARTIFACT_ROOT=/proc/nope"),
    ("root-is-a-file", ["run", "head"], {"QLLM_ARTIFACT_ROOT": "{data}/one-class.tsv/x"}, "is not a folder"),
    # the families the issue found refused well, kept so
    ("unknown-dataset", ["run", "distill", "--dataset", "sst-2"], {}, "unknown data set 'sst-2'"),
    ("train-size-0", ["run", "distill", "--train-size", "0"], {}, "--train-size"),
    ("qubits-21", ["run", "distill", "--qubits", "21"], {}, "qubits [21] out of range"),
    ("head-qubits-1", ["run", "head", "--qubits", "1"], {}, "--qubits"),
    ("alpha-1.5", ["run", "distill", "--alpha", "1.5"], {}, "alpha [1.5] out of range"),
    ("lr-0", ["run", "head", "--lr", "0"], {}, "--lr"),
    ("unknown-backend", ["run", "distill", "--backend", "gpu"], {}, "'gpu'"),
    ("fake-device", ["run", "distill", "--eval-noise", "fake_nowhere"], {}, "fake_nowhere"),
    ("unknown-teacher", ["run", "distill", "--teacher", "gpt"], {}, "'gpt'"),
    ("malformed-grid", ["run", "study", "--grid", "qubits"], {}, "'qubits' is not name=value"),
    ("study-unknown-axis", ["run", "study", "--grid", "qbits=2,3"], {}, "'qbits' is not a parameter a head study"),
    (
        "study-bad-point",
        ["run", "study", "--method", "distill", "--grid", "qubits=2,30"],
        {},
        "qubits [30] out of range",
    ),
    ("study-missing-file", ["run", "study", "--fixed", "dataset={data}/missing.csv"], {}, "missing.csv"),
    ("unknown-peft-method", ["run", "peft", "--methods", "dora"], {}, "dora"),
    ("rank-0", ["run", "peft", "--rank", "0"], {}, "--rank"),
    ("clients-0", ["run", "federated", "--clients", "0"], {}, "--clients"),
    ("dirichlet-0", ["run", "federated", "--partition", "dirichlet:0"], {}, "dirichlet:0"),
    ("unknown-hardware-run", ["run", "hardware", "--run-id", "no-such-run"], {}, "'no-such-run' does not exist"),
    ("negative-qpu-budget", ["run", "hardware", "--run-id", "x", "--max-qpu-seconds", "-1"], {}, "--max-qpu-seconds"),
]


def write_bad_data(folder: Path) -> Path:
    """The bad data files of the table, written into ``folder`` (``bench/refusals.py`` too)."""
    for name, text in FILES.items():
        (folder / name).write_text(text)
    (folder / LATIN).write_bytes("text,label\nfine,0\ncafé,1\n".encode("latin-1"))
    return folder


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bad_data(tmp_path_factory.mktemp("bad-data"))


def written(root: Path) -> list[str]:
    """Everything under ``root`` (which need not exist)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def flows_imported() -> None:
    """Every flow's module, imported before the table's clock starts: the cases of
    :data:`NEEDS_HEAVY` load them, and whichever ran first would pay the imports (15-30 s on a
    busy machine) in its time bound."""
    for entry in FLOWS.values():
        importlib.import_module(entry.runner.partition(":")[0])
    importlib.import_module("flows.predict")


@pytest.mark.parametrize(("argv", "env", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_process(
    argv: list[str],
    env: dict[str, str],
    named: str,
    data_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flows_imported: None,
) -> None:
    root = tmp_path / "artifacts"
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(root))
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(data=data_folder))
    t0 = time.monotonic()
    try:
        code = main([a.format(data=data_folder) for a in argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "Traceback" not in err
    assert seconds < SECONDS, f"refused after {seconds:.1f} s"
    assert written(Path(os.environ["QLLM_ARTIFACT_ROOT"])) == []


def test_refused_on_a_run_without_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``qllm predict`` on a run that holds no model (a baseline's, say) names the run and
    changes nothing in the store."""
    import mlflow

    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(root))
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("refusals"), run_name="logreg")
    before = {p: p.stat().st_size for p in root.rglob("*")}
    assert main(["predict", "--run-id", run.info.run_id, "a fine film"]) == 2
    err = capsys.readouterr().err
    assert f"MLflow run {run.info.run_id} (logreg) holds no quantum model" in err and "Traceback" not in err
    assert {p: p.stat().st_size for p in root.rglob("*")} == before


# The cases whose checks need heavy modules: the tune's and compare's parameters are checked
# against every method's (the registry), and a run id is looked up in MLflow.
NEEDS_HEAVY = {
    "duplicate-methods",
    "predict-no-such-run",
    "unknown-hardware-run",
}
# The help of every light command: the program's, each light flow's and ``qllm peft count``'s.
HELPS = [
    [],
    ["run"],
    *(["run", f] for f in ("distill", "head", "peft", "study", "federated", "hardware")),
    ["peft", "count"],
]
HEAVY = ("torch", "qiskit", "qiskit_aer", "prefect", "mlflow", "transformers", "peft", "dask", "distributed")
# Runs the cases it is given, one after another, in one fresh process: each one's exit code,
# stdout, stderr, seconds, and the heavy modules loaded so far (none, for a refusal before them).
LIGHT_RUNNER = """
import contextlib, io, json, os, sys, time
from flows.cli import FLOWS, main
heavy = json.loads(sys.argv[2])
for name, argv, env in json.loads(sys.argv[1]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    err, out = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    seconds = time.monotonic() - t0
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    loaded = [m for m in heavy if m in sys.modules]
    row = {"name": name, "code": code, "out": out.getvalue(), "err": err.getvalue(), "seconds": seconds}
    print(json.dumps({**row, "loaded": loaded}))
"""


def test_refused_before_any_heavy_library_loads(data_folder: Path, tmp_path: Path) -> None:
    """Every case but those of :data:`NEEDS_HEAVY`, through the real command line in one fresh
    process: refused (exit code 2, the value named, no traceback, nothing written) while none of
    torch, Qiskit, Prefect, MLflow, transformers or Dask has been imported, so a refusal costs
    the process's start and :mod:`lab.params` only."""
    cases = [
        (
            name,
            [a.format(data=data_folder) for a in argv],
            {"QLLM_ARTIFACT_ROOT": str(tmp_path / name), **{k: v.format(data=data_folder) for k, v in env.items()}},
        )
        for name, argv, env, _ in CASES
        if name not in NEEDS_HEAVY
    ]
    helps = [(f"help {' '.join(argv)}", [*argv, "--help"], {}) for argv in HELPS]
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_RUNNER, json.dumps(helps + cases), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    named = {c[0]: c[3] for c in CASES}
    assert set(rows) == {c[0] for c in helps + cases}
    for name, _, _ in helps:
        assert rows[name]["code"] == 0 and rows[name]["out"].startswith("usage: qllm"), name
        assert rows.pop(name)["loaded"] == [], name
    for name, row in rows.items():
        assert row["code"] == 2, (name, row["err"])
        assert named[name] in row["err"] and "Traceback" not in row["err"], (name, row["err"])
        assert row["loaded"] == [], (name, row["loaded"])
        assert written(tmp_path / name) == [], name


def test_the_probe_passes_a_listening_address_and_skips_other_schemes() -> None:
    """A server that accepts connections is not refused; addresses not reached over TCP are left
    to their clients."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert connect_error(f"tcp://127.0.0.1:{port}") is None
        assert connect_error(f"http://127.0.0.1:{port}/api") is None
        assert connect_error(f"127.0.0.1:{port}") is None
    assert connect_error(f"tcp://127.0.0.1:{port}") is not None  # closed now
    assert connect_error("inproc://192.168.0.1/1/2") is None


def test_a_refused_address_never_shows_its_credentials() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(SettingsError) as err:  # closed now: refused
        check_reachable(f"http://alice:s3cret@127.0.0.1:{port}/mlflow", "MLflow tracking server", "QLLM_MLFLOW_URI")
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)
    assert f"QLLM_MLFLOW_URI=http://127.0.0.1:{port}/mlflow" in str(err.value)


# moto keeps its buckets in this process's memory, shared by every moto server of a test worker:
# a name of its own, so another module's server (test_teacher's ``lab``) starts without it.
BUCKET = "refusals"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 API on loopback, holding one bucket, :data:`BUCKET`; its request log (werkzeug's,
    from a thread of this process) kept off the stderr the tests read."""
    import logging

    import boto3

    requests = logging.getLogger("werkzeug")
    level = requests.level
    requests.setLevel(logging.ERROR)
    server = S3Server(free_port())
    server.start()
    try:
        keys = {"aws_access_key_id": "refusals", "aws_secret_access_key": "refusals-secret"}
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", **keys).create_bucket(Bucket=BUCKET)
        yield server.url
    finally:
        server.stop()
        requests.setLevel(level)


@pytest.mark.parametrize(
    ("root", "credentials", "named"),
    [
        (
            f"s3://{BUCKET}/artifacts",
            False,
            "NoCredentialsError: Unable to locate credentials); give credentials through ",
        ),
        ("s3://no-such-bucket/artifacts", True, "s3://no-such-bucket/artifacts: a test write failed"),
    ],
    ids=["no-credentials", "no-bucket"],
)
def test_an_object_store_root_is_refused_before_the_run(
    root: str,
    credentials: bool,
    named: str,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An ``s3://`` artifact root that cannot be written (no credentials anywhere botocore
    looks, a bucket that does not exist) is refused with one message naming the setting, and
    the store is left as it was; the secret key never shows."""
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "refusals")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "refusals-secret")
    monkeypatch.setenv("QLLM_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", root)
    t0 = time.monotonic()
    assert main(["run", "distill", "--train-size", "40", "--test-size", "20"]) == 2
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert f"QLLM_ARTIFACT_ROOT={root}" in err and named in err, err
    assert "Traceback" not in err and "refusals-secret" not in err
    assert seconds < SECONDS, f"refused after {seconds:.1f} s"
    store = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="refusals",
        aws_secret_access_key="refusals-secret",
    )
    assert store.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_a_writable_object_store_root_passes_and_keeps_no_probe(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "refusals")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "refusals-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("QLLM_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", f"s3://{BUCKET}/artifacts")
    check_object_store(Runtime())
    assert boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_debug_raises_the_refusal_with_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``qllm --debug`` lets a refused command's error through (for a bug report) instead of
    the one-line message."""
    monkeypatch.setenv("QLLM_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("QLLM_MLFLOW_URI", UNREACHABLE)
    with pytest.raises(SettingsError, match="QLLM_MLFLOW_URI="):
        main(["--debug", "run", "head"])
    assert written(tmp_path / "artifacts") == []
