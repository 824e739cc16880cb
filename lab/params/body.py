"""The SetFit body options of the flows whose models read sentence embeddings (the encoder as it
is, or fine-tuned contrastively first), with the settings they make. Light, like every module of
:mod:`lab.params`; the fine-tune itself is :mod:`lab.setfit_body`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from . import Options

# Allowed ranges (inclusive), named once for the validation here and in the flows' parameters.
ITERATIONS = (1, 100)
EPOCHS = (1, 20)
BATCH_SIZE = (2, 512)
MAX_LR = 1e-2


class BodyError(ValueError):
    """A SetFit body setting or training set that cannot be used; the message names the value."""


@dataclass(frozen=True)
class BodySettings:
    """The body phase's settings (setfit's ``TrainingArguments`` of the same meaning).

    ``iterations`` is setfit's ``num_iterations``: each training sentence contributes that many
    positive and as many negative pairs (2·iterations·n pairs an epoch).
    """

    iterations: int = 20
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-5
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("iterations", ITERATIONS), ("epochs", EPOCHS), ("batch_size", BATCH_SIZE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise BodyError(f"SetFit body {name}={value!r} is invalid: allowed integers {lo}..{hi}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not 0 < self.lr <= MAX_LR:
            raise BodyError(f"SetFit body lr={self.lr!r} is invalid: allowed 0 < lr <= {MAX_LR}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise BodyError(f"SetFit body seed={self.seed!r} is invalid: give a non-negative integer")


class BodyOptions(Options):
    """The options of a flow whose models read sentence embeddings: the encoder as it is, or its
    SetFit body (fine-tuned on the training texts first)."""

    body: Literal["frozen", "setfit"] = Field(
        "frozen",
        description="sentence encoder body: frozen, or setfit (fine-tuned contrastively on the training "
        "examples no model validates, tunes or tests on, before every model reads its embeddings)",
    )
    body_iterations: int = Field(
        BodySettings.iterations,
        ge=ITERATIONS[0],
        le=ITERATIONS[1],
        description="SetFit body: positive and as many negative pairs per training text (setfit num_iterations)",
    )
    body_epochs: int = Field(
        BodySettings.epochs, ge=EPOCHS[0], le=EPOCHS[1], description="SetFit body: epochs over the pairs"
    )
    body_batch_size: int = Field(
        BodySettings.batch_size, ge=BATCH_SIZE[0], le=BATCH_SIZE[1], description="SetFit body: pairs per step"
    )
    body_lr: float = Field(BodySettings.lr, gt=0, le=MAX_LR, description="SetFit body: learning rate")
    body_seed: int = Field(BodySettings.seed, ge=0, description="SetFit body: training seed")

    def body_settings(self) -> BodySettings:
        return BodySettings(
            iterations=self.body_iterations,
            epochs=self.body_epochs,
            batch_size=self.body_batch_size,
            lr=self.body_lr,
            seed=self.body_seed,
        )
