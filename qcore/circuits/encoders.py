"""Encoders: circuits that load classical numbers into qubits.

Every builder returns ``(circuit, params)`` (see :mod:`qcore.circuits.base`). The simulators accept
only gate angles affine in the parameters (``a*x + b*w + c``), so where a textbook encoder needs a
non-affine function of the data (amplitude encoding's arctangents, the ZZ feature map's products)
the circuit takes that function's value as its input and a torch-differentiable helper computes it
classically: :func:`amplitude_angles`, :func:`zz_feature_inputs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import overload

import numpy as np
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector

from qcore.circuits.base import (
    ROTATIONS,
    ModelCircuit,
    Part,
    distinct_parameters,
    parameter_vector,
    stack,
)


def angle_encoding(n: int, rotation: str = "ry", params: ParameterVector | str = "x") -> Part:
    """One rotation ``R(x_i)`` per qubit; ``n`` parameters, ``params[i]`` on qubit ``i``.

    ``rotation="rz"`` puts an H before each RZ: RZ alone on |0> only adds a phase, so without the H
    the input would be invisible. QD-LLM (arXiv 2505.13205) uses RX, the PQC head's module 2
    (arXiv 2504.08732) RY.
    """
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    x = parameter_vector(params, n)
    circuit = QuantumCircuit(n, name=f"angle_{rotation}")
    for q in range(n):
        if rotation == "rz":
            circuit.h(q)
        getattr(circuit, rotation)(x[q], q)
    return circuit, x


# --- amplitude encoding -------------------------------------------------------------------------


@overload
def _gray(i: int) -> int: ...
@overload
def _gray(i: np.ndarray) -> np.ndarray: ...
def _gray(i: int | np.ndarray) -> int | np.ndarray:
    return i ^ (i >> 1)


@cache
def _walsh_matrix(k: int) -> np.ndarray:
    """``M[c, i] = (-1)^(c . gray(i)) / 2^k``: a uniformly controlled RY's angles -> its RY gates.

    For control value ``c`` the decomposed gates rotate by ``sum_i (-1)^(c . gray(i)) theta_i`` (a
    CNOT before gate ``i`` flips its sign), so ``theta = alpha @ M`` inverts that (Möttönen et al.).
    """
    index = np.arange(2**k)
    both = index[:, None] & _gray(index)[None, :]
    parity = np.zeros_like(both)
    for bit in range(k):
        parity ^= (both >> bit) & 1
    return (1.0 - 2.0 * parity) / 2**k


def _ucry_cnot_controls(k: int) -> list[int]:
    """The control-index bit whose CNOT follows RY gate ``i``: where gray(i), gray(i+1) differ."""
    return [(_gray(i) ^ _gray((i + 1) % 2**k)).bit_length() - 1 for i in range(2**k)]


def amplitude_encoding(n: int, params: ParameterVector | str = "x") -> Part:
    """Real amplitude encoding of a vector of length ``2**n``; ``2**n - 1`` parameters.

    Entry ``v[i]`` becomes the amplitude of basis state ``|i>`` in Qiskit's order (qubit ``q`` is
    bit ``q`` of ``i``), signs included.

    The Möttönen et al. state preparation (quant-ph/0407010) restricted to real amplitudes, as the
    PQC head's module 1 (arXiv 2504.08732) amplitude-encodes sentence embeddings: level ``k = 0 ..
    n-1`` is an RY on qubit ``n-1-k`` uniformly controlled by qubits ``n-k .. n-1``, decomposed into
    ``2**k`` RY gates, each followed by a CNOT (from the control picked by the Gray code, none at
    level 0). The parameters are those RY gates' angles in circuit order, so each gate angle is one
    parameter; :func:`amplitude_angles` computes them from the vector.
    """
    theta = parameter_vector(params, 2**n - 1)
    circuit = QuantumCircuit(n, name="amplitude")
    for k in range(n):
        target, offset = n - 1 - k, 2**k - 1
        for i, bit in enumerate(_ucry_cnot_controls(k)):
            circuit.ry(theta[offset + i], target)
            if k > 0:
                circuit.cx(n - k + bit, target)
    return circuit, theta


@overload
def amplitude_angles(v: torch.Tensor) -> torch.Tensor: ...
@overload
def amplitude_angles(v: np.ndarray) -> np.ndarray: ...
def amplitude_angles(v: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The inputs of :func:`amplitude_encoding` that prepare ``v / |v|``.

    Shape ``(..., 2**n) -> (..., 2**n - 1)``.

    Level ``k`` splits each block of ``2**(n-k)`` amplitudes (fixed top ``k`` bits) into halves by
    bit ``n-1-k`` and rotates by ``2*atan2(|upper|, |lower|)``; at the last level the "halves" are
    single signed amplitudes, so ``atan2`` of the signed values gives angles in ``(-2π, 2π]`` and
    negative entries come out exactly (the state is real, no global phase). The angles are then
    mapped through the Gray-code Walsh transform to the decomposed circuit's RY gates.

    Scale-invariant (``v`` need not be normalised); the zero vector gives |0...0>. With a torch
    tensor the result is differentiable (gradients stay finite for zero blocks such as padding);
    with a numpy array a numpy array is returned.
    """
    if isinstance(v, np.ndarray):
        return amplitude_angles(torch.from_numpy(np.asarray(v, dtype=np.float64))).numpy()
    n = v.shape[-1].bit_length() - 1
    if v.shape[-1] != 2**n or n < 1:
        raise ValueError(f"the last dimension must be a power of two >= 2, got {v.shape[-1]}")
    batch = v.shape[:-1]
    gate_angles = []
    for k in range(n):
        blocks = v.reshape(*batch, 2**k, 2, 2 ** (n - 1 - k))
        if k < n - 1:
            lower, upper = torch.linalg.vector_norm(blocks, dim=-1).unbind(-1)
        else:
            lower, upper = blocks[..., 0].unbind(-1)
        tree = 2 * torch.atan2(upper, lower)
        walsh = torch.as_tensor(_walsh_matrix(k), dtype=v.dtype, device=v.device)
        gate_angles.append(tree @ walsh)
    return torch.cat(gate_angles, dim=-1)


# --- ZZ feature map -----------------------------------------------------------------------------


Entanglement = str | Sequence[tuple[int, int]]


def zz_pairs(n: int, entanglement: Entanglement = "full") -> list[tuple[int, int]]:
    """The qubit pairs of the ZZ feature map, as in Qiskit's ``zz_feature_map``.

    ``"full"`` (all ``i < j``), ``"linear"`` (``(i, i+1)``), ``"circular"`` (linear plus
    ``(n-1, 0)`` for ``n > 2``) or an explicit list of pairs.
    """
    if not isinstance(entanglement, str):
        return [(int(i), int(j)) for i, j in entanglement]
    linear = [(i, i + 1) for i in range(n - 1)]
    if entanglement == "full":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if entanglement == "linear":
        return linear
    if entanglement == "circular":
        return [*linear, (n - 1, 0)] if n > 2 else linear
    raise ValueError(f"entanglement must be 'full', 'linear', 'circular' or a list of pairs, got {entanglement!r}")


def zz_feature_map(
    n: int,
    reps: int = 2,
    entanglement: Entanglement = "full",
    alpha: float = 2.0,
    params: ParameterVector | str = "x",
) -> Part:
    """Qiskit's ZZ feature map with each pair's product fed as its own input; ``n + P`` parameters.

    ``P = len(zz_pairs(n, entanglement))`` (``n(n-1)/2`` for ``"full"``). ``params[:n]`` are the
    features ``x_i``, ``params[n + p]`` the product ``(π - x_i)(π - x_j)`` of pair ``p``; compute
    them with :func:`zz_feature_inputs`. Each of the ``reps`` repetitions is H on every qubit,
    ``P(alpha * x_i)``, then ``CX(i,j) P(alpha * z_ij) on j CX(i,j)`` per pair: the same state as
    ``qiskit.circuit.library.zz_feature_map`` on ``x``, but with angles affine in the parameters,
    as the simulators require. LLM-QFL's clients (arXiv 2505.18656) use it with ``reps=1``.
    """
    pairs = zz_pairs(n, entanglement)
    x = parameter_vector(params, n + len(pairs))
    circuit = QuantumCircuit(n, name="zz_feature_map")
    for _ in range(reps):
        for q in range(n):
            circuit.h(q)
            circuit.p(alpha * x[q], q)
        for p, (i, j) in enumerate(pairs):
            circuit.cx(i, j)
            circuit.p(alpha * x[n + p], j)
            circuit.cx(i, j)
    return circuit, x


def zz_feature_inputs(x: torch.Tensor | np.ndarray, entanglement: Entanglement = "full") -> torch.Tensor | np.ndarray:
    """``(..., n) -> (..., n + P)``: the features followed by ``(π - x_i)(π - x_j)`` per pair of
    :func:`zz_pairs`, the inputs of :func:`zz_feature_map`; differentiable for torch tensors."""
    pairs = np.array(zz_pairs(x.shape[-1], entanglement), dtype=np.int64).reshape(-1, 2)
    if isinstance(x, torch.Tensor):
        i, j = torch.from_numpy(pairs).to(x.device).unbind(-1)
        return torch.cat([x, (math.pi - x[..., i]) * (math.pi - x[..., j])], dim=-1)
    first, second = pairs[:, 0], pairs[:, 1]
    return np.concatenate([x, (math.pi - x[..., first]) * (math.pi - x[..., second])], axis=-1)


# --- data re-uploading --------------------------------------------------------------------------


def data_reuploading(encoder: Part, block: Part, repeats: int, head: Part | None = None) -> ModelCircuit:
    """``(encoder, block) * repeats``, then ``head``: the same inputs and block weights each time.

    The PQC head's module 2 (arXiv 2504.08732): RY angle encoding and PQC-1(θ) repeated N times
    with one θ (re-uploading the data makes the model a richer function of it without more weights),
    then PQC-2. Weights are ``block``'s parameters then ``head``'s; their number does not grow with
    ``repeats``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    tail = [head] if head is not None else []
    circuit = stack([encoder, block] * repeats + tail)
    weights = distinct_parameters([block[1]] + [vec for _, vec in tail])
    return ModelCircuit(circuit, tuple(encoder[1]), weights)
