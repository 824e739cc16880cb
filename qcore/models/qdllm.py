"""The QD-LLM student: a small variational circuit distilled from a language-model teacher.

Quantum Knowledge Distillation for Large Language Models, https://arxiv.org/abs/2505.13205

    features (d) → Linear(d → n) → min-max scale to [0, 10] → RX(x_i) on n qubits
                 → QD-LLM ansatz (blocks) → ⟨Z_i⟩ on every qubit → Linear(n → classes) → logits

With the paper's 11 qubits and 2 blocks the circuit has 144 trained angles; the two dense layers
carry the rest of the parameters (4,235 + 24 for 384-d MiniLM features and 2 classes).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from qiskit import qasm3
from safetensors.torch import load_file, save_file
from torch import nn

from qcore.circuits import ModelCircuit, angle_encoding, compose, qdllm_ansatz
from qcore.layer import QuantumLayer, z_observables

DTYPES = {"complex64": torch.complex64, "complex128": torch.complex128}
WEIGHTS_FILE, CONFIG_FILE, CIRCUIT_FILE = "weights.safetensors", "config.json", "circuit.qasm"


@dataclass(frozen=True)
class QDLLMConfig:
    """Everything needed to rebuild a student (its weights aside); stored as ``config.json``.

    ``angle_range``: each sample's ``qubits`` pre-activations are min-max scaled to
    ``[0, angle_range]`` (the paper's ``[0, 10]``) before they become RX angles; ``scale_eps``
    is the smallest max − min divided by, so a sample whose values are all equal gets angles 0.
    ``backend`` names the simulator the quantum layer runs on (``exact`` for training);
    ``dtype`` its precision; ``seed`` fixes the initial weights of all three layers.
    """

    in_features: int
    num_classes: int
    qubits: int = 11
    blocks: int = 2
    angle_range: float = 10.0
    scale_eps: float = 1e-6
    entanglement: str = "ring"
    backend: str = "exact"
    dtype: str = "complex64"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.num_classes < 2:
            raise ValueError(
                f"need in_features >= 1 and num_classes >= 2, got {self.in_features} and {self.num_classes}"
            )
        if self.qubits < 2 or self.blocks < 1:
            raise ValueError(f"need qubits >= 2 and blocks >= 1, got {self.qubits} and {self.blocks}")
        if not self.angle_range > 0 or not self.scale_eps > 0:
            raise ValueError(
                f"angle_range and scale_eps must be positive, got {self.angle_range} and {self.scale_eps}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QDLLMConfig:
        return cls(**json.loads(text))

    def model_circuit(self) -> ModelCircuit:
        """The RX encoding followed by the ansatz, with its input and weight parameters."""
        return compose(
            angle_encoding(self.qubits, "rx", params="x"),
            qdllm_ansatz(self.qubits, self.blocks, self.entanglement, params="θ"),
        )


class QDLLMStudent(nn.Module):
    """The hybrid student; ``forward`` maps ``(batch, in_features)`` to ``(batch, num_classes)`` logits.

    Extra keyword arguments are options of the quantum layer's backend (e.g. ``shots=`` for
    ``aer``); they are a run-time choice and are not saved with the model.
    """

    def __init__(self, config: QDLLMConfig, **backend_options: object):
        super().__init__()
        self.config = config
        complex_dtype = DTYPES[config.dtype]
        real = torch.float64 if complex_dtype == torch.complex128 else torch.float32
        circuit = config.model_circuit()
        # Seed the dense layers' default initialisation without touching the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder = nn.Linear(config.in_features, config.qubits, dtype=real)
            self.head = nn.Linear(config.qubits, config.num_classes, dtype=real)
        self.quantum = QuantumLayer(
            circuit.circuit,
            inputs=circuit.inputs,
            weights=circuit.weights,
            observables=z_observables(config.qubits),
            backend=config.backend,
            dtype=complex_dtype,
            seed=config.seed,
            **backend_options,
        )

    def angles(self, features: torch.Tensor) -> torch.Tensor:
        """The RX angles: the encoder's outputs min-max scaled to ``[0, angle_range]`` per sample.

        Like the paper's code, each sample is scaled across its own ``qubits`` values, so its
        smallest value becomes angle 0 and its largest ``angle_range``; the dataset's scale does
        not matter. ``max − min`` is clamped to ``scale_eps`` so equal values give angles 0,
        not NaN.
        """
        a = self.encoder(features.to(self.encoder.weight.dtype))
        lo = a.min(dim=-1, keepdim=True).values
        hi = a.max(dim=-1, keepdim=True).values
        return self.config.angle_range * (a - lo) / (hi - lo).clamp_min(self.config.scale_eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.quantum(self.angles(features))
        # Backends may answer in another precision (aer computes in float64): match the head.
        return self.head(torch.real(z).to(self.head.weight.dtype))

    def parameter_counts(self) -> dict[str, int]:
        """Trainable numbers, circuit angles apart from the classical dense layers."""
        circuit = self.quantum.weights.numel()
        total = sum(p.numel() for p in self.parameters())
        return {"circuit": circuit, "classical": total - circuit, "total": total}

    # -- persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``weights.safetensors``, ``config.json`` and ``circuit.qasm`` into ``directory``.

        The files are written into a temporary sibling folder that is then renamed, so a reader
        never sees a half-written model; an existing ``directory`` is replaced. The QASM file is
        the parametrised circuit in OpenQASM 3 (inputs ``x``, trained angles ``θ``), for hardware
        runs and for checking, on load, that the circuit library still builds the same circuit.
        """
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            tensors = {name: p.detach().cpu().contiguous() for name, p in self.named_parameters()}
            save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(self.config.to_json())
            (tmp / CIRCUIT_FILE).write_text(qasm3.dumps(self.config.model_circuit().circuit))
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

    @classmethod
    def load(cls, directory: str | os.PathLike[str], **backend_options: object) -> QDLLMStudent:
        """A student saved by :meth:`save`, on the backend its config names (with ``backend_options``).

        Refuses a folder whose ``circuit.qasm`` is not the circuit the config builds today.
        """
        folder = Path(directory)
        config = QDLLMConfig.from_json((folder / CONFIG_FILE).read_text())
        saved_qasm = (folder / CIRCUIT_FILE).read_text()
        if saved_qasm != qasm3.dumps(config.model_circuit().circuit):
            raise ValueError(
                f"{folder / CIRCUIT_FILE} differs from the circuit this version of qcore builds for "
                f"{folder / CONFIG_FILE}: the saved angles would drive different gates"
            )
        model = cls(config, **backend_options)
        model.load_parameters(load_file(folder / WEIGHTS_FILE))
        return model

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

    def with_backend(self, backend: str, **backend_options: object) -> QDLLMStudent:
        """A copy with the same weights whose circuit runs on ``backend`` (e.g. noisy ``aer``).

        For evaluating a trained model under shots or device noise:
        ``model.with_backend("aer", shots=4000, noise="fake_torino", simulator_seed=0)``.
        """
        copy = type(self)(replace(self.config, backend=backend), **backend_options)
        copy.load_parameters(dict(self.named_parameters()))
        return copy.train(self.training)
