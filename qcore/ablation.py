"""How much does the circuit contribute? Evaluate a trained model with each circuit's output
replaced by a constant: its mean over the training inputs.

    means = circuit_mean(student, train_x)           # {site name: the circuit's mean output}
    with circuit_replaced(student, means):           # forward passes use the constants
        ablated = evaluate(student, test_x, test_y)
    # on exit the model is as it was

A *circuit site* (:class:`CircuitSite`) is a module with one circuit whose output the rest of
the module reads: :meth:`CircuitSite.circuit_output` gives that output, one row per circuit
input, and while ``frozen_circuit`` is set the module uses that constant (broadcast to every
row) instead of running the circuit. Sites are found by walking the model, so an adapted model
with several adapted layers has one site per layer. What each site's constant replaces:

- QD-LLM student, PQC head (:class:`~qcore.models.base.QuantumModel`): the hardware layer's
  ⟨Z⟩ readouts, averaged over the samples (for the head, module 2's output, so module 1 is
  bypassed too); the logits become the same for every input.
- Federated VQC: the class probabilities (sums of basis-state probabilities), averaged over
  the samples: the same as averaging the ``2ⁿ`` probabilities, since summing is linear.
- QPA (each layer's :class:`~qcore.adapters.qpa.QPAGenerator`): its circuit has no inputs, so
  the constant is the probability vector's mean entry, ``2⁻ⁿ``, in every entry.
- QTHA (each :class:`~qcore.adapters.qtha.QTHALayer`): the QNN's output relative to the zero
  input, ``Q(b) − Q(0)``, averaged over its inputs (the columns of ``B``); the correction to
  ``B`` is then the same vector in every column. ``circuit_replaced(model, 0.0)`` removes the
  correction (``B' = B``).

The circuits of the QD-LLM student, the PQC head and the VQC read the data (``circuit_mean``
needs the training inputs); the adapters' read the adapter's own weights (``inputs=None``).

The other ablation trains a classical module in the circuit's place: ``circuit="classical"``
in the config of the QD-LLM student, the PQC head (module 2), the federated VQC and QTHA (its
QNN) builds :func:`classical_standin`, an MLP with the circuit's input and output widths and
about its number of trainable angles, trained by the same code. Its output activation keeps the
circuit's range: ``tanh`` for ⟨Z⟩ readouts, ``softmax`` for the VQC's class probabilities.
QPA's circuit reads nothing and emits ``2ⁿ`` probabilities from fewer angles than that, which no
MLP of as many parameters can: :func:`probability_standin` keeps the count exactly instead (see
there). A stand-in is a site too: the mean ablation replaces its output as it does a circuit's.

A third asks what the trained model is worth on a quantum computer: :func:`circuits_on` runs
every :class:`~qcore.layer.QuantumLayer` of any model on another backend (Aer with shots,
depolarizing or fake-device noise) while inside, with the same weights::

    with circuits_on(model, "aer", shots=1024, noise="fake_torino", simulator_seed=0):
        noisy = evaluate(model, test_x, test_y)
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from qcore.layer import QuantumLayer

STANDIN_TOLERANCE = 0.1  # how far a stand-in's parameter count may miss the circuit's


@runtime_checkable
class CircuitSite(Protocol):
    """A module whose circuit's output can be replaced by a constant."""

    frozen_circuit: torch.Tensor | None  # set: used in place of the circuit's output, every row

    def circuit_output(self, inputs: torch.Tensor | None) -> torch.Tensor:
        """``(rows, width)``: the circuit's output, one row per circuit input, as the module uses it."""
        ...


def constant_output(value: torch.Tensor, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    """``value`` (a scalar or one row) repeated to ``shape``: what a frozen site reads."""
    return value.to(dtype).expand(*shape)


def circuit_sites(model: nn.Module) -> dict[str, CircuitSite]:
    """Every circuit site in ``model``, by module name (``""``: the model itself)."""
    sites = {name: m for name, m in model.named_modules() if isinstance(m, CircuitSite)}
    if not sites:
        raise ValueError(f"{type(model).__name__} has no circuit site: nothing to replace")
    return sites


@torch.no_grad()
def circuit_mean(
    model: nn.Module, inputs: torch.Tensor | None = None, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Each site's circuit output averaged over its rows, with ``model`` reading ``inputs``
    (the training inputs; ``None`` for adapters, whose circuits read no data)."""
    means = {}
    for name, site in circuit_sites(model).items():
        if inputs is None:
            rows = site.circuit_output(None)
        else:
            rows = torch.cat(
                [site.circuit_output(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
            )
        means[name] = rows.mean(dim=0)
    return means


@contextmanager
def circuit_replaced(model: nn.Module, values: Mapping[str, torch.Tensor] | float) -> Iterator[None]:
    """Forward passes inside use ``values`` in place of the named sites' circuit outputs (a
    number: for every site); on exit every site runs its circuit again."""
    sites = circuit_sites(model)
    if isinstance(values, Mapping):
        if unknown := sorted(set(values) - set(sites)):
            raise ValueError(f"{unknown} are not circuit sites of {type(model).__name__}; its sites: {sorted(sites)}")
        chosen = {name: torch.as_tensor(v).detach() for name, v in values.items()}
    else:
        chosen = {name: torch.tensor(float(values)) for name in sites}
    previous = {name: sites[name].frozen_circuit for name in chosen}
    try:
        for name, value in chosen.items():
            sites[name].frozen_circuit = value
        yield
    finally:
        for name, before in previous.items():
            sites[name].frozen_circuit = before


@contextmanager
def circuits_on(model: nn.Module, backend: str = "aer", **options: Any) -> Iterator[list[QuantumLayer]]:
    """Forward passes inside run every quantum layer of ``model`` on ``backend`` with ``options``
    (e.g. ``shots=1024, noise="fake_torino"``); on exit each runs on its own simulator again.

    Yields the layers, in module order. Layer ``i`` samples with ``simulator_seed + i``, so two
    layers with the same circuit (an adapter's, in every adapted layer) draw different shots.
    Every simulator is built before any is swapped: a bad option changes nothing. Every layer
    moves: the PQC head, whose module 1 stays exact, has :meth:`QuantumModel.with_backend
    <qcore.models.base.QuantumModel.with_backend>` instead.
    """
    layers = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantum layer: nothing to run on {backend!r}")
    seed = options.pop("simulator_seed", None)
    swapped = [
        layer.build_simulator(backend, **options, **({} if seed is None else {"simulator_seed": seed + i}))
        for i, layer in enumerate(layers)
    ]
    previous = [(layer.backend, layer.simulator) for layer in layers]
    try:
        for layer, simulator in zip(layers, swapped, strict=True):
            _run_on(layer, backend, simulator)
        yield layers
    finally:
        for layer, (name, simulator) in zip(layers, previous, strict=True):
            _run_on(layer, name, simulator)


def _run_on(layer: QuantumLayer, backend: str, simulator: Any) -> None:
    """Swap the layer's simulator: `exact`'s is a child module, `aer`'s a plain attribute, and
    ``nn.Module`` refuses to overwrite the one with the other."""
    del layer.simulator
    layer.backend, layer.simulator = backend, simulator


def mlp_size(widths: tuple[int, ...]) -> int:
    """Weights and biases of a chain of ``nn.Linear`` layers through ``widths``."""
    return sum((a + 1) * b for a, b in itertools.pairwise(widths))


def standin_widths(inputs: int, outputs: int, params: int) -> tuple[int, ...]:
    """The widths ``inputs → hidden… → outputs`` (one or two hidden layers) of the stand-in for a
    circuit of ``params`` angles.

    Among the networks within ``STANDIN_TOLERANCE`` of ``params``, the one whose narrowest
    hidden layer is widest (then fewer layers, then the closest count), so that matching the
    count does not squeeze the network through one unit; if none is that close, the closest.
    Two hidden layers make the count adjustable in finer steps than one.
    """
    # Each hidden unit adds at least inputs + 1 (first) or outputs + 1 (last) numbers: wider only overshoots.
    h1s, h2s = range(1, params // (inputs + 1) + 2), range(1, params // (outputs + 1) + 2)
    candidates = [(inputs, h, outputs) for h in h1s] + [(inputs, a, b, outputs) for a in h1s for b in h2s]

    def miss(w: tuple[int, ...]) -> int:
        return abs(mlp_size(w) - params)

    close = [w for w in candidates if miss(w) <= STANDIN_TOLERANCE * params]
    if not close:
        return min(candidates, key=miss)
    return min(close, key=lambda w: (-min(w[1:-1]), len(w), miss(w)))


class ClassicalStandin(nn.Sequential):
    """An MLP in a circuit's place; training gives its parameters the circuit's learning rate
    (:func:`qcore.training.parameter_groups`), so the ablation is trained as the circuit is."""


def classical_standin(inputs: int, outputs: int, params: int, last: nn.Module, dtype: torch.dtype) -> ClassicalStandin:
    """The circuit's classical stand-in: a ``tanh`` MLP sized by :func:`standin_widths`, then ``last``."""
    widths = standin_widths(inputs, outputs, params)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b, dtype=dtype), nn.Tanh()]
    return ClassicalStandin(*layers[:-1], last)


class FixedMap(nn.Module):
    """``x ↦ x·Wᵀ`` with a random ``W`` (``outputs × inputs``, entries of variance ``1/inputs``)
    drawn once and never trained: a buffer, as a circuit's gates are fixed."""

    weight: torch.Tensor  # buffer

    def __init__(self, inputs: int, outputs: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(outputs, inputs, dtype=dtype) / math.sqrt(inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def probability_standin(states: int, params: int, dtype: torch.dtype) -> ClassicalStandin:
    """The stand-in for a circuit with no inputs whose ``params`` angles give ``states``
    basis-state probabilities (QPA's): ``params`` trainable numbers (a bias-free ``Linear``
    read at the constant input 1), a :class:`FixedMap` to ``states`` logits, a softmax.

    "Of equal parameter count" here means exactly ``params`` trained numbers, like the circuit's
    angles; the fixed map is structure, like the circuit's gates. An MLP cannot hold the count:
    from a constant input it computes a constant, so its hidden layers only reparametrise one
    vector, and its last layer alone has at least ``2·states`` numbers, more than QPA's
    ``n·depth`` angles whenever ``2ⁿ⁺¹ > n·depth`` (every QPA layer in practice: 6 qubits ×
    depth 8 are 48 angles for 64 states). Both reach a ``params``-dimensional family of
    probability vectors; which family is what the ablation compares.
    """
    layers = {
        "angles": nn.Linear(1, params, bias=False, dtype=dtype),
        "map": FixedMap(params, states, dtype),
        "softmax": nn.Softmax(-1),
    }
    return ClassicalStandin(OrderedDict(layers))
