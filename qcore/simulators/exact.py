"""The `exact` backend: a Qiskit circuit compiled once into a batched PyTorch statevector program.

Why it is fast. At 8 qubits a training step is dominated by the number of PyTorch operations, not
by arithmetic, so the compiler fuses aggressively:

* Runs of single-qubit gates become one *layer*: every gate is written as
  ``e^{iγ} U3(θ, φ, λ)``, whose four entries are ``cos(a) · e^{ib}`` with ``a, b`` affine in the
  circuit parameters. A whole layer's matrices are therefore one affine map, one ``cos`` and one
  ``exp``; Z- and Y-rotations on a qubit fuse algebraically into one such matrix.
* A layer is applied as Kronecker products over groups of neighbouring qubits (one matmul per
  group, built by a log-depth product tree), and the first layer on ``|0…0⟩`` gives a product
  state directly, without touching a ``2^n`` matrix.
* CNOT, SWAP and Toffoli layers are permutations of basis states: a run of them is one gather.
* Diagonal gates (RZZ, CZ, CP, CRZ, …) fuse into one phase vector ``exp(i Θ S)``.
* Trailing permutations and diagonal gates before a Z-type readout are folded into the readout:
  ``⟨Z⟩`` comes from the probabilities through one matmul.

At 16–20 qubits memory traffic dominates; the group size bounds how many passes a layer makes
over the state. Everything is differentiated by autograd; complex64 and complex128 are supported,
on CPU or CUDA.

On CPU every call runs its kernels, forward and backward, at ``threads.kernel_threads`` intra-op
threads: one for small states, more only for large ones, never more than the caller's
``torch.get_num_threads()`` nor the usable cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp

from .base import register
from .program import Angle, Gate, Program, read_circuit
from .threads import kernel_threads, run_at_threads

HALF_PI = math.pi / 2

# --------------------------------------------------------------------------- gate algebra
# Every single-qubit gate is, in time order, RZ(λ) then RY(θ) then RZ(φ), times a phase e^{iγ},
# with λ, θ, φ, γ affine in the gate's angles. Runs of such gates on one qubit merge into as few
# *blocks* e^{iγ} RZ(φ) RY(θ) RZ(λ) as possible: Z-rotations add up on either side of the RY, and
# RY rotations add up while no Z-rotation separates them. RY·RY·RZ on a qubit is one block.
Z_, Y_ = "z", "y"


def _primitive_steps(gate: Gate) -> tuple[list[tuple[str, Angle]], Angle]:
    """The gate as time-ordered Z/Y rotations plus a global phase."""
    a = gate.angles
    c = Angle
    pi, half, quarter = math.pi, HALF_PI, math.pi / 4
    name = gate.name
    if name == "rz":
        return [(Z_, a[0])], c(0)
    if name in ("p", "u1"):
        return [(Z_, a[0])], _scale(a[0], 0.5)
    if name == "ry":
        return [(Y_, a[0])], c(0)
    if name == "rx":  # RX(θ) = RZ(−π/2) RY(θ) RZ(π/2)
        return [(Z_, c(half)), (Y_, a[0]), (Z_, c(-half))], c(0)
    if name in ("u", "u3"):  # U3(θ,φ,λ) = e^{i(φ+λ)/2} RZ(φ) RY(θ) RZ(λ)
        return [(Z_, a[2]), (Y_, a[0]), (Z_, a[1])], _scale(_sum(a[1], a[2]), 0.5)
    if name == "u2":
        return [(Z_, a[1]), (Y_, c(half)), (Z_, a[0])], _scale(_sum(a[0], a[1]), 0.5)
    if name == "r":  # R(θ,φ) = U3(θ, φ−π/2, −φ+π/2)
        return [(Z_, _sum(_scale(a[1], -1), c(half))), (Y_, a[0]), (Z_, _sum(a[1], c(-half)))], c(0)
    constant = {
        "id": ([], 0.0),
        "x": ([(Z_, pi), (Y_, pi)], half),
        "y": ([(Z_, half), (Y_, pi), (Z_, half)], half),
        "z": ([(Z_, pi)], half),
        "h": ([(Z_, pi), (Y_, half)], half),
        "s": ([(Z_, half)], quarter),
        "sdg": ([(Z_, -half)], -quarter),
        "t": ([(Z_, quarter)], math.pi / 8),
        "tdg": ([(Z_, -quarter)], -math.pi / 8),
        "sx": ([(Z_, half), (Y_, half), (Z_, -half)], quarter),
        "sxdg": ([(Z_, half), (Y_, -half), (Z_, -half)], -quarter),
    }
    steps, phase = constant[name]
    return [(kind, c(v)) for kind, v in steps], c(phase)


def _sum(left: Angle, right: Angle) -> Angle:
    """``left + right`` for affine angles."""

    def merge(a: tuple[tuple[int, float], ...], b: tuple[tuple[int, float], ...]):
        out: dict[int, float] = dict(a)
        for i, v in b:
            out[i] = out.get(i, 0.0) + v
        return tuple(sorted((i, v) for i, v in out.items() if v != 0.0))

    return Angle(left.const + right.const, merge(left.x_coeffs, right.x_coeffs), merge(left.w_coeffs, right.w_coeffs))


def _scale(angle: Angle, k: float) -> Angle:
    return Angle(
        k * angle.const, tuple((i, k * v) for i, v in angle.x_coeffs), tuple((i, k * v) for i, v in angle.w_coeffs)
    )


@dataclass
class _Block:
    """``e^{iγ} RZ(φ) RY(θ) RZ(λ)`` being accumulated."""

    lam: Angle = Angle(0.0)
    theta: Angle = Angle(0.0)
    phi: Angle = Angle(0.0)
    gamma: Angle = Angle(0.0)
    has_y: bool = False
    z_after_y: bool = False

    def entry_args(self) -> list[Angle]:
        """The 8 affine numbers ``a00..a11, b00..b11`` with entry ``= cos(a)·e^{ib}``.

        ``e^{iγ}RZ(φ)RY(θ)RZ(λ) = e^{iγ'} U3(θ,φ,λ)`` with ``γ' = γ − (φ+λ)/2``, and
        ``U3 = [[cos(θ/2), −e^{iλ}sin(θ/2)], [e^{iφ}sin(θ/2), e^{i(φ+λ)}cos(θ/2)]]``.
        """
        half = _scale(self.theta, 0.5)
        g = _sum(self.gamma, _scale(_sum(self.phi, self.lam), -0.5))
        a = [half, _sum(half, Angle(HALF_PI)), _sum(half, Angle(-HALF_PI)), half]
        b = [g, _sum(g, self.lam), _sum(g, self.phi), _sum(_sum(g, self.phi), self.lam)]
        return a + b


def _fuse(gates: Sequence[Gate]) -> list[_Block]:
    """Merge a qubit's single-qubit gates (time order) into few blocks."""
    blocks = [_Block()]
    for gate in gates:
        steps, phase = _primitive_steps(gate)
        blocks[-1].gamma = _sum(blocks[-1].gamma, phase)
        for kind, angle in steps:
            block = blocks[-1]
            if kind == Z_:
                if block.has_y:
                    block.phi, block.z_after_y = _sum(block.phi, angle), True
                else:
                    block.lam = _sum(block.lam, angle)
            elif block.z_after_y:
                blocks.append(_Block(theta=angle, has_y=True))
            else:
                block.theta, block.has_y = _sum(block.theta, angle), True
    return blocks


_IDENTITY_ARGS = _Block().entry_args()

PERMUTATIONS = {"cx", "swap", "ccx", "cswap"}
DIAGONALS = {"cz", "cp", "cu1", "crz", "rzz", "ccz"}
SINGLE_QUBIT = {
    "id",
    "x",
    "y",
    "z",
    "h",
    "s",
    "sdg",
    "t",
    "tdg",
    "sx",
    "sxdg",
    "rx",
    "ry",
    "rz",
    "p",
    "u1",
    "u2",
    "u",
    "u3",
    "r",
}


def _dense_matrix(name: str, angles: list[torch.Tensor], rdtype: torch.dtype) -> torch.Tensor:
    """4×4 matrix (Qiskit order, first qubit least significant) of a non-diagonal 2-qubit gate."""
    cdtype = torch.complex128 if rdtype == torch.float64 else torch.complex64
    j = torch.tensor(1j, dtype=cdtype)

    def controlled(u: torch.Tensor) -> torch.Tensor:
        # control = first qubit (bit 0), target = second (bit 1): acts on indices 1 and 3.
        batch = u.shape[:-2]
        m = torch.zeros(*batch, 4, 4, dtype=cdtype)
        m[..., 0, 0] = 1
        m[..., 2, 2] = 1
        m[..., 1, 1], m[..., 1, 3] = u[..., 0, 0], u[..., 0, 1]
        m[..., 3, 1], m[..., 3, 3] = u[..., 1, 0], u[..., 1, 1]
        return m

    def rot(t: torch.Tensor, pauli: str) -> torch.Tensor:
        c, s = torch.cos(t / 2).to(cdtype), torch.sin(t / 2).to(cdtype)
        if pauli == "x":
            return torch.stack([torch.stack([c, -j * s], -1), torch.stack([-j * s, c], -1)], -2)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)

    def pauli_exp(t: torch.Tensor, p: np.ndarray) -> torch.Tensor:
        # exp(-i t/2 P) = cos(t/2) I − i sin(t/2) P for a two-qubit Pauli P.
        c, s = torch.cos(t / 2).to(cdtype), torch.sin(t / 2).to(cdtype)
        eye = torch.eye(4, dtype=cdtype)
        pm = torch.as_tensor(p, dtype=cdtype)
        return c[..., None, None] * eye - j * s[..., None, None] * pm

    from qiskit.quantum_info import Pauli  # local: only dense gates need it

    if name == "crx":
        return controlled(rot(angles[0], "x"))
    if name == "cry":
        return controlled(rot(angles[0], "y"))
    if name in ("rxx", "ryy", "rzx"):
        label = {"rxx": "XX", "ryy": "YY", "rzx": "XZ"}[name]
        return pauli_exp(angles[0], Pauli(label).to_matrix())
    if name in ("cu", "cu3"):
        th, ph, la = angles[0], angles[1], angles[2]
        gam = angles[3] if name == "cu" else torch.zeros_like(th)
        c, s = torch.cos(th / 2), torch.sin(th / 2)
        u = torch.stack(
            [
                torch.stack([c * torch.exp(1j * gam), -s * torch.exp(1j * (gam + la))], -1),
                torch.stack([s * torch.exp(1j * (gam + ph)), c * torch.exp(1j * (gam + ph + la))], -1),
            ],
            -2,
        )
        return controlled(u)
    raise KeyError(name)


_CONSTANT_DENSE = {"cy", "ch", "iswap", "ecr"}
DENSE = {"crx", "cry", "rxx", "ryy", "rzx", "cu", "cu3"} | _CONSTANT_DENSE


def _constant_dense(name: str) -> np.ndarray:
    from qiskit.circuit.library import get_standard_gate_name_mapping

    return np.array(get_standard_gate_name_mapping()[name].to_matrix())


# --------------------------------------------------------------------------- compiled ops
class _AffineMap(torch.nn.Module):
    """Columns ``x @ ax + w @ aw + c``; parts that are all zero are skipped at run time."""

    # buffers (``None`` when that part is all zero)
    ax: torch.Tensor | None
    awt: torch.Tensor | None
    c: torch.Tensor

    def __init__(self, angles: Sequence[Angle], num_inputs: int, num_weights: int, rdtype: torch.dtype):
        super().__init__()
        ax = np.zeros((num_inputs, len(angles)))
        aw = np.zeros((num_weights, len(angles)))
        c = np.array([a.const for a in angles], dtype=float)
        for col, a in enumerate(angles):
            for i, v in a.x_coeffs:
                ax[i, col] += v
            for i, v in a.w_coeffs:
                aw[i, col] += v
        self.uses_x = bool(ax.any())
        self.uses_w = bool(aw.any())
        self.register_buffer("ax", torch.as_tensor(ax, dtype=rdtype) if self.uses_x else None)
        self.register_buffer("awt", torch.as_tensor(aw.T.copy(), dtype=rdtype) if self.uses_w else None)
        self.register_buffer("c", torch.as_tensor(c, dtype=rdtype))

    @property
    def constant(self) -> bool:
        return not (self.uses_x or self.uses_w)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = torch.addmv(self.c, self.awt, w) if self.awt is not None else self.c
        if self.ax is not None:
            out = torch.addmm(out, x, self.ax)
        return out


def _kron_tree(f: torch.Tensor, vectors: bool) -> torch.Tensor:
    """Kronecker product of the factors along axis ``-2`` (vectors) or ``-3`` (matrices).

    Factor 0 is the least significant (Qiskit's qubit order). Neighbouring factors are
    multiplied pairwise in one broadcast operation per level, so ``m`` factors cost about
    ``log2(m)`` operations, whatever the leading (batch, group) dimensions.
    """
    axis = -2 if vectors else -3
    m = f.shape[axis]
    if m == 1:
        return f.squeeze(axis)
    if m % 2:  # peel the most significant factor off and put it on top at the end
        rest = _kron_tree(f.narrow(axis, 0, m - 1), vectors)
        return _kron2(f.select(axis, m - 1), rest, vectors)
    d = f.shape[-1]
    if vectors:
        pairs = f.unflatten(-2, (m // 2, 2))  # (..., m/2, [lo, hi], d)
        out = pairs[..., 1, :, None] * pairs[..., 0, None, :]
        return _kron_tree(out.flatten(-2), vectors)
    pairs = f.unflatten(-3, (m // 2, 2))  # (..., m/2, [lo, hi], d, d)
    out = pairs[..., 1, :, None, :, None] * pairs[..., 0, None, :, None, :]
    return _kron_tree(out.reshape(*out.shape[:-4], d * d, d * d), vectors)


def _kron2(hi: torch.Tensor, lo: torch.Tensor, vectors: bool) -> torch.Tensor:
    """``kron(hi, lo)`` of batched vectors or square matrices."""
    if vectors:
        return (hi[..., :, None] * lo[..., None, :]).flatten(-2)
    dh, dl = hi.shape[-1], lo.shape[-1]
    return (hi[..., :, None, :, None] * lo[..., None, :, None, :]).reshape(*hi.shape[:-2], dh * dl, dh * dl)


def _bit(k: np.ndarray, q: int) -> np.ndarray:
    return (k >> q) & 1


def _permutation(gate: Gate, n: int) -> np.ndarray:
    """``src`` with ``new_state[k] = old_state[src[k]]`` for a permutation gate."""
    k = np.arange(2**n, dtype=np.int64)
    q = gate.qubits
    if gate.name == "cx":
        return k ^ (_bit(k, q[0]) << q[1])
    if gate.name == "ccx":
        return k ^ ((_bit(k, q[0]) & _bit(k, q[1])) << q[2])
    a, b = (q[0], q[1]) if gate.name == "swap" else (q[1], q[2])
    flip = _bit(k, a) ^ _bit(k, b)
    if gate.name == "cswap":
        flip = flip & _bit(k, q[0])
    return k ^ ((flip << a) | (flip << b))


_DIAGONAL_1Q_PHASE = {"z": math.pi, "s": HALF_PI, "sdg": -HALF_PI, "t": math.pi / 4, "tdg": -math.pi / 4}
DIAGONAL_1Q = {"rz", "p", "u1", "id"} | set(_DIAGONAL_1Q_PHASE)


def _diagonal_pattern(gate: Gate, n: int) -> tuple[Angle, np.ndarray]:
    """A diagonal gate as ``exp(i · angle · pattern[k])`` over basis states ``k``."""
    k = np.arange(2**n, dtype=np.int64)
    q = gate.qubits
    b = [_bit(k, i).astype(float) for i in q]
    z = [1.0 - 2.0 * bi for bi in b]
    name = gate.name
    if name in _DIAGONAL_1Q_PHASE:
        return Angle(_DIAGONAL_1Q_PHASE[name]), b[0]
    if name == "id":
        return Angle(0.0), b[0]
    if name in ("p", "u1"):
        return gate.angles[0], b[0]
    if name == "rz":
        return gate.angles[0], -0.5 * z[0]
    if name == "cz":
        return Angle(math.pi), b[0] * b[1]
    if name == "ccz":
        return Angle(math.pi), b[0] * b[1] * b[2]
    if name in ("cp", "cu1"):
        return gate.angles[0], b[0] * b[1]
    if name == "crz":
        return gate.angles[0], -0.5 * b[0] * z[1]
    if name == "rzz":
        return gate.angles[0], -0.5 * z[0] * z[1]
    raise KeyError(name)


class _Op(torch.nn.Module):
    """One fused step of the program: ``state -> state``."""

    batched: bool = False

    # Not ``apply``: that is ``nn.Module.apply(fn)``, which recurses into submodules.
    def evolve(self, state: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _LayerOp(_Op):
    """Single-qubit gates on all qubits, applied as Kronecker products of neighbour groups.

    Each group's matrix is applied by one batched matmul that also rotates the qubit order:
    ``K @ state.view(B, rest, 2^k).mT`` acts on the lowest ``k`` qubits and leaves them on top,
    contiguous, so the next group is again the lowest. After all groups (sizes summing to ``n``)
    the order is back where it started, without a single transpose copy.
    """

    const_matrices: torch.Tensor  # buffer, registered only when the layer is constant

    def __init__(self, pending: dict[int, list[Gate]], n: int, prog: Program, rdtype: torch.dtype, group_size: int):
        super().__init__()
        self.n = n
        blocks = {q: _fuse(gates) for q, gates in pending.items()}
        self.positions = max(len(b) for b in blocks.values())
        angles: list[Angle] = []
        for p in range(self.positions):
            for q in range(n):
                qb = blocks.get(q, [])
                angles.extend(qb[p].entry_args() if p < len(qb) else _IDENTITY_ARGS)
        self.map = _AffineMap(angles, prog.num_inputs, prog.num_weights, rdtype)
        self.batched = self.map.uses_x
        k = min(group_size, n)
        self.full_groups, self.group_size = n // k, k
        self.rest = n - self.full_groups * k
        # A layer on few qubits (a CX-then-RY block) is cheaper as separate 2x2 updates than as
        # Kronecker groups that sweep the whole state with 2^k x 2^k matrices.
        self.sparse = sorted(pending) if 2 * len(pending) <= n // k * 2**k // 4 else None
        if self.map.constant:
            self.register_buffer("const_matrices", self._matrices_from(self.map.c))

    def _matrices_from(self, t: torch.Tensor) -> torch.Tensor:
        t = t.view(*t.shape[:-1], self.positions, self.n, 2, 4)
        # cos(a)·e^{ib}; not torch.polar, whose gradient assumes a non-negative magnitude.
        m = torch.cos(t[..., 0, :]) * torch.exp(1j * t[..., 1, :])
        m = m.view(*m.shape[:-1], 2, 2)
        out = m[..., 0, :, :, :]
        for p in range(1, self.positions):  # later blocks act after earlier ones: m_p @ out
            out = (m[..., p, :, :, :, None] * out[..., None, :, :]).sum(-2)
        return out

    def matrices(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(..., n, 2, 2)``, batched iff the layer reads inputs."""
        if self.map.constant:
            return self.const_matrices
        return self._matrices_from(self.map(x, w))

    def product_state(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The layer applied to ``|0…0⟩``: a product state, no ``2^n`` matrix needed."""
        return _kron_tree(self.matrices(x, w)[..., :, 0], vectors=True)

    def evolve(self, state: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        mats = self.matrices(x, w)
        if self.sparse is not None:
            return self._apply_each(state, mats, self.sparse)
        g, k = self.full_groups, self.group_size
        groups = _kron_tree(mats[..., : g * k, :, :].unflatten(-3, (g, k)), vectors=False)
        krons = list(groups.unbind(-3))
        if self.rest:
            krons.append(_kron_tree(mats[..., g * k :, :, :], vectors=False))
        b = state.shape[0]
        for kron in krons:
            d = kron.shape[-1]
            state = torch.matmul(kron, state.view(b, -1, d).mT).view(b, -1)
        return state

    def _apply_each(self, state: torch.Tensor, mats: torch.Tensor, qubits: list[int]) -> torch.Tensor:
        """One 2x2 per active qubit ``q``: the state viewed as ``(B, high, bit q, low)``."""
        b = state.shape[0]
        for q in qubits:
            m = mats[..., q, :, :]
            spec = "zij,zajc->zaic" if m.dim() == 3 else "ij,zajc->zaic"
            state = torch.einsum(spec, m, state.view(b, -1, 2, 2**q)).reshape(b, -1)
        return state


class _PermutationOp(_Op):
    """A run of CNOT/SWAP/Toffoli gates: one gather."""

    src: torch.Tensor  # buffer

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("src", torch.arange(2**n, dtype=torch.int64))

    def extend(self, gate: Gate, n: int) -> None:
        self.src = self.src[torch.as_tensor(_permutation(gate, n))]

    def evolve(self, state: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return state.index_select(1, self.src)


class _DiagonalOp(_Op):
    """A run of diagonal gates: ``state * exp(i · angles @ patterns)``."""

    pattern: torch.Tensor  # buffer, registered by ``finish``

    def __init__(self) -> None:
        super().__init__()
        self.angles: list[Angle] = []
        self.patterns: list[np.ndarray] = []

    def extend(self, gate: Gate, n: int) -> None:
        angle, pattern = _diagonal_pattern(gate, n)
        self.angles.append(angle)
        self.patterns.append(pattern)

    def finish(self, prog: Program, rdtype: torch.dtype) -> None:
        self.map = _AffineMap(self.angles, prog.num_inputs, prog.num_weights, rdtype)
        self.batched = self.map.uses_x
        self.register_buffer("pattern", torch.as_tensor(np.stack(self.patterns), dtype=rdtype))

    def evolve(self, state: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        phase = self.map(x, w) @ self.pattern
        return state * torch.exp(1j * phase)


class _DenseOp(_Op):
    """A non-diagonal, non-permutation two-qubit gate, applied with one einsum."""

    const: torch.Tensor  # buffer, registered only for the constant gates

    def __init__(self, gate: Gate, n: int, prog: Program, rdtype: torch.dtype):
        super().__init__()
        self.name = gate.name
        self.map = _AffineMap(gate.angles, prog.num_inputs, prog.num_weights, rdtype)
        self.batched = self.map.uses_x
        self.rdtype = rdtype
        if self.name in _CONSTANT_DENSE:
            cdtype = torch.complex128 if rdtype == torch.float64 else torch.complex64
            self.register_buffer("const", torch.as_tensor(_constant_dense(self.name), dtype=cdtype))
        letters = "abcdefghijklmnopqrstuvwxyz"[:n]
        # state axis 1 + j holds qubit n-1-j
        q0, q1 = gate.qubits
        ax0, ax1 = letters[n - 1 - q0], letters[n - 1 - q1]
        out = letters.replace(ax0, "Y").replace(ax1, "X")
        mat = ("Z" if self.batched else "") + "XY" + ax1 + ax0
        self.spec = f"{mat},Z{letters}->Z{out}"
        self.n = n

    def evolve(self, state: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.name in _CONSTANT_DENSE:
            m = self.const
        else:
            angles = self.map(x, w)
            m = _dense_matrix(self.name, list(angles.unbind(-1)), self.rdtype)
        m = m.reshape(*m.shape[:-2], 2, 2, 2, 2)
        b = state.shape[0]
        return torch.einsum(self.spec, m, state.reshape(b, *[2] * self.n)).reshape(b, -1)


# --------------------------------------------------------------------------- compiler
def _compile(prog: Program, rdtype: torch.dtype, group_size: int) -> list[_Op]:
    """Fuse the gates into layers, permutation runs, diagonal runs and dense gates.

    Single-qubit gates wait in ``pending`` (they come after every emitted op); a multi-qubit gate
    flushes them only if it touches one of their qubits, otherwise they commute past it. A
    multi-qubit gate joins the last emitted op when it is of the same kind.
    """
    n = prog.num_qubits
    ops: list[_Op] = []
    pending: dict[int, list[Gate]] = {}

    def flush() -> None:
        if not pending:
            return
        waiting = [g for gates in pending.values() for g in gates]
        if all(g.name in DIAGONAL_1Q for g in waiting):  # RZ/P/S/T layers: phases, no matmul
            last = ops[-1] if ops else None
            if not isinstance(last, _DiagonalOp):
                last = _DiagonalOp()
                ops.append(last)
            for g in waiting:
                last.extend(g, n)
        else:
            ops.append(_LayerOp(pending, n, prog, rdtype, group_size))
        pending.clear()

    for gate in prog.gates:
        if gate.name in SINGLE_QUBIT:
            pending.setdefault(gate.qubits[0], []).append(gate)
            continue
        if any(q in pending for q in gate.qubits):
            flush()
        last = ops[-1] if ops else None
        if gate.name in PERMUTATIONS:
            if not isinstance(last, _PermutationOp):
                last = _PermutationOp(n)
                ops.append(last)
            last.extend(gate, n)
        elif gate.name in DIAGONALS:
            if not isinstance(last, _DiagonalOp):
                last = _DiagonalOp()
                ops.append(last)
            last.extend(gate, n)
        else:
            ops.append(_DenseOp(gate, n, prog, rdtype))
    flush()
    for op in ops:
        if isinstance(op, _DiagonalOp):
            op.finish(prog, rdtype)
    return ops


def _pauli_terms(observables: Sequence[SparsePauliOp], n: int) -> dict[int, np.ndarray]:
    """Per X-mask ``x``, the matrix ``C[k, o]`` with ``⟨O_o⟩ = Re Σ_k conj(ψ[k^x]) C[k,o] ψ[k]``.

    A Pauli is ``(-i)^q Z^z X^x`` (Qiskit's internal phase ``q``), so
    ``P|k⟩ = (-i)^q (-1)^{|(k⊕x)∧z|} |k⊕x⟩``.
    """
    k = np.arange(2**n, dtype=np.int64)
    groups: dict[int, np.ndarray] = {}
    for o, obs in enumerate(observables):
        for pauli, coeff in zip(obs.paulis, obs.coeffs, strict=True):
            xmask = int(sum(1 << i for i, v in enumerate(pauli.x) if v))
            zmask = int(sum(1 << i for i, v in enumerate(pauli.z) if v))
            parity = np.bitwise_count((k ^ xmask) & zmask) & 1
            v = ((-1j) ** int(np.asarray(pauli._phase).item())) * (1.0 - 2.0 * parity) * coeff
            groups.setdefault(xmask, np.zeros((2**n, len(observables)), dtype=complex))[:, o] += v
    return groups


class ExactSimulator(torch.nn.Module):
    """A circuit compiled into fused PyTorch operations on a batched statevector."""

    # buffers
    probs_src: torch.Tensor
    z_matrix: torch.Tensor

    def __init__(
        self,
        circuit: QuantumCircuit,
        *,
        inputs: Sequence[Parameter],
        weights: Sequence[Parameter],
        observables: Sequence[SparsePauliOp],
        dtype: torch.dtype = torch.complex64,
        group_size: int = 4,
    ):
        super().__init__()
        if dtype not in (torch.complex64, torch.complex128):
            raise ValueError(f"dtype {dtype} is not supported; use torch.complex64 or torch.complex128")
        if group_size < 1:
            raise ValueError(f"group_size {group_size} must be at least 1")
        self.rdtype = torch.float64 if dtype == torch.complex128 else torch.float32
        self.cdtype = dtype
        prog = read_circuit(circuit, inputs, weights)
        n = self.num_qubits = prog.num_qubits
        self.num_inputs, self.num_weights = prog.num_inputs, prog.num_weights
        ops = _compile(prog, self.rdtype, group_size)
        first = ops[0] if ops else None
        self.initial_layer = first if isinstance(first, _LayerOp) else None
        if self.initial_layer is not None:
            ops.pop(0)
        terms = _pauli_terms(observables, n)
        diagonal_only = set(terms) <= {0}
        # Trailing diagonals do not change probabilities; trailing permutations reorder them.
        self.readout_src: torch.Tensor | None = None
        src = np.arange(2**n, dtype=np.int64)
        # (Only with diagonal observables: X/Y terms see the phases a trailing diagonal adds.)
        while diagonal_only and ops and isinstance(ops[-1], (_DiagonalOp, _PermutationOp)):
            op = ops.pop()
            if isinstance(op, _PermutationOp):
                src = op.src.numpy()[src]
        self.ops = torch.nn.ModuleList(ops)
        self.register_buffer("probs_src", torch.as_tensor(src))
        self._tail_identity = bool((src == np.arange(2**n)).all())
        inv = np.empty_like(src)
        inv[src] = np.arange(2**n)
        zdiag = terms.get(0, np.zeros((2**n, len(observables)), dtype=complex)).real
        self.register_buffer("z_matrix", torch.as_tensor(zdiag[inv], dtype=self.rdtype))
        self.xmasks = sorted(m for m in terms if m != 0)
        k = np.arange(2**n, dtype=np.int64)
        for i, m in enumerate(self.xmasks):
            self.register_buffer(f"flip_{i}", torch.as_tensor(k ^ m))
            self.register_buffer(f"pauli_{i}", torch.as_tensor(terms[m], dtype=self.cdtype))
        self.num_observables = len(observables)

    # -- running
    def state(
        self, x: torch.Tensor, w: torch.Tensor, *, folded: bool = False, initial_state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(batch, 2**n)`` statevector; ``folded=True`` skips the trailing permutation.

        ``initial_state`` (``(batch, 2**n)``, Qiskit order, normalised) replaces ``|0…0⟩``: an
        exact amplitude encoding costs one tensor instead of a ``2**n``-gate preparation circuit.
        """
        return self._threaded(lambda *a: self._state(*a, folded=folded), x, w, initial_state)

    def probs(self, x: torch.Tensor, w: torch.Tensor, *, initial_state: torch.Tensor | None = None) -> torch.Tensor:
        return self._threaded(self._probs, x, w, initial_state)

    def expval(self, x: torch.Tensor, w: torch.Tensor, *, initial_state: torch.Tensor | None = None) -> torch.Tensor:
        return self._threaded(self._expval, x, w, initial_state)

    def _threaded(
        self,
        run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
        x: torch.Tensor,
        w: torch.Tensor,
        initial_state: torch.Tensor | None,
    ) -> torch.Tensor:
        """``run(x, w, initial_state)``, forward and backward, at :func:`kernel_threads` threads."""
        x, w = self._check(x, w)
        if w.device.type != "cpu":  # intra-op threads are a CPU matter
            return run(x, w, initial_state)
        return run_at_threads(run, kernel_threads(x.shape[0] * 2**self.num_qubits), x, w, initial_state)

    def _state(
        self, x: torch.Tensor, w: torch.Tensor, initial_state: torch.Tensor | None, *, folded: bool = False
    ) -> torch.Tensor:
        batch = x.shape[0]
        if initial_state is not None:
            if initial_state.shape != (batch, 2**self.num_qubits):
                raise ValueError(
                    f"initial_state has shape {tuple(initial_state.shape)}; expected ({batch}, {2**self.num_qubits})"
                )
            psi = initial_state.to(self.cdtype)
            if self.initial_layer is not None:
                psi = self.initial_layer.evolve(psi, x, w)
        elif self.initial_layer is not None:
            psi = self.initial_layer.product_state(x, w).to(self.cdtype)
            if psi.dim() == 1:
                psi = psi.unsqueeze(0)
        else:
            psi = torch.zeros(1, 2**self.num_qubits, dtype=self.cdtype, device=w.device)
            psi[:, 0] = 1
        # cast: ModuleList is not generic, its items are typed as plain Modules
        for op in cast("list[_Op]", self.ops):
            if op.batched and psi.shape[0] != batch:
                psi = psi.expand(batch, -1)
            psi = op.evolve(psi, x, w)
        psi = psi.expand(batch, -1)
        return psi if folded else psi.index_select(1, self.probs_src)

    def _probs(self, x: torch.Tensor, w: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
        p = _abs2(self._state(x, w, initial_state, folded=True))
        return p if self._tail_identity else p.index_select(1, self.probs_src)

    def _expval(self, x: torch.Tensor, w: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
        psi = self._state(x, w, initial_state, folded=True)
        out = _abs2(psi) @ self.z_matrix
        for i in range(len(self.xmasks)):  # no tail was folded: src is the identity here
            flip, coeffs = getattr(self, f"flip_{i}"), getattr(self, f"pauli_{i}")
            out = out + ((psi.index_select(1, flip).conj() * psi) @ coeffs).real
        return out

    def _check(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or x.shape[1] != self.num_inputs:
            raise ValueError(f"inputs have shape {tuple(x.shape)}; expected (batch, {self.num_inputs})")
        if w.shape != (self.num_weights,):
            raise ValueError(f"weights have shape {tuple(w.shape)}; expected ({self.num_weights},)")
        return x.to(self.rdtype), w.to(self.rdtype)


def _abs2(psi: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(psi).square().sum(-1)


@register("exact")
def build_exact(circuit: QuantumCircuit, **kwargs: Any) -> ExactSimulator:
    return ExactSimulator(circuit, **kwargs)
