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
- Federated VQC: the ``2ⁿ`` basis-state probabilities, averaged over the samples.
- QPA (each layer's :class:`~qcore.adapters.qpa.QPAGenerator`): its circuit has no inputs, so
  the constant is the probability vector's mean entry, ``2⁻ⁿ``, in every entry.
- QTHA (each :class:`~qcore.adapters.qtha.QTHALayer`): the QNN's output relative to the zero
  input, ``Q(b) − Q(0)``, averaged over its inputs (the columns of ``B``); the correction to
  ``B`` is then the same vector in every column. ``circuit_replaced(model, 0.0)`` removes the
  correction (``B' = B``).

A site's circuit inputs come from the data for the first two kinds (``circuit_mean`` needs the
inputs) and from the model's own weights for the adapters (``inputs=None``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import nn


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
