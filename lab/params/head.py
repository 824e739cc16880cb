"""The head flow's parameters (the hybrid PQC classification head on few-shot sentence
embeddings, with its noise ablation): the ``qllm run head`` options, the Prefect UI form and
``prefect.yaml``. The method is :mod:`lab.methods.pqc_head`."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from qcore.models.pqc_head_config import MAX_ENCODERS, PQCHeadConfig

from ..data import DataRequest
from . import DataOptions, Options, RunOptions, config_defaults, experiment, refuse_unused
from .body import BodyOptions
from .noise import (
    NoiseChecks,
    NoiseSetting,
    check_device_qubits,
    depolarizing_field,
    devices_field,
    noise_settings,
    shots_field,
)

if TYPE_CHECKING:
    from ..embedded import EmbeddedSplit

MAX_QUBITS = 16
ARCH = config_defaults(PQCHeadConfig)


class HeadFields(Options):
    """The head flow's own parameters (between the data and the run groups in the form)."""

    per_label: int = Field(256, ge=2, description="few-shot training examples per label")
    val_fraction: float = Field(
        0.15, gt=0, lt=1, description="share of the few-shot examples held out for early stopping"
    )
    test_size: int | None = Field(
        None, ge=1, description="test examples: a stratified sample of the rest of the split (None: all of it)"
    )
    split_seed: int = Field(0, ge=0, description="seed of the few-shot draw and the validation split")
    encoder: str | None = Field(
        None,
        description="sentence encoder: a sentence-transformers or HF encoder "
        "name or folder (default: the embedded all-MiniLM-L6-v2)",
    )
    encoder_batch_size: int = Field(64, ge=1, description="embedding batch size")
    shard_size: int = Field(
        4000, ge=1, description="texts per embedding shard: larger sets are split across the Dask workers"
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds (one head each)")
    qubits: int = Field(ARCH["qubits"], ge=2, le=MAX_QUBITS, description="module 2 qubits Q")
    encoders: int = Field(
        ARCH["encoders"],
        ge=0,
        le=MAX_ENCODERS,
        description="module 1 amplitude-encoded encoders E (0: embeddings straight to module 2)",
    )
    encoder_layers: int = Field(ARCH["encoder_layers"], ge=1, le=10, description="CNOT-RY layers of each encoder's PQC")
    layers: int = Field(ARCH["layers"], ge=1, le=20, description="CNOT-RY layers of PQC-1 (offsets 1, 2, …)")
    reuploads: int = Field(
        ARCH["reuploads"], ge=1, le=10, description="N: PQC-1 repeats with shared weights (data re-uploading)"
    )
    final_layers: int = Field(ARCH["final_layers"], ge=1, le=10, description="CNOT-RY layers of PQC-2")
    measured: int = Field(ARCH["measured"], ge=1, le=MAX_QUBITS, description="Q_m: qubits read out in Z")
    readout_scale: Literal["none", "sqrt_dim"] = Field(
        ARCH["readout_scale"],
        description="how module 2 starts: none (small angles, about 0.1 rad across samples) or sqrt_dim "
        "(module 1's readouts scaled by 2^(q/2), the earlier default: angles spread ~1.8 rad, often stuck at 0.5)",
    )
    circuit: Literal["quantum", "classical"] = Field(
        ARCH["circuit"],
        description="module 2: the circuit, or a classical MLP of as many parameters in its place (the ablation)",
    )
    epochs: int = Field(30, ge=1, le=1000, description="maximum training epochs")
    patience: int = Field(6, ge=1, description="early stopping: epochs without a better validation accuracy")
    batch_size: int = Field(32, ge=1, description="training batch size")
    lr: float = Field(
        0.02,
        gt=0,
        le=1,
        description="Adam learning rate (the classical layers', and the circuit's unless circuit_lr is given)",
    )
    circuit_lr: float | None = Field(
        None, gt=0, le=1, description="Adam learning rate of the circuit's angles (None: lr)"
    )
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    noise_shots: list[int] = shots_field([256, 1024, 4096])
    noise_depolarizing: list[float] = depolarizing_field([0.001, 0.01, 0.03])
    noise_devices: list[str] = devices_field(["fake_torino", "fake_brisbane"])
    device_shots: int = Field(1024, ge=1, description="shots under device noise")
    noise_samples: int = Field(200, ge=1, description="test examples in the noise ablation")
    noise_finetune_steps: int = Field(
        0, ge=0, description="optional: mini-batches of parameter-shift fine-tuning under each device's noise (0: none)"
    )


# The head's architecture: the PQCHeadConfig fields the flow sets, named once (by the config).
ARCH_FIELDS = tuple(name for name in ARCH if name in HeadFields.model_fields)


class HeadParams(RunOptions, HeadFields, BodyOptions, DataOptions, NoiseChecks):
    """Parameters of the head flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    # The parameters a study may not sweep (:mod:`lab.params.study`).
    not_axes: ClassVar[tuple[str, ...]] = (
        "seeds",
        "experiment",
        "dask_address",
        "encoder_batch_size",
        "shard_size",
        "noise_shots",
        "noise_depolarizing",
        "noise_devices",
        "device_shots",
        "noise_samples",
        "noise_finetune_steps",
    )
    experiment: str = experiment("qllm-head")

    @model_validator(mode="after")
    def _consistent(self) -> HeadParams:
        if self.measured > self.qubits:
            raise ValueError(f"measured={self.measured} exceeds qubits={self.qubits}")
        check_device_qubits(self.noise_devices, self.qubits, "module 2")
        if not self.noise_devices:
            refuse_unused(self, ("noise_finetune_steps",), "it fine-tunes under device noise; give noise_devices")
        return self

    def head_config(self, data: EmbeddedSplit, seed: int = 0) -> PQCHeadConfig:
        return PQCHeadConfig(
            in_features=data.in_features,
            num_classes=data.num_classes,
            seed=seed,
            **{name: getattr(self, name) for name in ARCH_FIELDS},
        )

    def data_request(self) -> DataRequest:
        """Which data set, few-shot draw and test sample the heads learn and are tested on."""
        return DataRequest(
            self.dataset,
            test_size=self.test_size,
            seed=self.split_seed,
            text_column=self.text_column,
            label_column=self.label_column,
            per_label=self.per_label,
        )

    def check_data(self) -> None:
        """Read and split the data set: bad names, paths, columns, labels or sizes fail here."""
        self.data_request().load()

    def noise_settings(self) -> list[NoiseSetting]:
        return noise_settings(self.noise_shots, self.noise_depolarizing, self.noise_devices, self.device_shots)
