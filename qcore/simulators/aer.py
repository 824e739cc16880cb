"""The `aer` backend: Qiskit Aer with noise, shots, and gradients by the parameter-shift rule.

This is the noise-aware path; the `exact` backend is the fast training path. Options (keyword
arguments of ``build_simulator("aer", ...)``):

``shots=None``
    ``None`` gives exact expectations and probabilities (Aer ``save_expectation_value`` /
    ``save_probabilities``); an integer ``N`` estimates them from ``N`` measured shots per
    parameter set. Observables are measured in qubit-wise commuting groups, one circuit (with its
    basis rotations) per group.
``simulator_seed=None``
    Fixes shot sampling (Aer ``seed_simulator``) and the transpiler's layout choice.
``noise=None``
    A fake IBM backend from ``qiskit_ibm_runtime.fake_provider``, by name (``"fake_torino"``) or
    class name (``"FakeTorino"``). The circuit is transpiled to the device (basis gates, coupling
    map, routing) and simulated with the device's calibrated noise: gate depolarizing and thermal
    relaxation errors, and readout errors when shots are measured. Exact (``shots=None``) noisy
    runs use the density-matrix method, so they are for small circuits; noisy shots use the
    cheaper of two methods (see *Methods* below).
``depolarizing=None``
    Simple depolarizing noise for ablations. A float ``p`` puts ``depolarizing_error(p)`` after
    every gate (one-qubit and multi-qubit gates alike); a pair ``(p1, p2)`` gives one-qubit gates
    ``p1`` and gates on two or more qubits ``p2``. The circuit is not transpiled; measurements
    stay ideal. Cannot be combined with ``noise``.
``client=None``, ``chunk_size=None``
    A ``dask.distributed.Client`` owned by the caller: the parameter sets of a run are split into
    chunks (by default one per worker thread, else at most ``chunk_size`` sets each), every chunk
    is one Aer run on a worker, and the results are joined in order. Exact results equal those of
    one process. With shots, chunk ``i`` samples with seed ``simulator_seed + i``: repeatable for the same
    seed and chunking, but not the same samples as a single-process run.
``method=None``
    Force the Aer method of noisy shot runs (``"density_matrix"`` or ``"statevector"``
    trajectories) instead of the cost rule below; for checks and measurements.
``trajectories=128``
    Noise realisations of a noisy trajectory run; its shots are drawn from their mean outcome
    distribution (see *Trajectories* below). ``None`` follows one realisation per shot.
``runtime_binding=True``
    Bind the parameter sets inside Aer (``runtime_parameter_bind_enable``); ``False`` binds every
    set with ``assign_parameters`` in Python instead (slower; a workaround should Aer's runtime
    binding misbehave). Both agree, with and without noise, in the installed Aer (see tests).

Methods. Without noise Aer simulates a statevector (shots are sampled from it); noisy exact
expectations need density matrices. Noisy shots can be drawn two ways with the same statistics:
from one density matrix per parameter set (cost ~ ``4**n`` per gate, whatever the shots), or as
one statevector trajectory per shot (cost ~ ``shots * 2**n`` per gate). Both costs grow with the
gate count alike, so the rule compares ``n`` (the circuit's active qubits, after transpiling)
with the shots only: density matrix when ``2**(n + 1) <= shots``, else trajectories. For
1,024 shots that is density matrix up to 9 qubits. Measured on the QD-LLM circuit on
``fake_torino`` (one thread, 1,024 shots, CPU seconds per parameter set; the chain ansatz keeps
its qubit count, the 8- to 11-qubit ring routes onto a 12-qubit hexagon):

    active qubits        6     7     8     9     10    11    12
    density matrix     0.07  0.14  0.08  0.21  0.90  3.4   17-19
    trajectories       2.4   3.4   0.19  0.25  0.39  0.55  1.6-1.8   (one per shot)

Trajectories. One trajectory per shot is the device's own statistics, and costs a statevector
run per shot. Most trajectories of a weakly noisy circuit differ little, so by default
(``trajectories=128``) a noisy shot run follows fewer noise realisations than shots: Aer runs
``trajectories`` of them, each saving the exact outcome probabilities of its final state, and
the ``shots`` outcomes are drawn here from their mean (readout errors then as below). Every shot
still follows the noisy distribution; shots that share a realisation are correlated, which adds
the realisations' spread / ``trajectories`` to the shot variance. On the 11-qubit QD-LLM student
on ``fake_torino`` (1,024 shots, one thread) that costs 0.30 s per sample at 64 realisations and
0.47 s at 128 (under load), against 2.1 s for one trajectory per shot and 15 s for the density
matrix; 128 realisations stay within 0.5 shot standard errors of the density matrix's exact
expectations (64: 0.9). ``trajectories=None`` (or ``>= shots``) gives one trajectory per shot.
These runs fuse gates and noise at every width (``fusion_threshold=1``; Aer's default fuses
only from 14 qubits) and take as many OpenMP threads as torch may use in the process
(``torch.get_num_threads()``: one on a Dask worker of the flows, which already fill every core).
One trajectory per shot runs with Aer's shot branching (shots share a state until a noise event
tells them apart), ~10x less CPU than Aer's automatic choice on the student. Shot branching in
the installed Aer (0.18) gets two things wrong, so neither is left to it: it samples readout
errors wrongly (expectations off by up to 30 standard errors against the density matrix, and
different from run to run with one seed), and its mean saved probabilities do not converge with
more shots (~3 shot standard errors off at 64 to 256), so fewer realisations run unbranched.
Readout errors are never given to Aer: :class:`ReadoutErrors` draws them here, per shot and
measured bit, from the device's calibrated confusion matrices, for every method.

Gradients. Before anything runs, controlled rotations (and ``r``, ``cp``, ``cu``, ...) are
decomposed so that every gate angle enters as a rotation ``exp(-i θ P / 2)`` (or a phase) and
obeys the two-term rule ``dE/dθ = (E(θ + π/2) - E(θ - π/2)) / 2``. Every angle then becomes its
own Parameter; angles are computed from ``x`` and ``w`` through the affine map of
:meth:`Program.angle_matrix` and the chain rule runs back through it. The unshifted and all
shifted parameter sets of a batch are one Aer run; only angles that reach an input needing a
gradient are shifted.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
import torch
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter, ParameterVector
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.quantum_info import PauliList, SparsePauliOp
from qiskit.result import Result
from qiskit.result.models import ExperimentResult
from qiskit.transpiler import Target
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel, depolarizing_error
from qiskit_aer.noise.device import basic_device_gate_errors, basic_device_readout_errors

from .base import register
from .program import SUPPORTED_GATES, Program, read_circuit

if TYPE_CHECKING:
    from qiskit.providers import BackendV2

SHIFT = math.pi / 2
TRAJECTORIES = 128  # noise realisations of a noisy trajectory run (see "Trajectories" above)
# Gates whose angles do not each obey the two-term shift rule (controlled rotations have
# generator eigenvalues {0, ±1/2}; ``r`` uses its φ twice); Qiskit's definitions of them do.
MULTI_TERM_GATES = ("crx", "cry", "crz", "cp", "cu1", "cu", "cu3", "r")
Depolarizing: TypeAlias = float | tuple[float, float]


# --------------------------------------------------------------------------- fake IBM devices
def _fake_backend_classes() -> dict[str, type]:
    """Fake backend classes by device name (``FakeTorino`` -> ``fake_torino``)."""
    from qiskit_ibm_runtime import fake_provider  # slow import, only needed for ``noise=``
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    classes = {}
    for cls_name in dir(fake_provider):
        cls = getattr(fake_provider, cls_name)
        if isinstance(cls, type) and issubclass(cls, FakeBackendV2) and cls is not FakeBackendV2:
            stem = re.sub(r"(V2|Backend)$", "", cls_name.removeprefix("Fake"))
            classes[f"fake_{stem.lower()}"] = cls
    return classes


@functools.lru_cache(maxsize=1)
def _fake_backend_names() -> tuple[str, ...]:
    return tuple(sorted(_fake_backend_classes()))


def fake_backend_names() -> list[str]:
    """Names accepted by ``noise=`` (class names such as ``FakeTorino`` are accepted too)."""
    return list(_fake_backend_names())


@functools.cache
def fake_backend_qubits(name: str) -> int:
    """Qubits of a fake device, built once per process (validating a study checks many points)."""
    return fake_backend(name).num_qubits


def fake_backend(name: str) -> BackendV2:
    """The fake IBM backend called ``name`` (``fake_torino`` or ``FakeTorino``)."""
    classes = _fake_backend_classes()
    cls = classes.get(name) or {c.__name__: c for c in classes.values()}.get(name)
    if cls is None:
        raise ValueError(f"unknown fake backend {name!r}; available: {', '.join(sorted(classes))}")
    return cls()


def _restricted_target(device: BackendV2, qubits: set[int]) -> Target:
    """The device's calibrations of the instructions on the physical ``qubits`` only.

    The full noise model of a 133-qubit device takes ~17 s to build and Aer re-reads all of it on
    every run (~7 s); a small circuit only ever meets the errors of the qubits it touches.
    """
    full = device.target
    sub = Target(num_qubits=full.num_qubits, dt=full.dt, qubit_properties=full.qubit_properties)
    for name, props in full.items():
        if not props or None in props:  # global or control-flow instructions: no calibration
            continue
        kept = {q: p for q, p in props.items() if set(q) <= qubits}
        if kept:
            sub.add_instruction(full.operation_from_name(name), kept, name=name)
    return sub


def _device_noise_model(device: BackendV2, qubits: set[int]) -> NoiseModel:
    """The gate errors of ``NoiseModel.from_backend(device)`` on the physical ``qubits``.

    Its readout errors are :func:`_device_readout_errors`, applied by :class:`ReadoutErrors`.
    """
    model = NoiseModel(basis_gates=list(device.operation_names))
    for name, q, error in basic_device_gate_errors(target=_restricted_target(device, qubits)):
        model.add_quantum_error(error, name, q)
    return model


def _device_readout_errors(device: BackendV2, qubits: set[int]) -> dict[int, np.ndarray]:
    """``P(recorded j | measured i)`` of each physical qubit, as ``NoiseModel.from_backend`` has it."""
    target = _restricted_target(device, qubits)
    return {q[0]: np.asarray(e.probabilities) for q, e in basic_device_readout_errors(target=target)}


def _depolarizing_noise(level: Depolarizing) -> NoiseModel:
    """Depolarizing errors after every supported gate: ``p1`` on one qubit, ``p2`` on more."""
    p1, p2 = (level, level) if isinstance(level, (int, float)) else level
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"depolarizing probabilities must lie in [0, 1], got {level!r}")
    gates = get_standard_gate_name_mapping()
    model = NoiseModel()
    for name in SUPPORTED_GATES:
        n = gates[name].num_qubits
        model.add_all_qubit_quantum_error(depolarizing_error(p1 if n == 1 else p2, n), name)
    return model


def _active_qubits(circuit: QuantumCircuit) -> set[int]:
    """Physical qubits that some instruction of a transpiled circuit touches."""
    return {circuit.find_bit(q).index for inst in circuit.data for q in inst.qubits}


# --------------------------------------------------------------------------- circuit preparation
def shift_ready_program(circuit: QuantumCircuit, inputs: Sequence[Parameter], weights: Sequence[Parameter]) -> Program:
    """The circuit read with every multi-term gate decomposed into two-term ones."""
    read_circuit(circuit, inputs, weights)  # refuse bad circuits with the original gate names
    while any(inst.operation.name in MULTI_TERM_GATES for inst in circuit.data):
        circuit = circuit.decompose(gates_to_decompose=list(MULTI_TERM_GATES))
    return read_circuit(circuit, inputs, weights)


def angle_circuit(program: Program) -> tuple[QuantumCircuit, list[Parameter]]:
    """The program as a circuit whose every gate angle is its own Parameter, in angle order."""
    theta = ParameterVector("θ", sum(len(g.angles) for g in program.gates))
    gates = get_standard_gate_name_mapping()
    circuit = QuantumCircuit(program.num_qubits)
    k = 0
    for gate in program.gates:
        template = gates[gate.name]
        n = len(gate.angles)
        circuit.append(type(template)(*theta[k : k + n]) if n else template, gate.qubits)
        k += n
    return circuit, list(theta)


@dataclass(frozen=True)
class MeasurementGroups:
    """Observables as qubit-wise commuting Pauli groups, each measured by one circuit.

    ``bases[g]`` holds one letter per qubit (qubit 0 first: ``X``, ``Y``, ``Z`` or ``I``);
    ``masks[g][t]`` has bit ``q`` set where term ``t`` of group ``g`` acts (an identity term has
    mask 0 and eigenvalue +1); ``coeffs[g][t, o]`` is that term's coefficient in observable ``o``.
    """

    bases: tuple[str, ...]
    masks: tuple[np.ndarray, ...]
    coeffs: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, observables: Sequence[SparsePauliOp]) -> MeasurementGroups:
        unique = {p.to_label(): p for op in observables for p in op.paulis}
        groups = PauliList(list(unique.values())).group_qubit_wise_commuting()
        where = {p.to_label(): (g, t) for g, grp in enumerate(groups) for t, p in enumerate(grp)}
        coeffs = [np.zeros((len(group), len(observables))) for group in groups]
        for o, op in enumerate(observables):
            for p, c in zip(op.paulis, op.coeffs, strict=True):
                g, t = where[p.to_label()]
                coeffs[g][t, o] += c.real
        bits = [1 << np.arange(group.num_qubits) for group in groups]
        return cls(
            bases=tuple("".join(_basis_letter(g, q) for q in range(g.num_qubits)) for g in groups),
            masks=tuple(((g.x | g.z) * b).sum(axis=1) for g, b in zip(groups, bits, strict=True)),
            coeffs=tuple(coeffs),
        )

    def circuits(self, circuit: QuantumCircuit) -> list[QuantumCircuit]:
        """One copy of ``circuit`` per group, rotated into the group's basis and measured."""
        measured = []
        for basis in self.bases:
            qc = circuit.copy()
            for q, letter in enumerate(basis):
                if letter == "Y":
                    qc.sdg(q)
                if letter in "XY":
                    qc.h(q)
            qc.measure_all()
            measured.append(qc)
        return measured


def _basis_letter(group: PauliList, qubit: int) -> str:
    """The one Pauli letter a qubit-wise commuting group measures on ``qubit``."""
    x, z = group.x[:, qubit].any(), group.z[:, qubit].any()
    return "Y" if x and z else "X" if x else "Z" if z else "I"


# --------------------------------------------------------------------------- readouts
Counts: TypeAlias = tuple[np.ndarray, np.ndarray]
"""Measured outcomes (as integers, clbit ``i`` = bit ``i``) and how often each was recorded."""


class Readout(Protocol):
    """Turns one Aer run into outputs. Both arguments hold one list per plan circuit with one
    entry per parameter set: Aer's results (what exact readouts read) and, with shots, the
    recorded counts after readout errors (what shot readouts read; empty without shots)."""

    def values(self, results: list[list[ExperimentResult]], counts: list[list[Counts]]) -> np.ndarray:
        """``(num_parameter_sets, num_outputs)``."""
        ...


def _counts(result: ExperimentResult) -> Counts:
    """The outcomes Aer measured for one parameter set."""
    counts = result.data.counts
    return np.array([int(k, 16) for k in counts], dtype=np.int64), np.array(list(counts.values()))


def _drawn_counts(result: ExperimentResult, shots: int, rng: np.random.Generator) -> Counts:
    """``shots`` outcomes drawn from the mean probabilities Aer saved over the trajectories."""
    probs = np.clip(np.asarray(result.data.probs, dtype=float), 0.0, None)
    times = rng.multinomial(shots, probs / probs.sum())
    outcomes = np.flatnonzero(times)
    return outcomes.astype(np.int64), times[outcomes]


def saving_probabilities(circuit: QuantumCircuit) -> QuantumCircuit:
    """``circuit`` with its final measurements replaced by ``save_probabilities`` of the
    measured qubits in clbit order, so that outcome ``k`` of the saved vector is the integer the
    measurements would have recorded."""
    measured = {
        circuit.find_bit(inst.clbits[0]).index: inst.qubits[0]
        for inst in circuit.data
        if inst.operation.name == "measure"
    }
    saving = circuit.remove_final_measurements(inplace=False)
    saving.save_probabilities([measured[c] for c in sorted(measured)], label="probs")
    return saving


@dataclass(frozen=True)
class ReadoutErrors:
    """A device's readout errors on one measured circuit, drawn here rather than by Aer.

    ``wrong[c, b]`` is the chance that clbit ``c``, measured as ``b``, is recorded as ``1 - b``;
    every shot and bit is drawn independently, as Aer's ``ReadoutError`` does (Aer's shot
    branching gets them wrong, see the module docstring).
    """

    wrong: np.ndarray

    @classmethod
    def of(cls, circuit: QuantumCircuit, confusion: dict[int, np.ndarray]) -> ReadoutErrors:
        """From each physical qubit's ``P(recorded j | measured i)``, for the clbit it is measured into."""
        wrong = np.zeros((circuit.num_clbits, 2))
        for inst in circuit.data:
            if inst.operation.name != "measure":
                continue
            qubit, clbit = circuit.find_bit(inst.qubits[0]).index, circuit.find_bit(inst.clbits[0]).index
            if qubit in confusion:
                wrong[clbit] = confusion[qubit][0, 1], confusion[qubit][1, 0]
        return cls(wrong)

    def apply(self, counts: Counts, rng: np.random.Generator) -> Counts:
        """The counts as recorded: each shot's bits flipped with their error probabilities."""
        outcomes, times = counts
        clbits = np.arange(len(self.wrong))
        bits = (np.repeat(outcomes, times)[:, None] >> clbits) & 1
        flipped = bits ^ (rng.random(bits.shape) < self.wrong[clbits, bits])
        recorded, how_often = np.unique((flipped << clbits).sum(axis=1), return_counts=True)
        return recorded, how_often


@dataclass(frozen=True)
class SavedExpvals:
    """Exact expectations saved by ``save_expectation_value`` under labels ``e0, e1, ...``."""

    num_observables: int

    def values(self, results: list[list[ExperimentResult]], counts: list[list[Counts]]) -> np.ndarray:
        return np.array([[getattr(r.data, f"e{i}") for i in range(self.num_observables)] for r in results[0]])


@dataclass(frozen=True)
class SavedProbs:
    """Exact probabilities saved by ``save_probabilities`` under the label ``probs``."""

    def values(self, results: list[list[ExperimentResult]], counts: list[list[Counts]]) -> np.ndarray:
        return np.array([r.data.probs for r in results[0]])


@dataclass(frozen=True)
class CountedExpvals:
    """Expectations estimated from the counts of one measured circuit per commuting group."""

    groups: MeasurementGroups

    def values(self, results: list[list[ExperimentResult]], counts: list[list[Counts]]) -> np.ndarray:
        out = np.zeros((len(counts[0]), self.groups.coeffs[0].shape[1]))
        for group_counts, masks, coeffs in zip(counts, self.groups.masks, self.groups.coeffs, strict=True):
            for j, (outcomes, times) in enumerate(group_counts):
                parity = np.bitwise_count(outcomes[:, None] & masks[None, :]) & 1  # uint8
                signs = 1.0 - 2.0 * parity
                out[j] += (times @ signs / times.sum()) @ coeffs
        return out


@dataclass(frozen=True)
class CountedProbs:
    """Probabilities estimated from the counts of the circuit measured in the Z basis."""

    num_qubits: int

    def values(self, results: list[list[ExperimentResult]], counts: list[list[Counts]]) -> np.ndarray:
        out = np.zeros((len(counts[0]), 2**self.num_qubits))
        for j, (outcomes, times) in enumerate(counts[0]):
            out[j, outcomes] = times / times.sum()
        return out


# --------------------------------------------------------------------------- one Aer run
@dataclass(frozen=True)
class AerPlan:
    """Circuits and settings for one readout; picklable, so a Dask worker can run a chunk.

    ``options`` are further ``AerSimulator`` options of the method; ``readout_errors`` (one per
    circuit, shots only) are drawn on the counts after Aer. With ``trajectories``, the circuits
    save their outcome probabilities instead of measuring, Aer runs that many noise realisations,
    and the ``shots`` are drawn from their mean here.
    """

    circuits: tuple[QuantumCircuit, ...]
    parameters: tuple[Parameter, ...]
    readout: Readout
    method: str
    options: dict[str, Any]
    shots: int | None
    seed: int | None
    noise_model: NoiseModel | None
    readout_errors: tuple[ReadoutErrors, ...] | None
    runtime_binding: bool
    trajectories: int | None = None


def execute(plan: AerPlan, angles: np.ndarray, seed_offset: int = 0) -> Result:
    """Every circuit of the plan for every row of ``angles``, as one Aer run; Aer's own result.

    Aer orders results circuit by circuit, each circuit's parameter sets in order. It gets as many
    threads as torch may use here (see the module docstring).
    """
    simulator = AerSimulator(
        method=plan.method,
        noise_model=plan.noise_model,
        runtime_parameter_bind_enable=plan.runtime_binding,
        max_parallel_threads=torch.get_num_threads(),
        **plan.options,
    )
    options: dict[str, Any] = {"shots": plan.trajectories or plan.shots or 1}
    if plan.seed is not None:
        options["seed_simulator"] = plan.seed + seed_offset
    if plan.runtime_binding and plan.parameters:
        binds = {p: angles[:, i] for i, p in enumerate(plan.parameters)}
        job = simulator.run(list(plan.circuits), [binds] * len(plan.circuits), **options)
    else:
        job = simulator.run(
            [
                circuit.assign_parameters(dict(zip(plan.parameters, row, strict=True)), strict=False)
                for circuit in plan.circuits
                for row in angles
            ],
            **options,
        )
    result = job.result()
    if not result.success:
        raise RuntimeError(f"Aer run failed: {result.status}")
    return result


def run_plan(plan: AerPlan, angles: np.ndarray, seed_offset: int = 0) -> np.ndarray:
    """The plan's outputs for every row of ``angles``: ``(len(angles), num_outputs)``.

    With shots, the outcomes drawn here (from trajectories' probabilities) and the readout errors
    use the seed Aer got, so a seeded run repeats.
    """
    result = execute(plan, angles, seed_offset)
    n = len(angles)
    per_circuit = [result.results[c * n : (c + 1) * n] for c in range(len(plan.circuits))]
    if plan.shots is None:
        return plan.readout.values(per_circuit, [])
    rng = np.random.default_rng(None if plan.seed is None else plan.seed + seed_offset)
    shots = plan.shots
    counts = [
        [_drawn_counts(r, shots, rng) if plan.trajectories else _counts(r) for r in results] for results in per_circuit
    ]
    if plan.readout_errors is not None:
        counts = [
            [errors.apply(c, rng) for c in circuit_counts]
            for circuit_counts, errors in zip(counts, plan.readout_errors, strict=True)
        ]
    return plan.readout.values(per_circuit, counts)


# --------------------------------------------------------------------------- the simulator
class AerShiftSimulator:
    """The `aer` simulator backend for one circuit (see the module docstring for the options)."""

    def __init__(
        self,
        circuit: QuantumCircuit,
        *,
        inputs: Sequence[Parameter],
        weights: Sequence[Parameter],
        observables: Sequence[SparsePauliOp],
        dtype: torch.dtype = torch.float64,
        shots: int | None = None,
        simulator_seed: int | None = None,
        noise: str | None = None,
        depolarizing: Depolarizing | None = None,
        client: Any = None,
        chunk_size: int | None = None,
        method: str | None = None,
        trajectories: int | None = TRAJECTORIES,
        runtime_binding: bool = True,
    ) -> None:
        if shots is not None and (not isinstance(shots, Integral) or shots < 1):
            raise ValueError(f"shots must be a positive integer or None, got {shots!r}")
        if noise is not None and depolarizing is not None:
            raise ValueError("give either noise= (a fake device) or depolarizing=, not both")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if method is not None and method not in NOISY_SHOT_METHODS:
            raise ValueError(f"method must be one of {list(NOISY_SHOT_METHODS)} or None, got {method!r}")
        if trajectories is not None and (not isinstance(trajectories, Integral) or trajectories < 1):
            raise ValueError(f"trajectories must be a positive integer or None, got {trajectories!r}")
        self.num_qubits = circuit.num_qubits
        self.observables = [SparsePauliOp(o) for o in observables]
        program = shift_ready_program(circuit, inputs, weights)
        self.a_x, self.a_w, self.const = program.angle_matrix()
        self.circuit, self.parameters = angle_circuit(program)
        self.dtype = dtype.to_real()  # outputs are real; Aer always simulates in double precision
        self.shots, self.seed = shots, simulator_seed
        self.client, self.chunk_size = client, chunk_size
        self.runtime_binding, self.method, self.trajectories = runtime_binding, method, trajectories
        self.device = None if noise is None else fake_backend(noise)
        self.noise_model = None if depolarizing is None else _depolarizing_noise(depolarizing)
        self._layout = None if self.device is None else self._device_layout(self.device)
        self._plans: dict[str, AerPlan] = {}

    # -- public interface
    def expval(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(batch, num_observables)`` expectation values, differentiable by parameter shift."""
        if not self.observables:
            raise ValueError("this simulator has no observables; pass some, or use probs()")
        return self._apply("expval", x, w)

    def probs(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(batch, 2**num_qubits)`` probabilities, little-endian, differentiable by shift."""
        return self._apply("probs", x, w)

    # -- gradients
    def _apply(self, kind: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.a_x.shape[0] or w.shape != (self.a_w.shape[0],):
            raise ValueError(
                f"expected x of shape (batch, {self.a_x.shape[0]}) and w of shape "
                f"({self.a_w.shape[0]},), got {tuple(x.shape)} and {tuple(w.shape)}"
            )
        grad = torch.is_grad_enabled()
        return _ParameterShift.apply(x, w, self, kind, grad and x.requires_grad, grad and w.requires_grad)

    def angles(self, x: torch.Tensor, w: torch.Tensor) -> np.ndarray:
        """Every gate angle for every batch row: ``(batch, num_angles)``."""
        x_np = x.detach().cpu().double().numpy()
        w_np = w.detach().cpu().double().numpy()
        return x_np @ self.a_x + w_np @ self.a_w + self.const

    def shifted_columns(self, need_x: bool, need_w: bool) -> np.ndarray:
        """Angles worth shifting: those that depend on an input that needs a gradient."""
        live = np.zeros(len(self.const), dtype=bool)
        if need_x:
            live |= (self.a_x != 0).any(axis=0)
        if need_w:
            live |= (self.a_w != 0).any(axis=0)
        return np.flatnonzero(live)

    # -- running
    def run(self, kind: str, angles: np.ndarray) -> np.ndarray:
        """Outputs of ``kind`` for every row of ``angles``: one Aer run, or one per Dask chunk."""
        plan = self._plan(kind)
        if self.client is None:
            return run_plan(plan, angles)
        workers = sum(self.client.nthreads().values())
        n_chunks = math.ceil(len(angles) / self.chunk_size) if self.chunk_size else workers
        chunks = np.array_split(angles, max(1, min(n_chunks, len(angles))))
        futures = self.client.map(run_plan, [plan] * len(chunks), chunks, range(len(chunks)))
        return np.concatenate(self.client.gather(futures))

    def _plan(self, kind: str) -> AerPlan:
        if kind not in self._plans:
            self._plans[kind] = self._build_plan(kind)
        return self._plans[kind]

    def _build_plan(self, kind: str) -> AerPlan:
        """Circuits (transpiled to the device if any), save instructions, readout and method."""
        readout: Readout
        if self.shots is None:
            logical = [self.circuit]
            readout = SavedExpvals(len(self.observables)) if kind == "expval" else SavedProbs()
        elif kind == "expval":
            groups = MeasurementGroups.of(self.observables)
            logical, readout = groups.circuits(self.circuit), CountedExpvals(groups)
        else:
            measured = self.circuit.copy()
            measured.measure_all()
            logical, readout = [measured], CountedProbs(self.num_qubits)
        circuits, noise_model, confusion = self._compile(logical)
        for circuit in circuits:
            # Irrelevant to the outputs, and Aer's runtime binding fails on a parametrised global
            # phase ("instruction param position out of range"), which transpiling can leave.
            circuit.global_phase = 0
        if self.shots is None:
            for circuit, qubits in zip(circuits, self._final_qubits(circuits), strict=True):
                if kind == "expval":
                    for i, o in enumerate(self.observables):
                        circuit.save_expectation_value(o, qubits, label=f"e{i}")
                else:
                    circuit.save_probabilities(qubits, label="probs")
        width = max(len(_active_qubits(c)) for c in circuits)
        method, options = _simulation(noise_model is not None, self.shots, width, self.method)
        errors = None if confusion is None else tuple(ReadoutErrors.of(c, confusion) for c in circuits)
        trajectories = self._trajectories(method, noise_model is not None)
        if trajectories:
            circuits, options = [saving_probabilities(c) for c in circuits], dict(MIXTURE_OPTIONS)
        return AerPlan(
            circuits=tuple(circuits),
            parameters=tuple(self.parameters),
            readout=readout,
            method=method,
            options=options,
            shots=self.shots,
            seed=self.seed,
            noise_model=noise_model,
            readout_errors=errors,
            runtime_binding=self.runtime_binding,
            trajectories=trajectories,
        )

    def _trajectories(self, method: str, noisy: bool) -> int | None:
        """The noise realisations a run follows, when fewer than its shots (else ``None``)."""
        fewer = self.trajectories is not None and self.shots is not None and self.trajectories < self.shots
        return self.trajectories if noisy and method == "statevector" and fewer else None

    def _compile(
        self, logical: list[QuantumCircuit]
    ) -> tuple[list[QuantumCircuit], NoiseModel | None, dict[int, np.ndarray] | None]:
        """Transpile to the fake device, if any: the circuits, the device's gate errors and its
        readout confusion matrices on the qubits used (else the depolarizing model, if any)."""
        if self.device is None:
            return [c.copy() for c in logical], self.noise_model, None
        circuits = transpile(
            logical,
            backend=self.device,
            initial_layout=self._layout,
            optimization_level=1,
            seed_transpiler=self._transpile_seed,
        )
        used = set().union(*(_active_qubits(c) for c in circuits))
        return circuits, _device_noise_model(self.device, used), _device_readout_errors(self.device, used)

    def _final_qubits(self, circuits: list[QuantumCircuit]) -> list[list[int]]:
        """Where each logical qubit ends up: ``SparsePauliOp.apply_layout(layout)`` in index form.

        Saving a logical observable on these physical qubits equals saving the laid-out operator
        on all of the device's qubits, but leaves Aer free to drop the idle ones.
        """
        if self.device is None:
            return [list(range(self.num_qubits))] * len(circuits)
        return [c.layout.final_index_layout() for c in circuits]

    @property
    def _transpile_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    def _device_layout(self, device: BackendV2) -> list[int]:
        """One layout for every circuit of this simulator, so all see the same device qubits."""
        if self.num_qubits > device.num_qubits:
            raise ValueError(f"the circuit has {self.num_qubits} qubits but {device.name} has only {device.num_qubits}")
        transpiled = transpile(self.circuit, backend=device, optimization_level=1, seed_transpiler=self._transpile_seed)
        return transpiled.layout.initial_index_layout(filter_ancillas=True)


NOISY_SHOT_METHODS = ("density_matrix", "statevector")
# Aer options of one trajectory per shot, and of fewer realisations saving their probabilities.
TRAJECTORY_OPTIONS: dict[str, Any] = {
    "shot_branching_enable": True,
    "shot_branching_sampling_enable": True,
    "fusion_threshold": 1,
}
MIXTURE_OPTIONS: dict[str, Any] = {"fusion_threshold": 1}


def _simulation(noisy: bool, shots: int | None, qubits: int, forced: str | None) -> tuple[str, dict[str, Any]]:
    """The Aer method and its options for circuits on ``qubits``, by the cost rule of the module
    docstring; ``forced`` replaces the rule's choice for noisy shots."""
    if not noisy:
        return "statevector", {}
    if shots is None:
        return "density_matrix", {}
    method = forced or ("density_matrix" if 2 ** (qubits + 1) <= shots else "statevector")
    return method, dict(TRAJECTORY_OPTIONS) if method == "statevector" else {}


class _ParameterShift(torch.autograd.Function):
    """Outputs of an :class:`AerShiftSimulator`; gradients by the two-term parameter-shift rule.

    The forward pass already runs the shifted circuits (in the same Aer run as the unshifted
    ones), so the backward pass is only the chain rule through the affine angle map.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        engine: AerShiftSimulator,
        kind: str,
        need_x: bool,
        need_w: bool,
    ) -> torch.Tensor:
        angles = engine.angles(x, w)
        batch, n_angles = angles.shape
        cols = engine.shifted_columns(need_x, need_w)
        # shifted[s, k] is the batch with angle cols[k] moved by +π/2 (s = 0) or -π/2 (s = 1)
        shifted = np.broadcast_to(angles, (2, len(cols), batch, n_angles)).copy()
        k = np.arange(len(cols))
        shifted[0, k, :, cols] += SHIFT
        shifted[1, k, :, cols] -= SHIFT
        values = engine.run(kind, np.concatenate([angles, shifted.reshape(-1, n_angles)]))
        plus, minus = values[batch:].reshape(2, len(cols), batch, values.shape[1])
        ctx.engine, ctx.cols, ctx.n_angles = engine, cols, n_angles
        ctx.jacobian = (plus - minus) / 2  # (shifted angle, batch, output)
        ctx.x_like = {"dtype": x.dtype, "device": x.device}
        ctx.w_like = {"dtype": w.dtype, "device": w.device}
        return torch.as_tensor(values[:batch], dtype=engine.dtype, device=x.device)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        engine: AerShiftSimulator = ctx.engine
        g = grad_out.detach().cpu().double().numpy()
        d_angles = np.zeros((g.shape[0], ctx.n_angles))
        d_angles[:, ctx.cols] = np.einsum("bo,kbo->bk", g, ctx.jacobian)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.as_tensor(d_angles @ engine.a_x.T, **ctx.x_like)
        if ctx.needs_input_grad[1]:
            grad_w = torch.as_tensor(d_angles.sum(axis=0) @ engine.a_w.T, **ctx.w_like)
        return grad_x, grad_w, None, None, None, None


@register("aer")
def build_aer(circuit: QuantumCircuit, **kwargs: Any) -> AerShiftSimulator:
    """Factory for ``build_simulator("aer", ...)``; options as in the module docstring."""
    return AerShiftSimulator(circuit, **kwargs)
