"""QPA applied to a whole model: the chosen layers become :class:`QPALayer` s, and their circuits
run as one batch per forward pass.

Every adapted layer has its own circuit, but the circuits read no data, and layers of one shape
(qubits, depth) have the same circuit with different angles. Run one by one, MiniLM's 12 adapted
layers are 12 small simulations, each costing PyTorch's per-operation overhead in full. A
:class:`CircuitGroup` compiles the shape's circuit once with its angles as *inputs*, so the
``exact`` engine runs the group's layers as the rows of one batch and each layer reads its row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn

from qcore.adapters.base import AdapterModel
from qcore.adapters.qpa.config import QPAConfig
from qcore.adapters.qpa.layer import QPAGenerator, QPALayer
from qcore.simulators.base import Simulator
from qcore.simulators.exact import ExactSimulator


class CircuitGroup(nn.Module):
    """The circuits of QPA layers of one shape, simulated together: row ``i`` of the batch is
    layer ``i``'s circuit with its own angles, and autograd takes each row's gradient back to its
    layer's angles, as the layer's own run would."""

    def __init__(self, layers: list[QPALayer]) -> None:
        super().__init__()
        circuit = layers[0].generator.circuit
        self.simulator = ExactSimulator(
            circuit.circuit, inputs=circuit.weight_parameters, weights=[], observables=[], dtype=circuit.dtype
        )
        # Plain lists, not submodules: the layers are the model's, and so are their simulators.
        self.layers = layers
        self.own: list[Simulator] = [layer.generator.circuit.simulator for layer in layers]

    def runnable(self) -> list[QPALayer]:
        """The layers that would run their own circuit on its own `exact` simulator in a pass:
        not those merged, with fixed factors or a frozen circuit (which run no circuit), nor
        those moved to another simulator by :func:`~qcore.ablation.circuits_on` (which run
        theirs alone, on it)."""
        return [
            layer
            for layer, own in zip(self.layers, self.own, strict=True)
            if not layer.merged
            and layer.fixed is None
            and layer.generator.frozen_circuit is None
            and layer.generator.circuit.simulator is own
        ]

    def rows(self) -> list[tuple[QPAGenerator, torch.Tensor]]:
        """Each runnable layer's generator and its probabilities, from one batched simulation."""
        generators = [layer.generator for layer in self.runnable()]
        if not generators:
            return []
        angles = torch.stack([g.circuit.weights for g in generators])
        return list(zip(generators, self.simulator.probs(angles, angles.new_zeros(0)), strict=True))


class QPAModel(AdapterModel):
    """``QPAModel(hf_model, QPAConfig(target_modules=["lm_head"]))``: see :mod:`qcore.adapters.base`.

    A forward pass simulates the circuits once per shape group (:meth:`circuits_batched`); a
    layer called on its own (its ``delta_weight``, ``merge``) runs its own circuit.
    """

    config_class = QPAConfig
    layer_class = QPALayer

    def __init__(self, model: nn.Module, config: QPAConfig) -> None:
        super().__init__(model, config)
        shapes: dict[tuple[int, int], list[QPALayer]] = {}
        for _, layer in self.adapter_layers():
            if isinstance(layer, QPALayer) and not layer.generator.classical:
                shapes.setdefault((layer.generator.num_qubits, layer.generator.depth), []).append(layer)
        self.circuit_groups = nn.ModuleList(CircuitGroup(layers) for layers in shapes.values())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.circuits_batched():
            return self.model(*args, **kwargs)

    @contextmanager
    def circuits_batched(self) -> Iterator[None]:
        """Inside, each layer that would run its own `exact` circuit reads its probabilities from
        its group's batch, simulated once on entry with the angles as they are then."""
        handed = [row for group in cast("list[CircuitGroup]", self.circuit_groups) for row in group.rows()]
        before = [g.batched for g, _ in handed]
        try:
            for g, probs in handed:
                g.batched = probs
            yield
        finally:
            for (g, _), previous in zip(handed, before, strict=True):
                g.batched = previous
