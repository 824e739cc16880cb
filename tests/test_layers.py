"""The layer rules, read from the source (every import, module-level or inside a function):

    flows → tasks → lab → qcore

``qcore`` imports nothing above it and no orchestration or tracking library; the method layer
(``lab``) imports no Prefect and nothing above it; tasks never import flows; no flow module
imports another flow module (the command line aside, and ``flows/runner.py``, which is shared
plumbing, not a flow)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("prefect", "prefect_dask", "dask", "distributed", "mlflow", "s3fs")
SHARED_FLOW_MODULES = {"flows.runner", "flows.predict"}  # plumbing the flows share, not flows
FLOW_IMPORTERS = {"flows.cli"}  # the command line builds every flow's options

# (layer, forbidden prefixes, why)
RULES = [
    ("qcore", ("lab", "tasks", "flows", *ORCHESTRATION), "qcore is the library: plain Python, testable alone"),
    ("lab", ("tasks", "flows", "prefect", "prefect_dask"), "the method layer runs without an orchestrator"),
    ("tasks", ("flows",), "tasks are wrapped by flows, never the other way round"),
]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, relative imports resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            out.append((node.lineno, name))
            if node.module is None:  # `from . import x`: x may be a module
                out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return out


def matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_violations(root: Path, layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(root)}:{line} imports {module}"
        for path in sorted((root / layer).rglob("*.py"))
        for line, module in imports(path, root)
        if matches(module, forbidden)
    ]


def flow_violations(root: Path) -> list[str]:
    """Flow modules importing other flow modules."""
    out = []
    for path in sorted((root / "flows").glob("*.py")):
        me = module_name(path, root)
        if me in FLOW_IMPORTERS:
            continue
        for line, module in imports(path, root):
            target = ".".join(module.split(".")[:2])
            if module.startswith("flows.") and target not in SHARED_FLOW_MODULES | {me}:
                out.append(f"{path.relative_to(root)}:{line} imports {module}")
    return out


@pytest.mark.parametrize(("layer", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_layer_imports_only_below_it(layer: str, forbidden: tuple[str, ...], why: str) -> None:
    found = layer_violations(ROOT, layer, forbidden)
    assert not found, f"{why}:\n" + "\n".join(found)


def test_no_flow_imports_another_flow() -> None:
    found = flow_violations(ROOT)
    assert not found, "a flow reads top to bottom as its own tasks:\n" + "\n".join(found)


def test_tasks_hold_only_task_wrappers_and_their_helpers() -> None:
    """Every module of ``tasks/`` defines at least one Prefect task: plain code lives in ``lab``."""
    plain = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        decorated = [d for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) for d in node.decorator_list]
        if not any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "task" for d in decorated):
            plain.append(path.name)
    assert not plain, f"modules of tasks/ without a @task: {plain}"


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """A tree that breaks every rule once is caught once per rule (the test can fail)."""
    for name, text in {
        "qcore/m.py": "import mlflow\n",
        "lab/m.py": "from prefect import task\n",
        "tasks/m.py": "from flows.distill import distill\n",
        "flows/a.py": "from .b import B\nfrom .runner import dask_runner\n",
        "flows/b.py": "",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert [len(layer_violations(tmp_path, layer, forbidden)) for layer, forbidden, _ in RULES] == [1, 1, 1]
    assert flow_violations(tmp_path) == ["flows/a.py:1 imports flows.b"]


def test_importing_the_flows_changes_nothing_in_the_process() -> None:
    """A flow's task runner is built when the flow runs: importing every flow (as a Prefect
    worker or a notebook does) sets none of the lab's variables (Dask's timeouts, Prefect's or
    the lab's settings; torch and MLflow set their own at import, which is theirs to do)."""
    script = (
        "import os, json; before = dict(os.environ); "
        "import flows.cli, flows.compare, flows.distill, flows.federated, flows.hardware, flows.head, "
        "flows.peft, flows.study; "
        "print(json.dumps(sorted(k for k in os.environ if os.environ[k] != before.get(k) "
        "and k.startswith(('DASK_', 'PREFECT_', 'QLLM_')))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_flows_without_a_fine_tune_do_not_load_its_libraries() -> None:
    """The method registry imports a method's module on first lookup: the flows that fine-tune no
    language model, their tasks and a QD-LLM lookup leave peft and transformers unloaded (2-3 s of
    every flow process's, Dask worker's and Prefect hook process's start)."""
    script = (
        "import sys; import flows.distill, flows.federated, flows.hardware, flows.head, flows.study, tasks.train; "
        "from lab.methods import METHODS; METHODS['qdllm']; METHODS['pqc-head']; METHODS['llm-qfl']; "
        "print(sorted(m for m in ('peft', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
