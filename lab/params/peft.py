"""The peft flow's parameters (LoRA, QPA and QTHA fine-tuning one model on equal footing) and
``qllm peft count``'s: the options, the Prefect UI form and ``prefect.yaml``. The method is
:mod:`lab.methods.peft`; the lm base's recipe is here too, since its steps are a parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from qcore.names import ADAPTERS, PUBLISHED_HIDDEN

from . import Options, RunOptions, experiment
from .noise import NoiseOptions

if TYPE_CHECKING:
    import transformers


@dataclass(frozen=True)
class BaseRecipe:
    """How the base is made; every field is part of its cache key."""

    layers: int = 4
    width: int = 192  # GPT-2's n_embd
    heads: int = 4
    context: int = 128  # tokens per training block, and the model's n_positions
    vocab: int = 4096
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    fraction: float = 0.5  # of the corpus's training text, from its start

    def model_config(self, vocab_size: int, end_of_text: int | None = None) -> transformers.GPT2Config:
        """The base's architecture (``vocab_size``: its tokenizer's; the recipe's ``vocab`` before one is trained)."""
        import transformers  # here, not at the top: the parameter models load without it

        return transformers.GPT2Config(
            vocab_size=vocab_size,
            n_positions=self.context,
            n_embd=self.width,
            n_layer=self.layers,
            n_head=self.heads,
            bos_token_id=end_of_text,
            eos_token_id=end_of_text,
            pad_token_id=end_of_text,
        )


AdapterName = Literal["lora", "qpa", "qtha"]
ADAPTER_NAMES: tuple[AdapterName, ...] = ("lora", "qpa", "qtha")
assert ADAPTER_NAMES == ADAPTERS, "qcore's adapters and the flow's choices must agree"
# The fine-tuning methods: the adapters, QPA as published (its generated update at
# initialisation left in; `qpa` subtracts it so training starts at the base model as LoRA's and
# QTHA's do), and the quantum adapters with a classical stand-in in their circuit's place
# (`circuit="classical"`, the ablation; QPA's from a zero update, as `qpa`). A variant trains
# its adapter's layers.
FinetuneName = Literal["lora", "qpa", "qpa-published", "qpa-classical", "qtha", "qtha-classical"]
STANDINS: dict[str, AdapterName] = {"qpa-classical": "qpa", "qtha-classical": "qtha"}
VARIANTS: dict[str, AdapterName] = {"qpa-published": "qpa", **STANDINS}
# Adapter learning rates swept on MiniLM, SST-2, 200 steps of 16 (issue 14's table): one rate for
# all moves QPA's update 87× faster per step than LoRA's and QTHA's 1.4×. A stand-in trains at
# its quantum method's rates.
ADAPTER_LRS: dict[FinetuneName, float] = {
    "lora": 3e-3,
    "qpa": 3e-4,
    "qpa-published": 1e-4,
    "qpa-classical": 3e-4,
    "qtha": 1e-2,
    "qtha-classical": 1e-2,
}


class AdapterOptions(Options):
    """The adapter settings ``qllm run peft`` and ``qllm peft count`` share."""

    repeatable = frozenset({"qpa_hidden"})  # equal widths of successive layers are a fine network

    target: list[str] | None = Field(
        None, description="modules to adapt, by name or name ending (default: peft's usual ones for the model type)"
    )
    rank: int = Field(4, ge=1, description="rank r of the update")
    alpha: float | None = Field(None, gt=0, description="update scale numerator α (None: 2·rank)")
    qpa_chunk_size: int = Field(
        2048, ge=1, description="QPA: numbers per mapping-model output (the paper's n_mlp, 2048)"
    )
    qpa_depth: int = Field(8, ge=1, le=100, description="QPA: RY + CNOT-chain blocks of the circuit")
    qpa_hidden: list[int] = Field(
        list(PUBLISHED_HIDDEN),
        min_length=1,
        description="QPA: hidden widths of the mapping model (published: " + ",".join(map(str, PUBLISHED_HIDDEN)) + ")",
    )
    qpa_activation: Literal["relu", "gelu", "tanh", "silu"] | None = Field(
        None, description="QPA: activation between mapping layers (None: linear, as published)"
    )
    qtha_qubits: int = Field(4, ge=1, le=16, description="QTHA: qubits of the QNN")
    qtha_layers: int = Field(2, ge=1, le=50, description="QTHA: hardware-efficient layers of the QNN")
    qtha_bond_dim: int = Field(4, ge=1, description="QTHA: bond dimension of the MPOs")
    qtha_cores: int = Field(3, ge=2, le=6, description="QTHA: cores per MPO")

    def adapter_fields(self, method: str, targets: list[str], **shared: Any) -> dict[str, Any]:
        """The config fields of ``method``: the shared ones plus its own."""
        per_method: dict[str, dict[str, Any]] = {
            "qpa": {
                "chunk_size": self.qpa_chunk_size,
                "depth": self.qpa_depth,
                "hidden_sizes": self.qpa_hidden,
                "activation": self.qpa_activation,
            },
            "qtha": {
                "qubits": self.qtha_qubits,
                "layers": self.qtha_layers,
                "bond_dim": self.qtha_bond_dim,
                "cores": self.qtha_cores,
            },
        }
        own = per_method.get(method, {})
        return {"target_modules": targets, "r": self.rank, "alpha": self.alpha, **shared, **own}


class CountParams(AdapterOptions):
    """Parameters of ``qllm peft count``."""

    model: str | None = Field(
        None,
        description="model name or folder; a folder holding only "
        "config.json will do (default: the embedded all-MiniLM-L6-v2)",
    )
    method: list[AdapterName] = Field(list(ADAPTER_NAMES), min_length=1, description="methods to count")


class PeftFields(Options):
    """The peft flow's own parameters (after the adapter options in the form)."""

    methods: list[FinetuneName] = Field(
        list(ADAPTER_NAMES),
        min_length=1,
        description="methods to compare: lora, qpa (from a zero update), qpa-published (the paper's start), "
        "qtha, and qpa-classical, qtha-classical (a classical stand-in of the circuit's size in its place)",
    )
    task: Literal["classify", "lm"] = Field(
        "classify",
        description="classify: sequence classification (accuracy); lm: causal language modelling (perplexity)",
    )
    model: str | None = Field(
        None,
        description="model name or folder (default: the embedded all-MiniLM-L6-v2 for classify; for lm, a small "
        "GPT-2 pretrained here on the corpus's first half, cached)",
    )
    dataset: str = Field("sst2", description="classify: named set or TSV/CSV/JSONL path or fsspec URL")
    train_size: int | None = Field(4000, ge=2, description="classify: training examples (stratified subsample)")
    test_size: int | None = Field(None, ge=1, description="classify: test examples (None: the whole test split)")
    corpus: str = Field("tiny_shakespeare", description="lm: named corpus or a UTF-8 text file path or URL")
    eval_blocks: int = Field(32, ge=1, description="lm: validation blocks the perplexity is measured on")
    pretrain_steps: int = Field(
        BaseRecipe.steps, ge=1, description="lm without a model: training steps of the base pretrained here"
    )
    max_length: int = Field(64, ge=8, description="classify: tokens per text; lm: tokens per block")
    steps: int = Field(200, ge=2, description="training steps, the same for every method")
    batch_size: int = Field(16, ge=1, description="training batch size")
    group_by_length: bool = Field(
        True,
        description="classify: each epoch's batches cut from groups of 50 batches sorted by token length "
        "(every example once per epoch as before, far less padding; false: batches in random order)",
    )
    head_lr: float = Field(
        3e-2,
        gt=0,
        le=1,
        description="classify: AdamW learning rate of the new classification head (a linear map of "
        "unit-length embeddings on a sentence transformer needs a large one)",
    )
    adapter_lr: dict[FinetuneName, float] = Field(
        dict(ADAPTER_LRS),
        description="each method's learning rate of its adapter's classical parameters (LoRA's factors, "
        "QPA's mapping model, QTHA's cores and fusion), e.g. lora=3e-3,qtha=1e-2; a method not named "
        "keeps its default: " + ", ".join(f"{k}={v:g}" for k, v in ADAPTER_LRS.items()),
    )
    circuit_lr: dict[FinetuneName, float] = Field(
        {},
        description="each quantum method's learning rate of its circuit's angles (QPA's, QTHA's QNN; a "
        "stand-in's parameters), e.g. qpa=1e-3; a method not named trains them at its adapter_lr",
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="input dropout on the adapter path (QPA's 0.05)")
    seed: int = Field(0, ge=0, description="seed of the data order, the adapters and a new head")
    split_seed: int = Field(0, ge=0, description="classify: seed of the split and subsampling")

    @field_validator("adapter_lr", "circuit_lr", mode="before")
    @classmethod
    def _parse_rates(cls, v: Any) -> Any:
        """``"lora=3e-3,qpa=3e-4"`` from the command line; a mapping as it is."""
        if not isinstance(v, str):
            return v
        pairs = [part.partition("=") for part in v.replace(";", ",").split(",") if part.strip()]
        if bad := [a + b + c for a, b, c in pairs if not b]:
            raise ValueError(f"{bad[0]!r} is not method=rate (e.g. lora=3e-3)")
        return {k.strip(): c.strip() for k, _, c in pairs}

    @field_validator("adapter_lr", "circuit_lr")
    @classmethod
    def _rates_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        for name, rate in v.items():
            if not 0 < rate <= 1:
                raise ValueError(f"{name}={rate:g} is not a learning rate in (0, 1]")
        return v

    def recipe(self) -> BaseRecipe:
        """How the ``lm`` base is pretrained when no model is given."""
        return BaseRecipe(steps=self.pretrain_steps)

    def rates(self, method: str) -> tuple[float, float]:
        """``(adapter, circuit)`` learning rates of ``method`` (its defaults where not given)."""
        name: Any = method
        adapter = self.adapter_lr.get(name, ADAPTER_LRS[name])
        return adapter, self.circuit_lr.get(name, adapter)


class PeftParams(RunOptions, NoiseOptions, PeftFields, AdapterOptions):
    """Parameters of the peft flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    experiment: str = experiment("qllm-peft")
    # Smaller than the paper's QPA settings: those suit GPT-2's 768 → 50,257 lm_head, while the
    # default MiniLM's 384-wide layers have only 3,072 LoRA numbers each.
    qpa_chunk_size: int = Field(
        64, ge=1, description="QPA: numbers per mapping-model output (the paper: 2048, for GPT-2's lm_head)"
    )
    qpa_hidden: list[int] = Field(
        [16],
        min_length=1,
        description="QPA: hidden widths of the mapping model (the paper: " + ",".join(map(str, PUBLISHED_HIDDEN)) + ")",
    )

    def adapter_fields(self, method: str, targets: list[str], **shared: Any) -> dict[str, Any]:
        """QPA starts from the base model (its update at initialisation subtracted); the
        ``qpa-published`` variant starts where the paper's does, a stand-in puts a classical
        module in the circuit's place (see :data:`VARIANTS`)."""
        adapter = VARIANTS.get(method, method)
        fields = super().adapter_fields(adapter, targets, **shared)
        if adapter == "qpa":
            fields["zero_start"] = method != "qpa-published"
        if method in STANDINS:  # only there: the quantum methods' jobs, and their stored results, stay as they were
            fields["circuit"] = "classical"
        return fields
