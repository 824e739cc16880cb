"""The federated flow's parameters (LLM-QFL: federated quantum classifiers steered by an LLM
controller): the ``qllm run federated`` and ``federated-compare`` options, the Prefect UI form and
``prefect.yaml``. The method is :mod:`lab.methods.federated`.

The checks here need only :mod:`qcore.federated`'s light modules (the partition and controller
rules); the builders of the run's parts import the parts they build where they are called, so the
model loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from qcore.federated.controller import RULES, Controller, make_controller
from qcore.federated.partition import PARTITION_PATTERN, PartitionSpec

from . import Options, RunOptions, experiment
from .noise import NoiseOptions

if TYPE_CHECKING:
    from qcore.federated.client import LocalTraining
    from qcore.federated.client_models import ModelSpec
    from qcore.federated.llm import LLMSpec


class FederatedFields(Options):
    """The federated flow's own parameters (before the run group in the form)."""

    dataset: list[str] = Field(
        ["sst2"], min_length=1, description="named sets (sst2, subj, trec, ag_news) or file paths/URLs; a list sweeps"
    )
    train_size: int | None = Field(
        2000, ge=2, description="training examples (stratified subsample), shared by the server and the clients"
    )
    test_size: int | None = Field(None, ge=1, description="test examples (None: the whole test split)")
    split_seed: int = Field(0, ge=0, description="seed of the train/test split and subsampling")
    clients: int = Field(5, ge=1, le=10_000, description="federated clients")
    rounds: int = Field(10, ge=1, le=10_000, description="communication rounds")
    partition: list[str] = Field(
        ["iid"],
        min_length=1,
        description="iid or dirichlet:ALPHA with ALPHA > 0 (e.g. dirichlet:0.5); a list sweeps",
        json_schema_extra={"items": {"type": "string", "pattern": PARTITION_PATTERN}},
    )
    strategy: Literal["fedavg", "fedprox", "fedadam"] = Field("fedavg", description="server strategy")
    proximal_mu: float = Field(0.01, ge=0, description="fedprox: weight of the proximal term")
    server_lr: float = Field(0.1, gt=0, description="fedadam: server learning rate")
    controller: list[str] = Field(
        ["adaptive"],
        min_length=1,
        description=(
            "none (plain QFL), a step rule (" + ", ".join(RULES) + ") or generative:package.module:function; "
            "a list compares them"
        ),
    )
    baseline: Literal["none", "logreg", "mlp"] = Field(
        "none", description="classical model also trained under FedAvg on the same splits"
    )
    local_steps: int = Field(10, ge=1, description="initial local steps per client and round (the paper's maxiter)")
    max_steps: int = Field(100, ge=1, description="cap of the step rules (the paper's MAX_MAXITER)")
    max_increment: int = Field(100, ge=0, description="hybrid rule: largest increment per round")
    select_fraction: float = Field(
        0.1, gt=0, le=1, description="share of clients aggregated, closest to the server loss first (at least one)"
    )
    stop_threshold: float = Field(
        0.4, ge=0, description="stop once |server objective - server LLM loss| is below this (0: never)"
    )
    objective_unit: Literal["bits", "nats"] = Field(
        "bits", description=("unit of the VQC objective compared with the LLM loss (nats); the paper's code uses bits")
    )
    generative_fallback: Literal["incremental", "dynamic-weighted", "logarithmic", "adaptive", "hybrid"] = Field(
        "adaptive", description="rule used when a generative controller's answer is invalid"
    )
    model: Literal["vqc", "qdllm"] = Field("vqc", description="client model: the paper's VQC or the QD-LLM student")
    circuit: Literal["quantum", "classical"] = Field(
        "quantum", description="the client model's circuit, or a classical MLP of about its size in its place"
    )
    qubits: int = Field(4, ge=2, le=12, description="qubits = PCA components of the embeddings")
    readout: Literal["mod", "parity"] = Field(
        "mod", description="vqc: class of basis state i is i mod C (Qiskit-ML's VQC) or popcount(i) mod C"
    )
    optimizer: Literal["adam", "cobyla", "spsa"] = Field("adam", description="local optimiser of the quantum clients")
    lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate, or SPSA's gain a (about 1 works)")
    batch_size: int | None = Field(None, ge=1, description="adam: mini-batch size (None: whole partition)")
    backend: Literal["exact", "aer"] = Field("exact", description="client simulator: exact or aer (shots)")
    shots: int | None = Field(None, ge=1, description="aer: shots per circuit (None: exact expectations)")
    server_fraction: float = Field(
        0.1, gt=0, le=0.5, description="share of the training set the server keeps as its own data"
    )
    llm_model: str | None = Field(
        None,
        description="LLM each party fine-tunes (Hugging Face name or folder; default the embedded all-MiniLM-L6-v2)",
    )
    llm_steps: int = Field(20, ge=1, description="LoRA fine-tuning steps per party")
    llm_batch_size: int = Field(16, ge=1, description="LoRA fine-tuning batch size")
    llm_max_length: int = Field(48, ge=2, description="tokens per text for the LLM")
    llm_lr: float = Field(2e-3, gt=0, description="LoRA learning rate")
    llm_rank: int = Field(8, ge=1, description="LoRA rank r")
    client_timeout: float = Field(
        600.0, gt=0, description="seconds a client may train per round before it is dropped from the round"
    )
    fail_rate: float = Field(
        0.0, ge=0, lt=1, description="simulated client failure probability per round (seeded; exercises the drop path)"
    )
    target_accuracy: float | None = Field(
        None, gt=0, le=1, description="accuracy to reach (None: 0.95 x the best any quantum run reached)"
    )
    seed: int = Field(0, ge=0, description="seed of partitions, server split, models and clients")
    teacher_shard_size: int = Field(4000, ge=1, description="texts per embedding shard on the Dask workers")


class FederatedParams(RunOptions, NoiseOptions, FederatedFields):
    """Parameters of the federated flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    experiment: str = experiment("qllm-federated")

    @field_validator("partition")
    @classmethod
    def _partitions(cls, v: list[str]) -> list[str]:
        return [str(PartitionSpec.parse(p)) for p in v]  # PartitionError is a ValueError: pydantic reports it

    @field_validator("controller")
    @classmethod
    def _controllers(cls, v: list[str]) -> list[str]:
        for spec in v:
            make_controller(spec)  # refuses unknown names and generative callables that do not load
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FederatedParams:
        if self.shots is not None and self.backend != "aer":
            raise ValueError(f"shots={self.shots} needs --backend aer (the exact backend has no shots)")
        self.check_device_qubits(self.qubits, "the client circuit")
        if self.batch_size is not None and self.optimizer != "adam":
            raise ValueError(f"batch_size applies to --optimizer adam only; {self.optimizer} uses the whole partition")
        if self.train_size is not None:
            pool = self.train_size - max(1, round(self.train_size * self.server_fraction))
            if self.clients > pool:
                raise ValueError(
                    f"clients={self.clients} exceeds the {pool} training examples left for clients "
                    f"(train_size {self.train_size} minus the server's share): every client needs one"
                )
        return self

    # -- what the run is made of
    def model_spec(self, num_classes: int) -> ModelSpec:
        from qcore.federated.client_models import ModelSpec

        options: dict[str, Any] = {"readout": self.readout} if self.model == "vqc" else {}
        if self.circuit == "classical":  # only then: a quantum model's spec (its stored runs' key) stays as it was
            options["circuit"] = self.circuit
        backend_options = {"shots": self.shots} if self.shots is not None else {}
        return ModelSpec(
            self.model,
            self.qubits,
            num_classes,
            backend=self.backend,
            seed=self.seed,
            options=options,
            backend_options=backend_options,
        )

    def baseline_spec(self, num_classes: int) -> ModelSpec:
        from qcore.federated.client_models import ModelSpec

        return ModelSpec(self.baseline, self.qubits, num_classes, seed=self.seed)

    def train_settings(self, quantum: bool) -> LocalTraining:
        """The quantum clients' optimiser; the classical baseline always trains by Adam."""
        from qcore.federated.client import LocalTraining

        optimizer = self.optimizer if quantum else "adam"
        batch_size = self.batch_size if optimizer == "adam" else None
        return LocalTraining(optimizer=optimizer, lr=self.lr, batch_size=batch_size, time_limit=self.client_timeout)

    def llm_spec(self) -> LLMSpec:
        from qcore.federated.llm import LLMSpec

        return LLMSpec(
            steps=self.llm_steps,
            batch_size=self.llm_batch_size,
            max_length=self.llm_max_length,
            lr=self.llm_lr,
            rank=self.llm_rank,
            alpha=2 * self.llm_rank,
            seed=self.seed,
        )

    def controller_for(self, spec: str) -> Controller:
        return make_controller(
            spec,
            max_steps=self.max_steps,
            max_increment=self.max_increment,
            select_fraction=self.select_fraction,
            stop_threshold=self.stop_threshold,
            fallback_rule=self.generative_fallback,
        )

    @property
    def uses_llm(self) -> bool:
        return any(self.controller_for(c).uses_llm for c in self.controller)


class FederatedCompareParams(FederatedParams):
    """The comparison: plain QFL, the paper's adaptive rule and a gentler rule, plus a classical
    federated logistic regression, on SST-2 and SUBJ, IID and Dirichlet(0.5)."""

    dataset: list[str] = Field(["sst2", "subj"], min_length=1, description="data sets compared")
    partition: list[str] = Field(["iid", "dirichlet:0.5"], min_length=1, description="partitions compared")
    controller: list[str] = Field(
        ["none", "adaptive", "dynamic-weighted"], min_length=1, description="controllers compared"
    )
    baseline: Literal["none", "logreg", "mlp"] = Field("logreg", description="classical federated baseline")
