"""The ``qllm`` command line. Each flow's options come from its pydantic parameter model, so
``--help``, the Prefect UI form and ``prefect.yaml`` share one definition and one validation."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from lab.params import ReadsData

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class FlowEntry:
    """A ``qllm run`` flow: where its parameter model and its runner live (``module:name``), and
    its one-line help. Both load only when the flow is chosen: ``qllm --help`` and a refused
    command answer before torch, Qiskit, Prefect or MLflow load (the parameter models of
    :mod:`lab.params` are light; a runner's module is not)."""

    params: str
    runner: str
    help: str

    def model(self) -> type[BaseModel]:
        return cast("type[BaseModel]", _load(self.params))

    def run(self, params: BaseModel) -> Any:
        return _load(self.runner)(params)


def _load(where: str) -> Any:
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


FLOWS: dict[str, FlowEntry] = {
    "distill": FlowEntry(
        "lab.params.distill:DistillParams",
        "flows.distill:run_distill",
        "QD-LLM: distil a teacher LLM into quantum students",
    ),
    "head": FlowEntry(
        "lab.params.head:HeadParams",
        "flows.head:run_head",
        "PQC head: a hybrid quantum classification head on few-shot "
        "sentence embeddings, beside classical heads, with a noise ablation",
    ),
    "peft": FlowEntry(
        "lab.params.peft:PeftParams",
        "flows.peft:run_peft",
        "LoRA, QPA and QTHA fine-tune one model on equal footing; merged into plain weights for quantum-free inference",
    ),
    # The study's, tune's and compare's checks read every method's parameters and search space
    # through the method registry, so their parameter models live with their flows (not light).
    "study": FlowEntry(
        "lab.params.study:StudyParams",
        "flows.study:run_study",
        "a grid of configurations x seeds of one method on the Dask "
        "cluster, with a plot of the metric against the grid axis",
    ),
    "tune": FlowEntry(
        "flows.tune:TuneParams",
        "flows.tune:run_tune",
        "hyper-parameter search for one method (Optuna TPE, median pruning) on a training hold-out, "
        "trials on the Dask cluster; the best trained per seed and scored on test",
    ),
    "federated": FlowEntry(
        "lab.params.federated:FederatedParams",
        "flows.federated:run_federated",
        "LLM-QFL: federated quantum classifiers on Dask, steered by an LLM controller",
    ),
    "compare": FlowEntry(
        "flows.compare:CompareParams",
        "flows.compare:run_compare",
        "every method on one data set, budget and seed set: a "
        "leaderboard of accuracy against parameters and training time",
    ),
    "hardware": FlowEntry(
        "lab.params.hardware:HardwareParams",
        "flows.hardware:run_hardware",
        "run a trained quantum model on an IBM quantum computer "
        "(or a fake one offline) beside its exact and noisy simulation",
    ),
    "federated-compare": FlowEntry(
        "lab.params.federated:FederatedCompareParams",
        "flows.federated:run_federated",
        "LLM-QFL: controllers none/adaptive/dynamic-weighted and a classical "
        "federated baseline on SST-2 and SUBJ, IID and Dirichlet(0.5)",
    ),
}


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):  # list | None
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One ``--option`` per field, with its description and default in the help."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = f"{field.description or ''} ({'required' if field.is_required() else f'default: {shown}'})"
        if _is_bool(field.annotation):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            if typing.get_origin(field.annotation) is dict:
                metavar = "NAME=A,B;..."
            else:
                metavar = "A,B,..." if _is_list(field.annotation) else name.upper()
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def parse_model(model: type[M], ns: argparse.Namespace) -> M:
    """Build the parameter model from the given options; pydantic refuses bad values."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in ns:
            continue
        raw = getattr(ns, name)
        if isinstance(raw, str) and _is_list(field.annotation):
            raw = [v.strip() for v in raw.split(",") if v.strip()]
        if isinstance(raw, str) and raw.lower() in ("none", "null"):
            raw = None
        values[name] = raw
    return model.model_validate(values)


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        if e["loc"]:
            where = "--" + ".".join(str(p) for p in e["loc"]).replace("_", "-")
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
        else:  # a check across parameters: the message names the values
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
    return "invalid parameters:\n" + "\n".join(lines)


def chosen_flow(argv: Sequence[str]) -> str | None:
    """The flow ``qllm run NAME …`` names, if any: only its options are built (and only its
    parameter model imported)."""
    words = [w for w in argv if not w.startswith("-")]
    return words[1] if len(words) > 1 and words[0] == "run" and words[1] in FLOWS else None


def build_parser(flow: str | None) -> argparse.ArgumentParser:
    """``qllm``'s parser, with the options of ``flow`` (the others' sub-commands have their help only)."""
    parser = argparse.ArgumentParser(prog="qllm", description=__doc__)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on a refused command, raise its error with its traceback (for bug reports)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a flow")
    run_sub = run.add_subparsers(dest="flow", required=True)
    for name, entry in FLOWS.items():
        p = run_sub.add_parser(
            name, help=entry.help, description=entry.help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        if name == flow:
            add_model_options(p, entry.model())
            p.add_argument(
                "--verbose",
                action="store_true",
                help="also print Dask's and MLflow's INFO lines and Hugging Face's progress bars",
            )
    peft_sub = sub.add_parser("peft", help="parameter-efficient fine-tuning tools").add_subparsers(
        dest="peft_command", required=True
    )
    count_parser(
        peft_sub.add_parser(
            "count", help=COUNT_HELP, description=COUNT_HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
    )
    pred = sub.add_parser(
        "predict", help="classify texts with a student saved in an MLflow run, or with a registered model"
    )
    pred.add_argument(
        "--run-id",
        "--model",
        dest="source",
        required=True,
        help="MLflow run id of a trained student (a child run), or a registered model: "
        "models:/NAME@ALIAS (e.g. models:/qllm-qdllm-sst2@champion) or models:/NAME/VERSION",
    )
    pred.add_argument("texts", nargs="+", help="texts to classify")
    return parser


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user's input causes once a flow runs: refused in one line, not a traceback.
    Imported when a command has passed the light checks, since their modules are heavy."""
    from lab.data import DataError, DataUnavailableError
    from lab.reach import SettingsError
    from lab.registry import RegistryError
    from lab.teacher import ModelNotFoundError
    from qcore.adapters import AdapterError
    from qcore.hardware.service import HardwareError

    return (
        DataError,
        DataUnavailableError,
        AdapterError,
        ModelNotFoundError,
        HardwareError,
        SettingsError,
        RegistryError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(chosen_flow(argv)).parse_args(argv)

    if args.command == "run":
        if not args.verbose:
            quiet_libraries()
        entry = FLOWS[args.flow]
        try:
            params = parse_model(entry.model(), args)
        except ValidationError as err:
            print(format_validation_error(err), file=sys.stderr)
            return 2
        from lab.data import DataError, DataUnavailableError
        from lab.reach import SettingsError, check_places

        try:  # the data set, then every place the run will use, before any heavy library loads
            if isinstance(params, ReadsData):
                params.check_data()
            check_places(getattr(params, "dask_address", None))
        except (DataError, DataUnavailableError, SettingsError) as err:
            return refused(err, args.debug)
        except user_errors() as err:  # compare's data check runs every method's own (heavy) checks
            return refused(err, args.debug)
        try:
            entry.run(params)
        except user_errors() as err:
            return refused(err, args.debug)
        return 0
    if args.command == "peft":
        return count_main(args, debug=args.debug)
    if blank := [i for i, t in enumerate(args.texts, 1) if not t.strip()]:
        shown = ", ".join(f"#{i} {args.texts[i - 1]!r}" for i in blank)
        print(f"error: text {shown} is empty or blank; give each text to classify", file=sys.stderr)
        return 2
    from lab.reach import SettingsError, check_tracking
    from lab.runtime import Runtime

    try:
        check_tracking(Runtime())
    except SettingsError as err:
        return refused(err, args.debug)
    from .predict import predict

    try:
        rows = predict(args.source, args.texts)
    except user_errors() as err:
        return refused(err, args.debug)
    for text, label, probs in rows:
        print(json.dumps({"text": text, "label": label, "probabilities": probs}))
    return 0


def refused(err: Exception, debug: bool) -> int:
    """A user's mistake: one line on stderr and exit code 2; with ``--debug``, the error itself."""
    if debug:
        raise err
    print(f"error: {err}", file=sys.stderr)
    return 2


def quiet_libraries() -> None:
    """The libraries' chatter off a run's terminal, here and in the worker processes a LocalCluster
    starts (they inherit the environment); their warnings and errors still show:

    * Dask's cluster comings and goings (some 35 INFO lines a run) at WARNING;
    * MLflow's INFO lines (database set-up, system-metrics monitor) and its artifact download bars;
    * Hugging Face's progress bars ("Loading weights" each time a worker loads MiniLM).

    The lab's own progress (the teacher's ``embed`` bar) stays. Set before any of them is imported:
    they read these settings once."""
    import logging
    import os

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("distributed").setLevel(logging.WARNING)


COUNT_HELP = "trainable parameters of LoRA, QPA and QTHA from a model config alone, and their ratio to LoRA"


def count_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``qllm peft count`` (one per :class:`CountParams` field)."""
    from lab.params.peft import CountParams

    add_model_options(parser, CountParams)


def count_main(args: argparse.Namespace, *, debug: bool = False) -> int:
    """``qllm peft count``: print the table, or refuse bad input with a message naming it."""
    from lab.params.peft import CountParams

    try:
        params = parse_model(CountParams, args)
    except ValidationError as err:
        print(format_validation_error(err), file=sys.stderr)
        return 2
    from lab.methods.peft import count_report

    try:
        print(count_report(params))
    except user_errors() as err:
        return refused(err, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
