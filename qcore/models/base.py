"""What every trained quantum model shares: a JSON config, safetensors weights, its circuits as
OpenQASM 3, atomic saving, a registry to load any saved model, and swapping the simulator.

A saved model is a folder::

    config.json            the model's config dataclass plus "model_type"
    weights.safetensors    every trainable tensor, by name
    <name>.qasm            each parametrised circuit, to check on load and to send to hardware
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from qiskit import QuantumCircuit, qasm3
from safetensors.torch import load_file, save_file
from torch import nn

from qcore.ablation import constant_output
from qcore.layer import QuantumLayer
from qcore.names import COMPLEX_DTYPES

DTYPES = {"complex64": torch.complex64, "complex128": torch.complex128}
assert tuple(DTYPES) == COMPLEX_DTYPES, "the configs' dtype names and the models' dtypes must agree"
WEIGHTS_FILE, CONFIG_FILE = "weights.safetensors", "config.json"
_MODEL_TYPES: dict[str, type[QuantumModel]] = {}

M = TypeVar("M", bound="QuantumModel")


def register_model(cls: type[M]) -> type[M]:
    """Make ``load_model`` able to rebuild ``cls`` from a folder whose config names its type."""
    _MODEL_TYPES[cls.model_type] = cls
    return cls


# The modules whose import registers each model type: ``qcore.models`` loads its names lazily,
# so a caller of :func:`load_model` may not have imported the model's module yet.
MODEL_MODULES = {"qdllm": "qcore.models.qdllm", "pqc_head": "qcore.models.pqc_head"}


def load_model(directory: str | os.PathLike[str], **backend_options: Any) -> QuantumModel:
    """Any model saved by :meth:`QuantumModel.save`, whatever its type."""
    raw = json.loads((Path(directory) / CONFIG_FILE).read_text())
    kind = raw.get("model_type", "qdllm")
    if kind in MODEL_MODULES:
        importlib.import_module(MODEL_MODULES[kind])
    if kind not in _MODEL_TYPES:
        raise ValueError(f"{directory}: model_type {kind!r} is unknown; known: {sorted(_MODEL_TYPES)}")
    return _MODEL_TYPES[kind].load(directory, **backend_options)


def real_dtype(complex_dtype: str) -> torch.dtype:
    return torch.float64 if DTYPES[complex_dtype] == torch.complex128 else torch.float32


def save_module(
    module: nn.Module, config: dict[str, Any], circuits: dict[str, QuantumCircuit], directory: str | os.PathLike[str]
) -> Path:
    """Write ``config.json``, every parameter as ``weights.safetensors`` and each circuit as
    ``<name>.qasm`` into ``directory``, atomically.

    The files go into a temporary sibling folder that is then renamed, so a reader never sees a
    half-written model; an existing ``directory`` is replaced.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tensors = {name: p.detach().cpu().contiguous() for name, p in module.named_parameters()}
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        for stem, circuit in circuits.items():
            (tmp / f"{stem}.qasm").write_text(qasm3.dumps(circuit))
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class QuantumModel(nn.Module):
    """Base of the hybrid models: subclasses build their layers from ``config`` in ``__init__``
    (taking backend options as keywords) and name their circuits in :meth:`circuits`.

    ``config`` is a frozen dataclass with a ``backend`` field: the simulator of the circuits
    meant for a quantum computer (the ones :meth:`with_backend` swaps), and a ``circuit`` field:
    ``"classical"`` trains :func:`~qcore.ablation.classical_standin` in that circuit's place.
    """

    model_type: ClassVar[str]  # the name in config.json that load_model dispatches on
    config_type: ClassVar[type]  # the config dataclass
    config: Any
    hardware_name: ClassVar[str]  # the attribute holding the hardware layer
    head: nn.Linear  # the classical output layer, set by each model's __init__
    standin: nn.Sequential  # with config.circuit == "classical", in place of the hardware layer
    frozen_circuit: torch.Tensor | None = None  # set by qcore.ablation: the hardware layer's output

    def circuits(self) -> dict[str, QuantumCircuit]:
        """File stem → parametrised circuit, as the config builds it."""
        raise NotImplementedError

    # -- the forward pass in three parts, so the quantum part can also run on hardware
    def angles(self, features: torch.Tensor) -> torch.Tensor:
        """The classical part: ``(batch, inputs)`` angles that drive :attr:`hardware_layer`."""
        raise NotImplementedError

    @property
    def hardware_layer(self) -> QuantumLayer:
        """The layer whose circuit is meant for a quantum computer (the one ``with_backend`` swaps)."""
        if self.config.circuit == "classical":
            raise ValueError(f"{type(self).__name__} has a classical stand-in for its circuit (circuit='classical')")
        layer = getattr(self, self.hardware_name)
        assert isinstance(layer, QuantumLayer)
        return layer

    @property
    def circuit_module(self) -> nn.Module:
        """What maps the angles to the readouts: the hardware layer, or its classical stand-in."""
        return self.standin if self.config.circuit == "classical" else self.hardware_layer

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from the hardware layer's expectation values."""
        # Backends may answer in another precision (aer computes in float64): match the head.
        return self.head(torch.real(z).to(self.head.weight.dtype))

    def circuit_output(self, inputs: torch.Tensor | None) -> torch.Tensor:
        """The hardware layer's output, a row per sample (a :class:`~qcore.ablation.CircuitSite`)."""
        if inputs is None:
            raise ValueError(f"{type(self).__name__}'s circuit reads the data: give the inputs to average over")
        return self.circuit_module(self.angles(inputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.frozen_circuit is None:
            return self.readout(self.circuit_output(features))
        z = constant_output(self.frozen_circuit, len(features), self.head.in_features, dtype=self.head.weight.dtype)
        return self.readout(z)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable numbers: circuit angles apart from the classical layers."""
        circuit = sum(m.weights.numel() for m in self.modules() if isinstance(m, QuantumLayer))
        total = sum(p.numel() for p in self.parameters())
        return {"circuit": circuit, "classical": total - circuit, "total": total}

    # -- persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write config, weights and circuits into ``directory``, atomically (:func:`save_module`)."""
        config = {"model_type": self.model_type, **asdict(self.config)}
        return save_module(self, config, self.circuits(), directory)

    @classmethod
    def load(cls: type[M], directory: str | os.PathLike[str], **backend_options: Any) -> M:
        """A model saved by :meth:`save`, on the backend its config names (with ``backend_options``).

        Refuses a folder whose circuits are not the ones the config builds today: the saved
        angles would drive different gates.
        """
        folder = Path(directory)
        raw = json.loads((folder / CONFIG_FILE).read_text())
        raw.pop("model_type", None)
        model = cls(cls.saved_config(raw), **backend_options)
        for stem, circuit in model.circuits().items():
            if (folder / f"{stem}.qasm").read_text() != qasm3.dumps(circuit):
                raise ValueError(
                    f"{folder / (stem + '.qasm')} differs from the circuit this version of qcore builds "
                    f"for {folder / CONFIG_FILE}: the saved angles would drive different gates"
                )
        model.load_parameters(load_file(folder / WEIGHTS_FILE))
        return model

    @classmethod
    def saved_config(cls, raw: dict[str, Any]) -> Any:
        """The config a saved ``config.json`` (without ``model_type``) describes; a model whose
        config gained a field overrides this to read older folders as they were trained."""
        return cls.config_type(**raw)

    def load_parameters(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy every trainable tensor in by name; refuse missing, extra or misshapen entries."""
        own = dict(self.named_parameters())
        if set(tensors) != set(own):
            raise ValueError(
                f"parameter names differ: missing {sorted(set(own) - set(tensors))}, "
                f"unexpected {sorted(set(tensors) - set(own))}"
            )
        with torch.no_grad():
            for name, p in own.items():
                if tensors[name].shape != p.shape:
                    raise ValueError(f"{name}: shape {tuple(tensors[name].shape)}, expected {tuple(p.shape)}")
                p.copy_(tensors[name])

    def with_backend(self: M, backend: str, **backend_options: Any) -> M:
        """A copy with the same weights whose hardware-bound circuits run on ``backend``.

        For evaluating a trained model under shots or device noise:
        ``model.with_backend("aer", shots=4000, noise="fake_torino", simulator_seed=0)``.
        """
        copy = type(self)(replace(self.config, backend=backend), **backend_options)
        copy.load_parameters(dict(self.named_parameters()))
        return copy.train(self.training)
