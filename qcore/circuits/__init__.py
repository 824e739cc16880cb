"""The circuit library: encoders and ansätze of the five methods, as flat Qiskit circuits.

Every builder returns ``(circuit, params)``: the circuit and the one ``ParameterVector`` it adds,
its length given by a formula in the builder's docstring. :func:`compose` (encoder, then ansätze)
and :func:`data_reuploading` stack parts into a :class:`ModelCircuit` naming ``inputs`` and
``weights`` for ``QuantumLayer``::

    enc = angle_encoding(4, "ry")                 # (circuit, x)
    model = compose(enc, hardware_efficient(4, layers=2))
    layer = QuantumLayer(model.circuit, inputs=model.inputs, weights=model.weights, observables=obs)
"""

from qcore.circuits.ansatze import (
    cnot_pairs,
    cnot_ry_blocks,
    default_offsets,
    hardware_efficient,
    qdllm_ansatz,
    qpa_chain,
    real_amplitudes,
)
from qcore.circuits.base import ModelCircuit, Part, compose, parameter_vector
from qcore.circuits.encoders import (
    amplitude_angles,
    amplitude_encoding,
    angle_encoding,
    data_reuploading,
    zz_feature_inputs,
    zz_feature_map,
    zz_pairs,
)

__all__ = [
    "ModelCircuit",
    "Part",
    "amplitude_angles",
    "amplitude_encoding",
    "angle_encoding",
    "cnot_pairs",
    "cnot_ry_blocks",
    "compose",
    "data_reuploading",
    "default_offsets",
    "hardware_efficient",
    "parameter_vector",
    "qdllm_ansatz",
    "qpa_chain",
    "real_amplitudes",
    "zz_feature_inputs",
    "zz_feature_map",
    "zz_pairs",
]
