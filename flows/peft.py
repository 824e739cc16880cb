"""Quantum parameter-efficient fine-tuning as a Prefect flow: LoRA, QPA and QTHA on equal footing.

Every method fine-tunes the same model on the same batches, with the same steps, optimiser,
learning rate (unless ``--qpa-lr`` sets QPA's own) and seed, as parallel tasks on the Dask
cluster; each result is merged into plain Hugging Face weights and checked against the adapted
model. One MLflow parent run holds the results table and the overlaid loss curves, with a child
run per method.

Papers: QPA, arXiv 2410.09846; QTHA, arXiv 2503.12790; LoRA, arXiv 2106.09685.

Also here: ``qllm peft count``, the trainable parameters of each method from a model config alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
import transformers
from mlflow import ActiveRun
from mlflow.tracking import MlflowClient
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qcore.adapters import METHODS, AdapterError, adapter_config
from qcore.adapters.counting import Count, compare, skeleton
from qcore.adapters.qpa import PUBLISHED_HIDDEN
from tasks import peft_report, tracking
from tasks.artifacts import download_folder
from tasks.corpus import Corpus, load_corpus
from tasks.data import Dataset, load_dataset
from tasks.finetune import AUTO_CLASSES, FinetuneJob, fine_tune, head_names
from tasks.settings import Settings
from tasks.teacher import ModelNotFoundError, resolve_model

from .cli import add_model_options, format_validation_error, parse_model
from .runner import check_dask_address, dask_runner, mlflow_hint, run_from_cli

Method = Literal["lora", "qpa", "qtha"]


class AdapterOptions(BaseModel):
    """The adapter settings ``qllm run peft`` and ``qllm peft count`` share."""

    model_config = ConfigDict(extra="forbid")

    target: list[str] | None = Field(None, description="modules to adapt, by name or name ending "
                                                       "(default: peft's usual ones for the model type)")
    rank: int = Field(4, ge=1, description="rank r of the update")
    alpha: float | None = Field(None, gt=0, description="update scale numerator α (None: 2·rank)")
    qpa_chunk_size: int = Field(2048, ge=1, description="QPA: numbers per mapping-model output "
                                                        "(the paper's n_mlp, 2048)")
    qpa_depth: int = Field(8, ge=1, le=100, description="QPA: RY + CNOT-chain blocks of the circuit")
    qpa_hidden: list[int] = Field(list(PUBLISHED_HIDDEN), min_length=1,
                                  description="QPA: hidden widths of the mapping model (published: "
                                              + ",".join(map(str, PUBLISHED_HIDDEN)) + ")")
    qpa_activation: Literal["relu", "gelu", "tanh", "silu"] | None = Field(
        None, description="QPA: activation between mapping layers (None: linear, as published)")
    qtha_qubits: int = Field(4, ge=1, le=16, description="QTHA: qubits of the QNN")
    qtha_layers: int = Field(2, ge=1, le=50, description="QTHA: hardware-efficient layers of the QNN")
    qtha_bond_dim: int = Field(4, ge=1, description="QTHA: bond dimension of the MPOs")
    qtha_cores: int = Field(3, ge=2, le=6, description="QTHA: cores per MPO")

    def adapter_fields(self, method: str, targets: list[str], **shared: Any) -> dict[str, Any]:
        """The config fields of ``method``: the shared ones plus its own."""
        own = {"qpa": {"chunk_size": self.qpa_chunk_size, "depth": self.qpa_depth,
                       "hidden_sizes": self.qpa_hidden, "activation": self.qpa_activation},
               "qtha": {"qubits": self.qtha_qubits, "layers": self.qtha_layers,
                        "bond_dim": self.qtha_bond_dim, "cores": self.qtha_cores}}.get(method, {})
        return {"target_modules": targets, "r": self.rank, "alpha": self.alpha, **shared, **own}


class CountParams(AdapterOptions):
    """Parameters of ``qllm peft count``."""

    model: str | None = Field(None, description="model name or folder; a folder holding only "
                                                "config.json will do (default: the embedded all-MiniLM-L6-v2)")
    method: list[Method] = Field(list(METHODS), min_length=1, description="methods to count")


class PeftParams(AdapterOptions):
    """Parameters of the peft flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    methods: list[Method] = Field(list(METHODS), min_length=1, description="methods to compare")
    task: Literal["classify", "lm"] = Field("classify", description="classify: sequence classification "
                                            "(accuracy); lm: causal language modelling (perplexity)")
    model: str | None = Field(None, description="model name or folder (default: the embedded "
                                                "all-MiniLM-L6-v2 for classify, gpt2 for lm)")
    dataset: str = Field("sst2", description="classify: named set or TSV/CSV/JSONL path or fsspec URL")
    train_size: int | None = Field(4000, ge=2, description="classify: training examples (stratified subsample)")
    test_size: int | None = Field(None, ge=1, description="classify: test examples (None: the whole test split)")
    corpus: str = Field("tiny_shakespeare", description="lm: named corpus or a UTF-8 text file path or URL")
    eval_blocks: int = Field(32, ge=1, description="lm: validation blocks the perplexity is measured on")
    max_length: int = Field(64, ge=8, description="classify: tokens per text; lm: tokens per block")
    steps: int = Field(200, ge=2, description="training steps, the same for every method")
    batch_size: int = Field(16, ge=1, description="training batch size")
    lr: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate (linear decay to 0)")
    dropout: float = Field(0.05, ge=0, lt=1, description="input dropout on the adapter path (QPA's 0.05)")
    seed: int = Field(0, ge=0, description="seed of the data order, the adapters and a new head")
    split_seed: int = Field(0, ge=0, description="classify: seed of the split and subsampling")
    # Smaller than the paper's QPA settings: those suit GPT-2's 768 → 50,257 lm_head, while the
    # default MiniLM's 384-wide layers have only 3,072 LoRA numbers each.
    qpa_chunk_size: int = Field(64, ge=1, description="QPA: numbers per mapping-model output "
                                                      "(the paper: 2048, for GPT-2's lm_head)")
    qpa_hidden: list[int] = Field([16], min_length=1, description="QPA: hidden widths of the mapping "
                                  "model (the paper: " + ",".join(map(str, PUBLISHED_HIDDEN)) + ")")
    qpa_lr: float | None = Field(None, gt=0, le=1, description="QPA: learning rate of the generator "
                                 "(None: --lr). At one rate QPA's update moves some 80x faster per step than "
                                 "LoRA's (MiniLM query/value); the paper trains both at 1e-5")
    qpa_zero_start: bool = Field(False, description="QPA: subtract the update generated at "
                                 "initialisation, so training starts at the base model as LoRA's and "
                                 "QTHA's do (same gradients); off: as published")
    experiment: str = Field("qllm-peft", min_length=1, description="MLflow experiment name")
    dask_address: str | None = Field(None, description="Dask scheduler address (default: a temporary LocalCluster)")

    def adapter_fields(self, method: str, targets: list[str], **shared: Any) -> dict[str, Any]:
        fields = super().adapter_fields(method, targets, **shared)
        return {**fields, "zero_start": self.qpa_zero_start} if method == "qpa" else fields

    @model_validator(mode="after")
    def _distinct_methods(self) -> PeftParams:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} repeat a method")
        return self


# --- preflight: everything that can be refused before any training -----------------------------

@dataclass(frozen=True)
class Plan:
    """What the preflight established: the targets, each method's counts and its job."""

    targets: list[str]
    counts: dict[str, Count]
    jobs: list[FinetuneJob]

    @property
    def lora_params(self) -> int:
        return next(iter(self.counts.values())).lora


def default_targets(config: transformers.PretrainedConfig) -> list[str]:
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(config.model_type)
    if not targets:
        raise AdapterError(f"there are no default target modules for model type {config.model_type!r}: "
                           "name them with --target")
    return list(targets)


def model_config(model: str | None) -> tuple[Path, transformers.PretrainedConfig]:
    """The model's folder (see ``resolve_model``) and its config; only ``config.json`` is read."""
    folder = resolve_model(model)
    try:
        return folder, transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"model {model!r} ({folder}) has no usable config.json: {exc}") from exc


def load_data(params: PeftParams) -> Dataset | Corpus:
    if params.task == "classify":
        return load_dataset(params.dataset, train_size=params.train_size, test_size=params.test_size,
                            seed=params.split_seed)
    return load_corpus(params.corpus)


def preflight(params: PeftParams, data: Dataset | Corpus) -> Plan:
    """Resolve the model, check it can be trained and every method can adapt it (targets, rank,
    chunk size), and count trainable parameters. Bad input is refused here, before training."""
    model = params.model or (None if params.task == "classify" else "gpt2")
    folder, config = model_config(model)
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").is_file():
        raise ModelNotFoundError(f"model {model!r} ({folder}) has no weights (*.safetensors or pytorch_model.bin): "
                                 "`qllm peft count` needs only config.json, fine-tuning needs the weights")
    try:
        transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"model {model!r} ({folder}) has no usable tokenizer: {exc}") from exc
    if isinstance(data, Dataset):
        config.num_labels = data.num_classes
    auto = AUTO_CLASSES[params.task]
    targets = params.target or (["lm_head"] if params.task == "lm" else default_targets(config))
    heads = head_names(skeleton(config, auto)) if params.task == "classify" else []
    shared = {"dropout": params.dropout, "seed": params.seed, "modules_to_save": heads}
    fields = {m: params.adapter_fields(m, targets, **shared) for m in params.methods}
    counts = compare(lambda: skeleton(config, auto), [adapter_config(m, **f) for m, f in fields.items()])
    jobs = [FinetuneJob(method=m, task=params.task, model=str(folder), adapter=f, steps=params.steps,
                        batch_size=params.batch_size, lr=params.lr, seed=params.seed,
                        max_length=params.max_length, eval_blocks=params.eval_blocks,
                        adapter_lr=params.qpa_lr if m == "qpa" else None)
            for m, f in fields.items()]
    return Plan(targets, dict(zip(params.methods, counts)), jobs)


# --- the flow -----------------------------------------------------------------------------------

@task(name="prepare-peft-data", cache_policy=NO_CACHE)
def prepare(params: PeftParams) -> Dataset | Corpus:
    """The task's data; bad names, paths or columns fail here, before any training."""
    return load_data(params)


@flow(name="peft", task_runner=dask_runner(), log_prints=True)
def peft(params: PeftParams = PeftParams()) -> dict[str, Any]:
    """Fine-tune one model with LoRA, QPA and QTHA on equal footing; merge, check and compare."""
    check_dask_address(params.dask_address)
    settings = Settings()
    with tracking.parent_run(settings, params.experiment, "peft", params.model_dump(),
                             tags={"flow": "peft", "task": params.task}, system_metrics=True) as parent:
        data = prepare(params)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        plan = preflight(params, data)
        futures = fine_tune.map(plan.jobs, unmapped(data), unmapped(settings.artifact_root))
        rows = [f.result() for f in futures]
        table = peft_report.table(rows, plan.lora_params)
        md = peft_report.markdown(table)
        _log_mlflow(parent, params, plan, rows, table)
        run_id = parent.info.run_id
    create_table_artifact(key="peft-results", table=table, description="LoRA, QPA and QTHA on equal footing")
    create_markdown_artifact(key="peft-report", markdown=md)
    return {"table": table, "markdown": md, "mlflow_run_id": run_id, "targets": plan.targets,
            "merged": {r["method"]: r["merged_url"] for r in rows},
            "methods": [{"name": r["method"], "cached": r["cached"]} for r in rows]}


def _log_mlflow(parent: ActiveRun, params: PeftParams, plan: Plan, rows: list[dict[str, Any]],
                table: list[dict[str, Any]]) -> None:
    """The table and the overlaid loss curves on the parent run; a child run per method."""
    for r, row in zip(rows, table):
        with tempfile.TemporaryDirectory() as tmp:
            adapter = download_folder(r["adapter_url"], Path(tmp) / "adapter")
            tracking.log_child(parent, r["method"], params={**r["job"], "targets": plan.targets},
                               metrics={**r["metrics"], "ratio_to_lora": row["ratio_to_lora"],
                                        "circuit_params": plan.counts[r["method"]].circuit},
                               history=r["history"], artifacts=adapter,
                               tags={"kind": "adapter", "method": r["method"], "merged_model": r["merged_url"]})
    figure = peft_report.loss_curves(rows, f"{params.task}: training loss per step")
    client = MlflowClient()
    tracking.with_retries(lambda: client.log_figure(parent.info.run_id, figure, "loss_curves.png"),
                          what="log figure")
    summary = {f"{row['method']}.{k}": float(v) for row in table for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracking.with_retries(lambda: mlflow.log_metrics(summary), what="log metrics")
    tracking.log_table(parent, table, "results.json")


def run_peft(params: PeftParams) -> dict[str, Any]:
    """Run the flow from the command line and print the results and where they are.

    Data, model, targets, rank and chunk size are checked first, so bad input is refused in
    seconds, before any server starts or anything is written.
    """
    preflight(params, load_data(params))
    result = run_from_cli(peft, params)
    print(result["markdown"])
    print("\nMerged models (plain Hugging Face folders, no quantum computer needed):")
    for method, url in result["merged"].items():
        print(f"  {method}: {url}")
    print(mlflow_hint(result["mlflow_run_id"]))
    return result


# --- qllm peft count ----------------------------------------------------------------------------

def count_report(params: CountParams) -> str:
    """The count table of ``qllm peft count``: trainable parameters and the ratio to LoRA."""
    folder, config = model_config(params.model)
    targets = params.target or default_targets(config)
    configs = [adapter_config(m, **params.adapter_fields(m, targets)) for m in params.method]
    counts = compare(lambda: skeleton(config), configs)
    name = type(skeleton(config)).__name__
    lines = [f"{name} from {folder}, target {','.join(targets)}, rank {params.rank}:", "",
             "| method | trainable params | circuit params | ratio to LoRA | adapted layers | circuits |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c.method} | {c.adapter:,} | {c.circuit:,} | {c.ratio_to_lora:.2%} | {c.layers} | "
              f"{'; '.join(c.details) or '–'} |" for c in counts]
    return "\n".join(lines)


COUNT_HELP = "trainable parameters of LoRA, QPA and QTHA from a model config alone, and their ratio to LoRA"


def count_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``qllm peft count`` (one per :class:`CountParams` field)."""
    add_model_options(parser, CountParams)


def count_main(args: argparse.Namespace) -> int:
    """``qllm peft count``: print the table, or refuse bad input with a message naming it."""
    try:
        print(count_report(parse_model(CountParams, args)))
    except ValidationError as err:
        print(format_validation_error(err), file=sys.stderr)
        return 2
    except (AdapterError, ModelNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
