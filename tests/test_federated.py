"""qcore.federated as plain Python: partitioners, strategies, the VQC, local training and its
compute count, the controller's rules, selection, early stop and generative fallback, and the
round loop dropping failed clients (LLM-QFL, arXiv 2505.18656)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from qiskit.circuit.library import real_amplitudes, zz_feature_map
from qiskit.quantum_info import Statevector

from qcore.federated import (
    Client,
    ClientFailure,
    FedAdam,
    FedAvg,
    FederatedRun,
    FedProx,
    GenerativeController,
    LocalTraining,
    ModelSpec,
    NoController,
    PartitionError,
    PartitionSpec,
    RuleController,
    VQCClassifier,
    VQCConfig,
    dirichlet,
    iid,
    make_controller,
)
from qcore.federated.client import proximal_term
from qcore.federated.client_models import build_model, get_weights
from qcore.federated.controller import ClientReport, RoundSummary, closest_to_server, scale_steps
from qcore.federated.server import fit_sequentially
from qcore.federated.strategy import weights_nbytes

LABELS = np.array([0] * 60 + [1] * 30 + [2] * 10)


# --- partitioners ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "split", [lambda s: iid(LABELS, 4, s), lambda s: dirichlet(LABELS, 4, 0.5, s)], ids=["iid", "dirichlet"]
)
def test_partitions_cover_every_example_once_and_repeat_with_the_seed(split) -> None:
    parts = split(3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert all(len(p) >= 1 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, split(3), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, split(4), strict=True))


def test_iid_shards_differ_in_size_by_at_most_one() -> None:
    sizes = [len(p) for p in iid(LABELS, 7, 0)]
    assert max(sizes) - min(sizes) <= 1


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    labels = np.repeat([0, 1], 500)

    def skew(alpha: float) -> float:  # mean share of each client's majority class
        return np.mean(
            [
                np.bincount(labels[p], minlength=2).max() / len(p)
                for s in range(5)
                for p in dirichlet(labels, 5, alpha, s)
            ]
        )

    assert skew(0.1) > 0.85 > skew(100.0) and skew(100.0) < 0.6


@pytest.mark.parametrize(
    "text,message",
    [
        ("dirichlet:0", "alpha must be a finite number > 0"),
        ("dirichlet:-0.5", "alpha must be a finite number > 0"),
        ("dirichlet:nan", "alpha must be a finite number > 0"),
        ("dirichlet:x", "must be a number"),
        ("iid:2", "is unknown"),
        ("shards", "is unknown"),
    ],
)
def test_bad_partitions_are_refused(text: str, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        PartitionSpec.parse(text)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: dirichlet(LABELS, 3, 0.0, 0), "alpha=0.0 is invalid"),
        (lambda: dirichlet(LABELS, 3, -1, 0), "alpha=-1 is invalid"),
        (lambda: iid(LABELS, 101, 0), "clients=101 exceeds the 100 training examples"),
        (lambda: dirichlet(LABELS, 101, 1.0, 0), "clients=101 exceeds"),
        (lambda: iid(LABELS, 0, 0), "clients=0 is invalid"),
    ],
)
def test_impossible_splits_are_refused(call, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        call()


# --- strategies -----------------------------------------------------------------------------------


class U:
    def __init__(self, w: dict, n: int):
        self.weights, self.num_examples = w, n


def test_fedavg_weights_by_examples_exactly() -> None:
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([4.0], dtype=np.float32)}
    b = {"w": np.array([5.0, 6.0], dtype=np.float32), "b": np.array([0.0], dtype=np.float32)}
    out = FedAvg().aggregate(1, a, [U(a, 1), U(b, 3)])
    np.testing.assert_array_equal(out["w"], [4.0, 5.0])  # (1·1 + 3·5)/4, (1·2 + 3·6)/4
    np.testing.assert_array_equal(out["b"], [1.0])
    assert out["w"].dtype == np.float32 and weights_nbytes(out) == 12


def test_fedprox_sends_mu_and_its_term_pulls_towards_the_global_model() -> None:
    assert FedProx(mu=0.3).configure_round(1, {}) == {"proximal_mu": 0.3}
    assert FedAvg().configure_round(1, {}) == {}
    model = torch.nn.Linear(3, 2)
    anchor = {k: v.detach() + 1.0 for k, v in model.named_parameters()}
    proximal_term(model, anchor, 0.3).backward()
    for _name, p in model.named_parameters():  # d/dw mu/2 ||w − g||² = mu (w − g) = −0.3
        torch.testing.assert_close(p.grad, torch.full_like(p, -0.3))


def test_fedprox_keeps_client_weights_near_the_global_ones() -> None:
    x, y = _blobs(80, seed=1)
    spec = ModelSpec("logreg", 2, 2)
    client = Client(0, x, y, spec)
    start = get_weights(build_model(spec))

    def drift(mu: float) -> float:
        w = client.fit(start, steps=50, settings=LocalTraining(lr=0.1), config={"proximal_mu": mu}, seed=0).weights
        return sum(float(np.sum((w[k] - start[k]) ** 2)) for k in w)

    assert drift(10.0) < 0.2 * drift(0.0)


def test_fedadam_is_server_adam_on_the_averaged_update() -> None:
    strategy = FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w0 = {"w": np.array([0.0, 1.0])}
    avg = {"w": np.array([0.5, 0.0])}
    w1 = strategy.aggregate(1, w0, [U(avg, 2)])
    delta = avg["w"] - w0["w"]
    m, v = 0.1 * delta, 0.01 * delta**2
    np.testing.assert_allclose(w1["w"], w0["w"] + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-12)
    w2 = strategy.aggregate(2, w1, [U(avg, 2)])
    delta2 = avg["w"] - w1["w"]
    m, v = 0.9 * m + 0.1 * delta2, 0.99 * v + 0.01 * delta2**2
    np.testing.assert_allclose(w2["w"], w1["w"] + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-12)


# --- the VQC and local training -------------------------------------------------------------------


@pytest.mark.parametrize("readout", ["mod", "parity"])
def test_vqc_matches_qiskits_zz_feature_map_and_real_amplitudes(readout: str) -> None:
    config = VQCConfig(readout=readout, init_angle=None, dtype="complex128", seed=3)
    model = VQCClassifier(config)
    x = np.array([[0.1, 0.7, 0.3, 0.9], [0.5, 0.2, 0.8, 0.4]])
    ours = model(torch.as_tensor(x)).exp().detach().numpy()
    theta = model.quantum.weights.detach().numpy()
    for row, features in zip(ours, x, strict=True):
        circuit = zz_feature_map(4, reps=1).compose(real_amplitudes(4, reps=3))
        bound = circuit.assign_parameters(list(features) + list(theta))  # Qiskit orders x then θ
        probs = Statevector(bound).probabilities()
        states = np.arange(16)
        cls = states % 2 if readout == "mod" else np.array([bin(i).count("1") % 2 for i in states])
        np.testing.assert_allclose(row, [probs[cls == c].sum() for c in (0, 1)], atol=1e-9)
    assert model.quantum.weights.numel() == 16


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (0.3 + 0.4 * y[:, None] + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    return x, y


@pytest.mark.parametrize(
    "optimizer,steps,per_row",
    [
        ("adam", 3, 3 * (1 + 2 * 16) + 1),  # each step: forward + parameter shift of 16 angles; then the loss
        ("cobyla", 20, 20 + 1),  # one execution per row and objective evaluation (20 >= 16 + 2)
        ("spsa", 4, 4 * 2 + 1),  # two objective evaluations per iteration
    ],
)
def test_local_training_counts_circuit_evaluations(optimizer: str, steps: int, per_row: int) -> None:
    x, y = _blobs(12, seed=0)
    x = np.hstack([x, x]).astype(np.float32)  # 4 features, one per qubit
    spec = ModelSpec("vqc", 4, 2)
    update = Client(0, x, y, spec).fit(
        get_weights(build_model(spec)), steps=steps, settings=LocalTraining(optimizer=optimizer), config={}, seed=0
    )
    assert update.steps == steps and update.num_examples == 12
    assert update.circuit_evaluations == 12 * per_row
    assert math.isfinite(update.loss) and update.seconds > 0


def test_classical_clients_cost_no_circuit_evaluations_and_learn() -> None:
    x, y = _blobs(100, seed=2)
    spec = ModelSpec("logreg", 2, 2)
    start = get_weights(build_model(spec))
    update = Client(0, x, y, spec).fit(start, steps=60, settings=LocalTraining(lr=0.1), config={}, seed=0)
    assert update.circuit_evaluations == 0 and update.loss < 0.5


def test_a_vqc_with_a_classical_standin_costs_no_circuit_evaluations() -> None:
    x, y = _blobs(100, seed=2)
    x = np.hstack([x, x]).astype(np.float32)  # 4 features, one per qubit
    spec = ModelSpec("vqc", 4, 2, options={"circuit": "classical"})
    start = get_weights(build_model(spec))
    assert sum(w.size for w in start.values()) == 16  # the 16 angles' worth: 4 → 2 → 2
    update = Client(0, x, y, spec).fit(start, steps=60, settings=LocalTraining(lr=0.1), config={}, seed=0)
    assert update.circuit_evaluations == 0 and update.loss < 0.5


# --- the controller -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule,steps,ratio,cap,expected",
    [
        ("incremental", 10, 1.5, 100, 15),  # 10 + int(10·0.5)
        ("dynamic-weighted", 10, 1.5, 100, 12),  # int(5 + 7.5)
        ("logarithmic", 10, 1.5, 100, 19),  # 10 + int(ln 2.5 · 10) = 10 + 9
        ("adaptive", 10, 1.5, 100, 15),  # int(10 · 1.5)
        ("hybrid", 10, 1.5, 100, 25),  # 10 + min(15, 100)
        ("incremental", 80, 2.0, 100, 100),  # 160, capped
        ("dynamic-weighted", 80, 2.0, 100, 100),  # 120, capped
        ("logarithmic", 80, 2.0, 100, 100),  # 167, capped
        ("adaptive", 80, 2.0, 100, 100),  # 160, capped
        ("hybrid", 80, 2.0, 100, 100),  # 180, capped
        ("adaptive", 10, 1.05, 100, 10),  # int(10.5): the paper's truncation keeps small ratios flat
    ],
)
def test_the_five_rules_with_their_cap(rule: str, steps: int, ratio: float, cap: int, expected: int) -> None:
    assert scale_steps(rule, steps, ratio, cap, max_increment=100) == expected


def test_hybrid_increment_is_bounded() -> None:
    assert scale_steps("hybrid", 10, 3.0, 100, max_increment=5) == 15


def _summary(
    losses: list[float], llm: list[float | None], server: float = 0.5, server_llm: float | None = 0.45, steps: int = 10
) -> RoundSummary:
    clients = tuple(
        ClientReport(i, 100, steps, loss, llm_loss) for i, (loss, llm_loss) in enumerate(zip(losses, llm, strict=True))
    )
    return RoundSummary(round=1, rounds=10, clients=clients, failed=(), server_loss=server, server_llm_loss=server_llm)


def test_rules_rescale_only_clients_whose_objective_exceeds_their_llm_loss() -> None:
    summary = _summary([0.9, 0.3, 0.6, 0.6], [0.6, 0.6, None, 0.0])
    steps = RuleController("adaptive").decide(summary).steps
    assert steps == {0: 15, 1: 10, 2: 10, 3: 100}  # 0.9/0.6; below its LLM; no LLM loss; LLM loss 0 → cap


@pytest.mark.parametrize("fraction,expected", [(0.1, (1,)), (0.5, (1, 3)), (0.75, (1, 2, 3)), (1.0, (0, 1, 2, 3))])
def test_selection_keeps_the_clients_closest_to_the_server_loss(fraction: float, expected: tuple) -> None:
    summary = _summary([0.9, 0.5, 0.7, 0.52], [0.4] * 4, server=0.51)
    assert closest_to_server(summary, fraction) == expected


def test_selection_breaks_ties_by_client_id() -> None:
    assert closest_to_server(_summary([0.6, 0.4, 0.6], [0.4] * 3, server=0.5), 0.34) == (0,)


@pytest.mark.parametrize(
    "server,server_llm,threshold,stop",
    [
        (0.9, 0.6, 0.4, True),
        (1.2, 0.6, 0.4, False),
        (0.61, 0.6, 0.02, True),
        (0.9, None, 0.4, False),
        (0.6, 0.6, 0.0, False),
    ],
)
def test_early_stop_on_server_objective_near_llm_loss(server: float, server_llm, threshold: float, stop: bool) -> None:
    summary = _summary([0.7], [0.5], server=server, server_llm=server_llm)
    assert RuleController("adaptive", stop_threshold=threshold).decide(summary).stop is stop


def test_none_controller_is_plain_qfl() -> None:
    d = NoController().decide(_summary([0.9, 0.1], [0.1, 0.1], server=0.1, server_llm=0.1))
    assert d.aggregate == (0, 1) and d.steps == {0: 10, 1: 10} and not d.stop and not NoController().uses_llm


def test_generative_controller_uses_a_valid_answer() -> None:
    prompts = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return 'Sure:\n```json\n{"aggregate": [2, 0], "steps": {"0": 30}, "stop": true}\n```'

    d = GenerativeController(ask, RuleController()).decide(_summary([0.9, 0.5, 0.7], [0.4] * 3))
    assert d.aggregate == (0, 2) and d.steps == {0: 30, 1: 10, 2: 10} and d.stop and d.source == "generative"
    assert "round 1 of 10" in prompts[0] and "0 | 100 | 10 | 0.9000 | 0.4000" in prompts[0]


def _raise(prompt: str) -> str:
    raise ConnectionError("the LLM server is down")


@pytest.mark.parametrize(
    "ask",
    [
        lambda p: "I would aggregate everyone.",
        lambda p: '{"aggregate": [0, 1], "stop": fals}',
        lambda p: '{"aggregate": [7], "stop": false}',
        lambda p: '{"aggregate": [], "stop": false}',
        lambda p: '{"aggregate": [0], "steps": {"0": 1000}, "stop": false}',
        lambda p: '{"aggregate": [0], "steps": {"0": 2.5}, "stop": false}',
        lambda p: '{"aggregate": [0], "stop": "no"}',
        lambda p: "[0, 1]",
        _raise,
    ],
    ids=[
        "prose",
        "bad-json",
        "unknown-client",
        "empty",
        "steps-over-cap",
        "steps-not-int",
        "stop-not-bool",
        "not-object",
        "call-fails",
    ],
)
def test_generative_controller_falls_back_to_the_rule_on_an_invalid_answer(ask, caplog) -> None:
    summary = _summary([0.9, 0.5, 0.7], [0.4] * 3)
    rule = RuleController("hybrid", select_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        d = GenerativeController(ask, rule).decide(summary)
    expected = rule.decide(summary)
    assert (d.aggregate, d.steps, d.stop, d.source) == (expected.aggregate, expected.steps, expected.stop, "fallback")
    assert "unusable" in caplog.text and "hybrid" in caplog.text


def test_controllers_by_name_and_refusals() -> None:
    assert make_controller("none").name == "none"
    assert make_controller("logarithmic", max_steps=50).max_steps == 50
    assert make_controller("generative:json:dumps").name == "generative:json:dumps"
    with pytest.raises(ValueError, match="controller 'sometimes' is unknown"):
        make_controller("sometimes")
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_controller("generative:no_such_module:ask")


# --- the round loop -------------------------------------------------------------------------------


def _run(controller=None, settings: LocalTraining | None = None, clients: int = 4, seed: int = 0) -> FederatedRun:
    x, y = _blobs(200, seed=seed)
    spec = ModelSpec("logreg", 2, 2, seed=seed)
    parts = iid(y[:160], clients, seed)
    return FederatedRun(
        [Client(i, x[p], y[p], spec) for i, p in enumerate(parts)],
        spec,
        FedAvg(),
        controller or NoController(),
        (x[160:180], y[160:180]),
        (x[180:], y[180:]),
        settings or LocalTraining(lr=0.1),
        local_steps=5,
        seed=seed,
    )


def test_rounds_learn_and_repeat_with_the_seed() -> None:
    first = _run().run(rounds=4)
    again = _run().run(rounds=4)
    assert [r.accuracy for r in first.records] == [r.accuracy for r in again.records]
    assert first.records[-1].accuracy > 0.85 > first.initial_accuracy
    assert first.records[0].bytes_down == first.records[0].bytes_up == 4 * 4 * (2 * 2 + 2)  # 4 clients, float32


def test_failed_clients_are_dropped_counted_and_the_rest_aggregated(caplog) -> None:
    def fit(jobs):
        return [ClientFailure(j.client.id, "failed", "boom") if j.client.id == 1 else j.run() for j in jobs]

    with caplog.at_level(logging.WARNING):
        result = _run().run(rounds=2, fit=fit)
    assert [r.round for r in result.records] == [1, 2]
    for r in result.records:
        assert r.failed == {1: "failed"} and r.selected == (0, 2, 3) and set(r.clients) == {0, 2, 3}
    assert "client 1 failed and is dropped" in caplog.text


def test_timed_out_clients_are_dropped_and_a_round_without_updates_is_kept(caplog) -> None:
    run = _run(settings=LocalTraining(lr=0.1, time_limit=1e-9))
    with caplog.at_level(logging.WARNING):
        result = run.run(rounds=3, fit=fit_sequentially)
    assert len(result.records) == 3  # no round is lost, even when every client times out
    for r in result.records:
        assert r.failed == {i: "timed out" for i in range(4)} and r.selected == () and r.decision == "no updates"
        assert r.accuracy == result.initial_accuracy and r.bytes_up == 0 and r.bytes_down > 0
    assert "no client finished" in caplog.text


def test_the_rule_controller_drives_selection_steps_and_stop_in_the_loop() -> None:
    run = _run(controller=RuleController("adaptive", select_fraction=0.5, stop_threshold=10.0))
    run.llm_losses = {i: 0.05 for i in range(4)}
    run.server_llm_loss = 0.3
    result = run.run(rounds=5)
    first = result.records[0]
    assert len(result.records) == 1 and first.stop  # |server − LLM| < 10 stops after round 1
    assert len(first.selected) == 2 and first.discarded_evaluations == 0  # logreg: no circuits
    assert all(s > 5 for s in first.next_steps.values())  # client losses ≫ 0.05: steps grow


# --- finished runs, stored by content (tasks/federated.py) ----------------------------------------


def _failing(clients: set[int]):
    """A fit where ``clients`` fail in every round."""

    def fit(jobs):
        return [ClientFailure(j.client.id, "failed", "boom") if j.client.id in clients else j.run() for j in jobs]

    return fit


def test_a_stored_run_reads_back_equal(tmp_path) -> None:
    from lab.methods.federated import load_run, store_run

    result = _run().run(rounds=2, fit=_failing({1}))
    store_run(str(tmp_path), "key", result)
    back = load_run(str(tmp_path), "key")
    assert back.records == result.records and back.records[0].failed == {1: "failed"}
    assert (back.initial_accuracy, back.initial_loss) == (result.initial_accuracy, result.initial_loss)
    assert back.weights.keys() == result.weights.keys()
    assert all(np.array_equal(back.weights[k], result.weights[k]) for k in result.weights)
    assert load_run(str(tmp_path), "another key") is None


def test_only_seeded_failures_leave_a_run_storable() -> None:
    from lab.methods.federated import real_failures, simulated_failures

    seed, rate, ids = 1, 0.4, [0, 1, 2, 3]
    seeded = {r: simulated_failures(seed, r, ids, rate) for r in (1, 2)}
    assert seeded[1] != seeded[2] and all(len(s) < 4 for s in seeded.values())

    def fit(jobs, extra: frozenset[int] = frozenset()):
        return _failing(seeded[jobs[0].round] | extra)(jobs)

    assert real_failures(_run().run(rounds=2, fit=fit), ids, seed, rate) == []
    spare = min(set(ids) - seeded[2])
    lost = real_failures(
        _run().run(rounds=2, fit=lambda jobs: fit(jobs, frozenset({spare}) if jobs[0].round == 2 else frozenset())),
        ids,
        seed,
        rate,
    )
    assert lost == [(2, spare)]


@pytest.mark.parametrize("change", ["data", "model", "controller", "settings", "llm"])
def test_the_run_key_changes_with_everything_a_run_reads(change: str) -> None:
    from lab.methods.federated import NOT_IN_RUN_KEY, FederatedParams, FederatedSplit, run_key

    x, y = _blobs(40, seed=0)
    spec = ModelSpec("logreg", 2, 2)

    def setting(x: np.ndarray) -> FederatedSplit:
        return FederatedSplit(
            "blobs", "iid", [Client(0, x[:20], y[:20], spec)], [[]], (x[20:30], y[20:30]), [], (x[30:], y[30:]), 2, 0.0
        )

    params = FederatedParams()
    base = dict(
        setting=setting(x),
        spec=spec,
        controller="adaptive",
        settings=params.model_dump(exclude=NOT_IN_RUN_KEY),
        llm_losses={"client0": 0.5},
    )
    changed = {
        "data": {"setting": setting(x + 1e-6)},
        "model": {"spec": ModelSpec("logreg", 2, 2, seed=1)},
        "controller": {"controller": "none"},
        "settings": {"settings": params.model_copy(update={"rounds": 11}).model_dump(exclude=NOT_IN_RUN_KEY)},
        "llm": {"llm_losses": {"client0": 0.6}},
    }[change]
    assert run_key(**base) == run_key(
        **{**base, "settings": FederatedParams(experiment="x").model_dump(exclude=NOT_IN_RUN_KEY)}
    )  # the experiment's name is not part of a run
    assert run_key(**base) != run_key(**{**base, **changed})


@pytest.mark.parametrize(
    ("kind", "qasm", "loadable"),
    [("vqc", {"circuit.qasm"}, False), ("qdllm", {"circuit.qasm"}, True), ("logreg", set(), False)],
)
def test_the_final_global_model_is_saved_with_its_circuit(tmp_path, kind: str, qasm: set[str], loadable: bool) -> None:
    """Every federated model's folder holds its weights, its spec and (quantum) its circuit as
    OpenQASM 3; a QD-LLM student's folder is one `load_model` reads back with the same weights.
    (The flow once looked for a `circuit()` method, which a QD-LLM student does not have.)"""
    from lab.methods.federated import FederatedSplit, RunOutput, save_global_model
    from qcore.federated.server import RunResult
    from qcore.models import load_model

    spec = ModelSpec(kind, 4, 2, seed=3)
    weights = get_weights(build_model(spec))
    split = FederatedSplit(
        "blobs", "iid", [], [], (np.zeros((1, 4)), np.zeros(1)), [], (np.zeros((1, 4)), np.zeros(1)), 2, 0.0
    )
    folder = save_global_model(RunOutput(split, kind, spec, RunResult(0.5, 0.7, [], weights)), tmp_path / "model")
    files = {p.name for p in folder.iterdir()}
    assert {"weights.safetensors", "config.json"} <= files and {f for f in files if f.endswith(".qasm")} == qasm
    assert all((folder / f).read_text().startswith("OPENQASM 3.0;") for f in qasm)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # written through a temporary folder, renamed
    if loadable:
        back = load_model(folder)
        assert all(np.allclose(p.detach().numpy(), weights[name]) for name, p in back.named_parameters())
        assert "spec.json" in files


# --- the registry's view: leaderboard rows, the classical stand-in, tuning -----------------------


def _shared(train: int = 80, test: int = 20, poisoned: bool = False):
    """A tiny data set and its "embeddings" (8 features), as the compare flow shares them;
    ``poisoned``: the test split's features are NaN, so whatever reads them shows it."""
    from lab.data import Dataset
    from lab.embedded import EmbeddedSplit

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * ((train + test) // 2))
    x = (y[:, None] + 0.5 * rng.standard_normal((len(y), 8))).astype(np.float32)
    test_x = np.full((test, 8), np.nan, np.float32) if poisoned else x[train:]
    texts = [f"text {i}" for i in range(len(y))]
    data = Dataset("blobs", "memory", ("a", "b"), texts[:train], y[:train], texts[train:], y[train:], {})
    teacher = np.zeros((len(y), 2), np.float32)
    embedded = EmbeddedSplit(
        x[:train], y[:train], teacher[:train], test_x, y[train:], teacher[train:], ("a", "b"), "blobs", {}
    )
    return data, embedded


def _params(**kw):
    from lab.methods.federated import FederatedParams

    values = dict(clients=2, rounds=2, local_steps=2, controller=["adaptive"], baseline="logreg", server_fraction=0.2)
    return FederatedParams(**{**values, **kw})


@pytest.mark.parametrize("method", ["llm-qfl", "llm-qfl-classical", "fed-logreg"])
def test_a_federated_row_has_the_global_models_predictions_and_a_stored_run_gives_them_again(
    tmp_path, method: str
) -> None:
    from lab.methods import METHODS
    from lab.methods.base import Hooks
    from lab.methods.federated import FederatedData

    m = METHODS[method]
    params = m.for_trial(_params(), {"circuit": "classical"}) if method.endswith("classical") else _params()
    data, embedded = _shared()
    fdata = FederatedData(m.compare_split(params, data, embedded), {})
    (job,) = m.jobs(params, fdata)
    row = m.train(job, fdata, str(tmp_path), Hooks())
    test_y = fdata.split.test[1]
    assert len(row.test_predictions) == len(test_y)
    assert np.mean(np.array(row.test_predictions) == test_y) == pytest.approx(row.accuracy)  # the final model's
    if method == "fed-logreg":
        assert row.ablated_predictions is None and row.kind == "baseline"  # no circuit
    else:  # the circuit (the stand-in's MLP) at its mean over the clients' inputs: one class for every example
        assert len(set(row.ablated_predictions)) == 1
    again = m.train(job, fdata, str(tmp_path), Hooks())
    assert again.cached and again.test_predictions == row.test_predictions
    assert again.ablated_predictions == row.ablated_predictions


def test_the_classical_standin_of_llm_qfl_is_a_classical_row_of_the_vqcs_size() -> None:
    from lab.methods import METHODS
    from qcore.ablation import STANDIN_TOLERANCE

    class Budget:
        dataset, text_column, label_column, train_size, test_size, split_seed = "sst2", None, None, 200, 50, 0
        clients, rounds, controller, llm_steps = 2, 2, "adaptive", 2

    standin, vqc = METHODS["llm-qfl-classical"], METHODS["llm-qfl"]
    (params,) = standin.for_budget(Budget(), [0])
    assert params.circuit == "classical" and standin.is_baseline and not vqc.is_baseline
    assert standin.search_space == vqc.search_space
    spec, quantum_spec = params.model_spec(2), vqc.for_budget(Budget(), [0])[0].model_spec(2)
    assert quantum_spec.options == {"readout": "mod"}  # a quantum run's spec (and stored key) as before
    model = build_model(spec)
    size = sum(p.numel() for p in model.parameters())
    assert not hasattr(model, "quantum") and abs(size - 16) <= STANDIN_TOLERANCE * 16


def test_a_federated_trial_reads_a_training_hold_out_never_the_test_split(tmp_path) -> None:
    """The trial's split is built from the training split alone (the test features are NaN
    here); its clients train in the trial's process, and it reports each round's held-out
    accuracy to the pruner."""
    from lab.data import tuning_mask
    from lab.methods import METHODS
    from lab.methods.federated import FederatedData
    from lab.tuning import TrialTask, run_trial

    m = METHODS["llm-qfl"]
    params = _params()
    data, embedded = _shared(poisoned=True)
    view = m.tuning_split(params, data, embedded, 0.25, 0)
    held = tuning_mask(data.train_labels, 0.25, 0)
    arrays = [view.test[0], view.server[0], *(c.x for c in view.clients)]
    assert all(np.isfinite(a).all() for a in arrays)
    assert np.array_equal(np.sort(view.test[1]), np.sort(data.train_labels[held]))
    assert len(view.server[1]) + sum(c.num_examples for c in view.clients) == (~held).sum()
    assert view.name == "blobs-tuning iid"  # its parties' LLM fine-tunes apart from the real split's
    fdata = FederatedData(m.compare_split(params, data, embedded), {}, {(0.25, 0): FederatedData(view, {})})
    assert m.tuning_view(fdata, 0.25, 0).split is view
    with pytest.raises(ValueError, match=r"no tuning view of fraction 0\.2 and seed 0"):
        m.tuning_view(fdata, 0.2, 0)
    trial = TrialTask("llm-qfl", 0, {"lr": 0.2}, m.for_trial(params, {"lr": 0.2}).model_dump())
    outcome = run_trial(trial, m.tuning_view(fdata, 0.25, 0), str(tmp_path))
    assert outcome.state == "complete" and 0 <= outcome.value <= 1
    assert [step for step, _ in outcome.curve] == [1, 2] and outcome.curve[-1][1] == outcome.value
