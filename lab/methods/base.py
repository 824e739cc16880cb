"""The one interface every method of the lab implements.

A method is its parameters (one pydantic model: the ``qllm run`` options, the Prefect UI form,
``prepare``'s input), the jobs those parameters expand to (one training per seed and sweep
point), how it trains and evaluates one job, and the classical baselines it is compared with on
the same data. The flows and tasks above this layer only orchestrate: they never know what a
method computes. :mod:`lab.methods` holds the registry, keyed by method id.

    method = QDLLM()
    params = method.params(qubits=[8], seeds=[0, 1])
    method.check(params)                         # bad input refused in seconds, before any work
    data = ...                                   # the split the method reads (see FeatureMethod)
    for job in method.jobs(params, data):
        result = method.train(job, data, root, Hooks())   # a TrainingResult
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from qiskit import QuantumCircuit

from ..data import DataRequest, Dataset
from ..embedded import EmbeddedSplit
from ..results import TrainingResult
from ..search_space import Dimension
from ..setfit_body import BodyJob
from ..teacher import TeacherSpec


class Job(Protocol):
    """One training: named for the Prefect UI and MLflow, with its seed."""

    @property
    def name(self) -> str: ...

    @property
    def seed(self) -> int: ...


class Budget(Protocol):
    """The shared budget of a comparison (``qllm run compare``): one data set and split, one seed
    set, and what the budget means to each kind of method. Each method turns it into its own
    parameters with :meth:`Method.for_budget`, keeping its own learning rate and defaults."""

    dataset: str
    text_column: str | None
    label_column: str | None
    train_size: int | None
    test_size: int | None
    split_seed: int
    epochs: int  # feature methods: epochs (the PQC head: at most; it stops early)
    batch_size: int
    finetune_steps: int  # adapters: AdamW steps of finetune_batch_size texts
    finetune_batch_size: int
    max_length: int
    qubits: int  # QD-LLM student
    blocks: int
    head_qubits: int  # PQC head
    head_encoders: int
    val_fraction: float
    clients: int  # federated
    rounds: int
    controller: str
    llm_steps: int


# The cost model of a training on the exact simulator (:func:`exact_training_seconds`): the two
# rates are one core's mini-batch and forward timings of PQC heads of 2 to 12 qubits on this
# 2-core machine; against 11 whole trainings (training, evaluation, storing, figures; 0.6 to 10 s)
# the estimates were 0.6 to 1.5 times the measured seconds, as close as grouping trainings needs.
GATE_SECONDS = 4e-4  # per gate and mini-batch, forward and backward: the per-operation overhead
AMPLITUDE_SECONDS = 1e-8  # per gate, amplitude and sample of a forward pass: the state's size
FIXED_SECONDS = 0.5  # per training: building, evaluating and storing the model, drawing its figures


def exact_training_seconds(
    circuits: Sequence[QuantumCircuit], *, epochs: int, batch_size: int, train: int, val: int, test: int
) -> float:
    """Seconds to train on ``train`` samples (validated on ``val`` each epoch) and evaluate on
    ``test`` a model whose samples each pass through ``circuits`` on the exact simulator: small
    states cost per gate and mini-batch, large ones per gate and amplitude (a backward pass about
    twice a forward one); the evaluation runs the test samples three times (metrics,
    predictions, the circuit ablation) and the training samples once."""
    gates = sum(c.size() for c in circuits)
    amplitudes = sum(c.size() * 2**c.num_qubits for c in circuits)
    batches = epochs * math.ceil(train / batch_size)
    passes = epochs * (3 * train + val) + 3 * test + train
    return FIXED_SECONDS + batches * gates * GATE_SECONDS + passes * amplitudes * AMPLITUDE_SECONDS


class ModelJob:
    """Base of the jobs that train one ``qcore`` model: its seed and simulator are its config's."""

    model: Any

    @property
    def seed(self) -> int:
        return int(self.model.seed)

    @property
    def backend(self) -> str:
        return str(self.model.backend)


def _quiet(message: str) -> None:
    return None


def _no_progress(done: int, note: str) -> None:
    return None


@dataclass(frozen=True)
class Objective:
    """What tuning optimises: a training result's metric (its held-out value in a trial) and
    whether a larger or a smaller value is better."""

    metric: str
    direction: Literal["maximize", "minimize"]

    @property
    def sign(self) -> int:
        """+1 or -1: ``sign * value`` is larger the better ``value`` is."""
        return 1 if self.direction == "maximize" else -1


ACCURACY = Objective("accuracy", "maximize")


@dataclass(frozen=True)
class Hooks:
    """What the orchestration lends a training: where it logs (``log``, and ``warn`` for what a
    user must see), where it shows how far it is (``progress(done, note)``, ``done`` out of the
    job's total epochs, steps or rounds; a training reports 0 once it is sure to run), a Dask
    client over which Aer's parameter-shift batches may spread, and (federated) the executor of
    a round's client trainings. ``None``: in this process, one after another.

    ``report(step, value)``, set by a tuning trial (:mod:`lab.tuning`), asks a training for
    its :class:`Objective`'s metric on the held-out split as it goes (each epoch, or a few times over the steps);
    it raises to stop a trial the pruner gives up on; ``save_models=False`` (a trial's) skips
    what only a model someone loads needs (a fine-tune's merged folder and its check)."""

    log: Callable[[str], None] = _quiet
    warn: Callable[[str], None] = _quiet
    progress: Callable[[int, str], None] = _no_progress
    dask_client: Any = None
    fit: Callable[[list[Any]], list[Any]] | None = None
    report: Callable[[int, float], None] | None = None
    save_models: bool = True


P = TypeVar("P", bound=BaseModel)
J = TypeVar("J")
D = TypeVar("D")


class Method(ABC, Generic[P, J, D]):
    """A method: its parameter model, its jobs, one training, its baselines.

    ``id`` is the registry key (``qllm run compare --methods``), ``label`` its leaderboard row;
    ``baselines`` are the classical models its own flow trains beside it (a leaderboard has them
    as methods of their own, tuned apart).
    ``data_fields`` are the parameters that shape its data (study points that agree on them share
    one preparation); the parameters a study may not sweep are its parameter model's ``not_axes``.
    """

    id: ClassVar[str]
    label: ClassVar[str]
    params: type[P]
    is_baseline: ClassVar[bool] = False  # a classical reference rather than a method under study
    retries: ClassVar[int] = 2  # of its training task: a lost worker is worth a retry
    model_tag: ClassVar[str] = ""  # MLflow tag of a trained model, for `qllm predict` and hardware
    data_fields: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def check(self, params: P) -> None:
        """Refuse what cannot run (data, models, sizes), naming the value, before any work."""

    @abstractmethod
    def jobs(self, params: P, data: D) -> list[J]:
        """The trainings ``params`` ask for, in order."""

    @abstractmethod
    def train(self, job: J, data: D, root: str, hooks: Hooks) -> TrainingResult:
        """Train and evaluate one job (reusing a finished one stored under ``root``)."""

    def split(self, params: P, data: D) -> D:
        """The method's own view of its data (e.g. a validation hold-out to stop early on)."""
        return data

    def seeded(self, params: P, seed: int) -> P:
        """``params`` for one training seed (the seed list, or the seed, of its model)."""
        update = {"seeds": [seed]} if "seeds" in type(params).model_fields else {"seed": seed}
        return type(params).model_validate({**params.model_dump(), **update})

    def baselines(self, params: P, data: D, seed: int) -> list[TrainingResult]:
        """The classical models this method is compared with on the same data, for one seed."""
        return []

    def cost(self, job: J, data: D) -> float | None:
        """About how many seconds training ``job`` takes on one core, from its settings alone
        (a study groups short trainings into one task by it); ``None``: unknown."""
        return None

    @abstractmethod
    def for_budget(self, budget: Budget, seeds: list[int]) -> list[P]:
        """This method's parameters under a comparison's shared budget, covering ``seeds``."""

    # --- tuning (lab.tuning): what a trial may change, and what it reads ---

    search_space: ClassVar[dict[str, Dimension]] = {}  # parameter → its range; {}: nothing to tune

    def tuning_view(self, data: D, fraction: float, seed: int) -> D:
        """The data a trial reads: a hold-out of the training split as its test split."""
        raise NotImplementedError(f"{self.id} cannot be tuned")

    def tuning_space(self, params: P) -> dict[str, Dimension]:
        """What a tune of ``params`` searches by default: the declared space."""
        return dict(self.search_space)

    def objective(self, params: P) -> Objective:
        """What a trial of ``params`` is scored by: held-out accuracy unless the method says otherwise."""
        return ACCURACY

    def for_trial(self, params: P, values: dict[str, Any]) -> P:
        """``params`` with a trial's values (a list field takes the value as its one entry),
        validated again: a value outside the field's range is refused, naming it."""
        fields = type(params).model_fields
        update = {k: [v] if is_list_field(fields[k]) else v for k, v in values.items()}
        return type(params).model_validate({**params.model_dump(), **update})


class ClassicalStandin(Method[Any, Any, Any]):
    """Mixed in before a method with a circuit: the same method with a classical module of the
    circuit's size in the circuit's place (``circuit="classical"``), trained and tuned the same
    way, a classical row of the leaderboard (the ablation of what the circuit adds).
    ``standin_values`` are what turn the method's parameters into the stand-in's."""

    is_baseline = True
    standin_values: ClassVar[dict[str, Any]] = {"circuit": "classical"}

    def for_budget(self, budget: Budget, seeds: list[int]) -> list[Any]:
        own = super().for_budget(budget, seeds)  # type: ignore[safe-super]  # the method mixed into defines it
        return [self.for_trial(p, self.standin_values) for p in own]


class FeatureMethod(Method[P, J, EmbeddedSplit]):
    """A method that learns from teacher features: the data set, split and teacher are named by
    its parameters, and every such method reads the same :class:`EmbeddedSplit` shape."""

    @abstractmethod
    def data_request(self, params: P) -> DataRequest:
        """Which data set, split and sizes."""

    @abstractmethod
    def teacher(self, params: P) -> TeacherSpec:
        """Which teacher (or sentence encoder) turns the texts into features."""

    shard_field: ClassVar[str] = "teacher_shard_size"

    def shard_size(self, params: P) -> int:
        """Texts per teacher shard: larger sets are split across the Dask workers."""
        return int(getattr(params, self.shard_field))

    def body_job(self, params: P, data: Dataset) -> BodyJob | None:
        """A fine-tune of the sentence encoder on ``data``'s training texts that the teacher then
        reads instead of the encoder itself (:mod:`lab.setfit_body`); ``None``: the encoder as is."""
        return None

    def check(self, params: P) -> None:
        """Read and split the data set: bad names, paths, columns or sizes fail here."""
        self.data_request(params).load()

    def tuning_view(self, data: EmbeddedSplit, fraction: float, seed: int) -> EmbeddedSplit:
        return data.tuning_view(fraction, seed)


def is_list_field(field: FieldInfo) -> bool:
    """A parameter that holds a list (a sweep in the method's own flow, e.g. QD-LLM's qubits)."""
    annotation = field.annotation
    return get_origin(annotation) is list or any(get_origin(a) is list for a in get_args(annotation))
