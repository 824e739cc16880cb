"""The circuit library: parameter counts, flat basic gates, and the encoders' states.

States are checked with Qiskit's Statevector, independent of the project's simulators.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from qiskit.circuit import ParameterVector
from qiskit.circuit.library import zz_feature_map as qiskit_zz_feature_map
from qiskit.quantum_info import Statevector

from qcore.circuits import (
    Part,
    amplitude_angles,
    amplitude_encoding,
    angle_encoding,
    cnot_ry_blocks,
    compose,
    data_reuploading,
    default_offsets,
    hardware_efficient,
    qdllm_ansatz,
    qpa_chain,
    real_amplitudes,
    zz_feature_inputs,
    zz_feature_map,
)

ALLOWED_GATES = {
    "h",
    "x",
    "y",
    "z",
    "s",
    "sdg",
    "t",
    "rx",
    "ry",
    "rz",
    "p",
    "u",
    "cx",
    "cy",
    "cz",
    "crx",
    "cry",
    "crz",
    "cp",
    "rxx",
    "ryy",
    "rzz",
    "swap",
}

# (builder, expected parameter count from the documented formula)
FAMILIES: dict[str, tuple[Callable[[], Part], int]] = {
    "angle_ry": (lambda: angle_encoding(5, "ry"), 5),
    "angle_rx": (lambda: angle_encoding(11, "rx"), 11),
    "angle_rz": (lambda: angle_encoding(3, "rz"), 3),
    "amplitude_n4": (lambda: amplitude_encoding(4), 2**4 - 1),
    "zz_full": (lambda: zz_feature_map(4, reps=1), 4 + 6),
    "zz_linear": (lambda: zz_feature_map(5, reps=2, entanglement="linear"), 5 + 4),
    "hardware_efficient_ring": (lambda: hardware_efficient(4, 3), 3 * 4 * 2),
    "hardware_efficient_chain": (
        lambda: hardware_efficient(5, 2, ("rx", "ry", "rz"), "chain"),
        2 * 5 * 3,
    ),
    "qdllm_11x2": (lambda: qdllm_ansatz(11, 2), 144),
    "qdllm_5x3": (lambda: qdllm_ansatz(5, 3), 3 * (7 * 5 - 5)),
    "cnot_ry": (lambda: cnot_ry_blocks(6, 4), 4 * 6),
    "cnot_ry_offsets": (lambda: cnot_ry_blocks(5, 2, offsets=[2, 3]), 2 * 5),
    "real_amplitudes": (lambda: real_amplitudes(4, reps=3), (3 + 1) * 4),
    "real_amplitudes_full": (lambda: real_amplitudes(3, reps=1, entanglement="full"), (1 + 1) * 3),
    "qpa_7x8": (lambda: qpa_chain(7, 8), 56),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_and_gates(family: str) -> None:
    build, expected = FAMILIES[family]
    circuit, params = build()
    assert isinstance(params, ParameterVector)
    assert len(params) == expected
    assert set(circuit.parameters) == set(params)  # every parameter is used, nothing else is
    gates = {inst.operation.name for inst in circuit.data}
    assert gates <= ALLOWED_GATES, gates - ALLOWED_GATES


def test_given_parameter_vector_is_used_and_checked() -> None:
    w = ParameterVector("w", 12)
    circuit, params = real_amplitudes(3, reps=3, params=w)
    assert params is w and set(circuit.parameters) == set(w)
    with pytest.raises(ValueError, match="13 needed"):
        qpa_chain(13, 1, params=w)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_amplitude_encoding_reproduces_signed_vectors(n: int) -> None:
    circuit, _ = amplitude_encoding(n)
    rng = np.random.default_rng(n)
    for v in rng.normal(size=(3, 2**n)):
        state = Statevector(circuit.assign_parameters(amplitude_angles(v))).data
        np.testing.assert_allclose(state, v / np.linalg.norm(v), atol=1e-9)


def test_amplitude_angles_differentiable_with_zero_padding() -> None:
    v = torch.zeros(2, 16, dtype=torch.float64)
    v[:, :11] = torch.randn(2, 11, dtype=torch.float64)
    v.requires_grad_(True)
    angles = amplitude_angles(v)
    assert angles.shape == (2, 15)
    angles.pow(2).sum().backward()
    assert torch.isfinite(v.grad).all()
    circuit, _ = amplitude_encoding(4)
    state = Statevector(circuit.assign_parameters(angles[1].detach().numpy())).data
    np.testing.assert_allclose(state, (v[1] / v[1].norm()).detach().numpy(), atol=1e-9)


@pytest.mark.parametrize(
    ("n", "reps", "entanglement"),
    [(2, 2, "full"), (4, 1, "full"), (3, 2, "linear"), (5, 2, "circular")],
)
def test_zz_feature_map_equals_qiskit(n: int, reps: int, entanglement: str) -> None:
    x = np.random.default_rng(n).uniform(-1.0, 4.0, size=n)
    ours, _ = zz_feature_map(n, reps, entanglement)
    reference = qiskit_zz_feature_map(n, reps=reps, entanglement=entanglement)
    state = Statevector(ours.assign_parameters(zz_feature_inputs(x, entanglement))).data
    expected = Statevector(reference.assign_parameters(x)).data
    np.testing.assert_allclose(state, expected, atol=1e-9)


def test_zz_feature_inputs_torch_matches_numpy_and_is_differentiable() -> None:
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64, requires_grad=True)
    extended = zz_feature_inputs(x)
    np.testing.assert_allclose(extended.detach().numpy(), zz_feature_inputs(x.detach().numpy()))
    extended.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("repeats", [1, 2, 5])
def test_data_reuploading_shares_weights(repeats: int) -> None:
    model = data_reuploading(
        angle_encoding(4, "ry"),
        cnot_ry_blocks(4, 2, params="θ"),
        repeats,
        head=cnot_ry_blocks(4, 1, params="φ"),
    )
    assert len(model.inputs) == 4
    assert len(model.weights) == 2 * 4 + 4  # independent of repeats
    assert set(model.circuit.parameters) == set(model.inputs) | set(model.weights)
    inputs = set(model.inputs)
    uploads = [i for i in model.circuit.data if set(i.operation.params) & inputs]
    assert len(uploads) == 4 * repeats


def test_compose_splits_inputs_and_weights() -> None:
    model = compose(angle_encoding(3, "rx"), hardware_efficient(3, 1, params="a"), qpa_chain(3, 2, params="b"))
    assert [p.name for p in model.inputs] == ["x[0]", "x[1]", "x[2]"]
    assert len(model.weights) == 3 * 2 + 3 * 2
    with pytest.raises(ValueError, match="named 'θ'"):
        compose(angle_encoding(3), qpa_chain(3, 1), qpa_chain(3, 1))


def test_cnot_ry_offsets_grow() -> None:
    n, layers = 5, 4
    assert default_offsets(n, layers) == [1, 2, 3, 4]
    circuit, _ = cnot_ry_blocks(n, layers)
    cnots = [[circuit.find_bit(q).index for q in inst.qubits] for inst in circuit.data if inst.operation.name == "cx"]
    offsets = [(target - control) % n for control, target in cnots]
    assert offsets == [d for d in [1, 2, 3, 4] for _ in range(n)]
    with pytest.raises(ValueError):
        cnot_ry_blocks(n, 1, offsets=[n])


def test_qdllm_block_structure() -> None:
    circuit, _ = qdllm_ansatz(11, 2)
    assert dict(circuit.count_ops()) == {"ry": 2 * 30, "rzz": 2 * 9, "rz": 2 * 33, "cx": 2 * 11}
    rzz = [[circuit.find_bit(q).index for q in i.qubits] for i in circuit.data if i.name == "rzz"]
    assert rzz[:9] == [[q, q + 1] for q in range(1, 10)]


@pytest.mark.parametrize(("entanglement", "closing"), [("ring", [[3, 0]]), ("chain", [])])
def test_hardware_efficient_entanglers(entanglement: str, closing: list[list[int]]) -> None:
    circuit, _ = hardware_efficient(4, 1, entanglement=entanglement)
    cnots = [[circuit.find_bit(q).index for q in i.qubits] for i in circuit.data if i.name == "cx"]
    assert cnots == [[0, 1], [1, 2], [2, 3], *closing]
