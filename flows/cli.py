"""The ``qllm`` command line. Each flow's options come from its pydantic parameter model, so
``--help``, the Prefect UI form and ``prefect.yaml`` share one definition and one validation."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ValidationError

from tasks.data import DataError, DataUnavailableError

FlowEntry = tuple[type[BaseModel], Callable[[BaseModel], Any], str]


def _flows() -> dict[str, FlowEntry]:
    from .distill import DistillParams, run_distill

    return {"distill": (DistillParams, run_distill, "QD-LLM: distil a teacher LLM into quantum students")}


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One ``--option`` per field, with its description and default in the help."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = f"{field.description or ''} (default: {shown})"
        if _is_bool(field.annotation):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = "A,B,..." if _is_list(field.annotation) else name.upper()
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=metavar,
                                help=help_text)


def parse_model(model: type[BaseModel], ns: argparse.Namespace) -> BaseModel:
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
        where = "--" + ".".join(str(p) for p in e["loc"]).replace("_", "-") if e["loc"] else "parameters"
        lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return "invalid parameters:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    flows = _flows()
    parser = argparse.ArgumentParser(prog="qllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a flow")
    run_sub = run.add_subparsers(dest="flow", required=True)
    for name, (model, _, doc) in flows.items():
        p = run_sub.add_parser(name, help=doc, description=doc,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_model_options(p, model)
    pred = sub.add_parser("predict", help="classify texts with a student saved in an MLflow run")
    pred.add_argument("--run-id", required=True, help="MLflow run id of a trained student (a child run)")
    pred.add_argument("texts", nargs="+", help="texts to classify")
    args = parser.parse_args(argv)

    if args.command == "run":
        model, runner, _ = flows[args.flow]
        try:
            params = parse_model(model, args)
        except ValidationError as err:
            print(format_validation_error(err), file=sys.stderr)
            return 2
        try:
            runner(params)
        except (DataError, DataUnavailableError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    from .predict import predict

    for text, label, probs in predict(args.run_id, args.texts):
        print(json.dumps({"text": text, "label": label, "probabilities": probs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
