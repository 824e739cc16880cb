"""The QD-LLM student, its distillation loss, training loop, evaluation and classical baselines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qcore.losses import distillation_loss
from qcore.models import (
    QDLLMConfig,
    QDLLMStudent,
    distilled_mlp,
    linear_size,
    logistic_regression,
    matched_mlp,
)
from qcore.simulators import available_backends
from qcore.training import evaluate, model_size_bytes, predict_logits, train


def low_rank_task(n: int, d: int = 384, rank: int = 8, sep: float = 2.0, seed: int = 0):
    """Two Gaussian classes in a ``rank``-dimensional latent space, embedded in ``d`` dimensions
    with isotropic noise: like sentence embeddings, the class signal lives in a few directions
    (with it spread along one direction of 384 isotropic ones instead, the student memorises
    noise). A logistic regression gets about 0.98; a random projection to 11 numbers, far less."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    h = g.standard_normal((n, rank))
    h[:, 0] += (2 * y - 1) * sep
    x = h @ g.standard_normal((rank, d)) / math.sqrt(rank) + 0.3 * g.standard_normal((n, d))
    return x.astype(np.float32), y


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: one thread avoids oversubscribing a shared 2-core machine (several
    times faster there) and fixes the float reduction order the numbers below were checked with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    x, y = low_rank_task(900)
    xtr, ytr, xte, yte = x[:600], y[:600], x[600:], y[600:]
    return xtr, ytr, xte, yte, logistic_regression(xtr, ytr, xtr), logistic_regression(xtr, ytr, xte)


# --------------------------------------------------------------------------- loss
def test_distillation_loss_matches_hand_computation():
    s, t, y, T, a = [1.0, 2.0, 0.5], [0.2, -1.0, 1.5], 1, 2.0, 0.3

    def softmax(v, temp=1.0):
        e = [math.exp(u / temp) for u in v]
        return [u / sum(e) for u in e]

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    ce = -math.log(softmax(s)[y])
    kl_t = kl(softmax(t, T), softmax(s, T))
    p, q = softmax(s), softmax(t)
    m = [(pi + qi) / 2 for pi, qi in zip(p, q, strict=True)]
    js = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    expected = (1 - a) * ce + a * T**2 * kl_t + a * js

    got = distillation_loss(
        torch.tensor([s], dtype=torch.float64),
        torch.tensor([t], dtype=torch.float64),
        torch.tensor([y]),
        temperature=T,
        alpha=a,
    )
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_distillation_loss_limits_and_validation():
    s, t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert distillation_loss(s, t, y, alpha=0.0).item() == pytest.approx(F.cross_entropy(s, y).item())
    assert distillation_loss(t, t, y, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
        distillation_loss(s, t, y, alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        distillation_loss(s, t, y, temperature=0.0)
    with pytest.raises(ValueError, match="same"):
        distillation_loss(s, t[:, :2], y)


# --------------------------------------------------------------------------- the student
def test_parameter_counts_for_minilm_features():
    counts = QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2)).parameter_counts()
    print(f"QD-LLM student, 384-d features, 2 classes, 11 qubits, 2 blocks: {counts}")
    assert counts == {
        "circuit": 144,
        "classical": 384 * 11 + 11 + 11 * 2 + 2,
        "total": 384 * 11 + 11 + 144 + 11 * 2 + 2,
    }


def test_config_is_json_and_validated():
    config = QDLLMConfig(in_features=16, num_classes=4, qubits=5, blocks=1, seed=3)
    assert QDLLMConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["angle_range"] == 10.0
    with pytest.raises(ValueError, match="dtype"):
        QDLLMConfig(16, 2, dtype="float32")


def test_angles_are_min_max_scaled_per_sample():
    model = QDLLMStudent(QDLLMConfig(in_features=8, num_classes=2, qubits=4, blocks=1))
    angles = model.angles(torch.randn(5, 8))
    assert torch.allclose(angles.min(-1).values, torch.zeros(5))
    assert torch.allclose(angles.max(-1).values, torch.full((5,), 10.0))
    with torch.no_grad():  # every qubit gets the same value: angles 0, not NaN
        model.encoder.weight.zero_()
        model.encoder.bias.fill_(0.7)
    assert torch.equal(model.angles(torch.randn(2, 8)), torch.zeros(2, 4))


def test_gradients_reach_every_parameter_and_match_finite_differences():
    config = QDLLMConfig(in_features=6, num_classes=3, qubits=3, blocks=1, dtype="complex128", seed=1)
    model = QDLLMStudent(config)
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1])

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    loss().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    eps = 1e-6
    with torch.no_grad():
        for name, p in [("encoder.weight", model.encoder.weight), ("quantum.weights", model.quantum.weights)]:
            flat = p.view(-1)
            for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
                flat[i] += eps
                up = loss().item()
                flat[i] -= 2 * eps
                down = loss().item()
                flat[i] += eps
                assert p.grad.view(-1)[i].item() == pytest.approx((up - down) / (2 * eps), abs=1e-7), (name, i)


def test_save_load_round_trip(tmp_path):
    model = QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2, seed=5))
    with torch.no_grad():
        model.quantum.weights.add_(0.1)  # not the seed's initial weights
    target = tmp_path / "student"
    model.save(target)
    model.save(target)  # replacing an existing model works too
    assert sorted(f.name for f in target.iterdir()) == ["circuit.qasm", "config.json", "weights.safetensors"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["student"]  # no temporary folders left
    assert (target / "circuit.qasm").read_text().startswith("OPENQASM 3.0;")
    assert model_size_bytes(target) == sum(f.stat().st_size for f in target.iterdir())

    loaded = QDLLMStudent.load(target)
    assert loaded.config == model.config
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    x = torch.randn(6, 384)
    assert torch.equal(predict_logits(model, x), predict_logits(loaded, x))


def test_load_refuses_a_circuit_that_changed(tmp_path):
    model = QDLLMStudent(QDLLMConfig(in_features=8, num_classes=2, qubits=3, blocks=1))
    model.save(tmp_path / "m")
    qasm = tmp_path / "m" / "circuit.qasm"
    qasm.write_text(qasm.read_text().replace("ry(", "rx(", 1))
    with pytest.raises(ValueError, match="differs from the circuit"):
        QDLLMStudent.load(tmp_path / "m")


@pytest.mark.skipif("aer" not in available_backends(), reason="the aer backend is not importable yet")
def test_with_backend_aer_matches_exact():
    model = QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2, seed=2))
    noisy_path = model.with_backend("aer")
    assert noisy_path.config.backend == "aer" and model.config.backend == "exact"
    x = torch.randn(4, 384)
    exact, aer = predict_logits(model, x), predict_logits(noisy_path, x)
    assert aer.dtype == exact.dtype
    assert torch.allclose(aer, exact, atol=1e-5)


# --------------------------------------------------------------------------- training
def test_training_beats_chance_and_evaluates(task):
    xtr, ytr, xte, yte, teacher_train, teacher_test = task
    model = QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2))
    seen = []
    history = train(
        model,
        xtr,
        ytr,
        teacher_train,
        epochs=3,
        batch_size=16,
        lr=0.03,
        seed=0,
        val=(xte, yte),
        on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)),
    )
    print("history:", [{k: round(v, 3) for k, v in h.items()} for h in history])
    assert [e for e, _ in seen] == [1, 2, 3] and seen[-1][1] is history[-1]
    assert set(history[0]) == {"epoch", "loss", "accuracy", "val_accuracy", "seconds"}
    assert history[-1]["loss"] < history[0]["loss"]
    metrics = evaluate(model, xte, yte, teacher_test)
    print("evaluation:", metrics)
    assert metrics["accuracy"] > 0.85 and metrics["macro_f1"] > 0.85 and metrics["agreement"] > 0.85
    assert metrics["accuracy"] == pytest.approx(history[-1]["val_accuracy"])
    assert metrics["latency_ms"] > 0


def test_training_is_deterministic(task):
    xtr, ytr, _, _, teacher_train, _ = task
    runs = []
    for _ in range(2):
        model = QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2, seed=7))
        history = train(model, xtr[:96], ytr[:96], teacher_train[:96], epochs=2, seed=11)
        runs.append(
            (
                [{k: v for k, v in h.items() if k != "seconds"} for h in history],
                [p.detach().clone() for p in model.parameters()],
            )
        )
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(p, q) for p, q in zip(runs[0][1], runs[1][1], strict=True))


def test_train_refuses_bad_arguments(task):
    xtr, ytr, _, _, teacher_train, _ = task
    model = QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2))
    with pytest.raises(ValueError, match="teacher_logits is None"):
        train(model, xtr, ytr, None, epochs=1)
    with pytest.raises(ValueError, match="one row per sample"):
        train(model, xtr, ytr[:-1], teacher_train, epochs=1)


# --------------------------------------------------------------------------- baselines
def test_logistic_regression_logits_are_its_probabilities(task):
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte, _, _, teacher_test = task
    probs = LogisticRegression(max_iter=1000, random_state=0).fit(xtr, ytr).predict_proba(xte)
    assert torch.isfinite(teacher_test).all()
    assert np.allclose(F.softmax(teacher_test, -1).numpy(), probs, atol=1e-6)


def test_matched_mlp_has_about_the_students_size():
    target = QDLLMStudent(QDLLMConfig(in_features=384, num_classes=2)).parameter_counts()["total"]
    mlp = matched_mlp(384, 2, target)
    assert mlp.net[0].out_features == 11
    assert abs(mlp.parameter_counts()["total"] - target) <= (384 + 1 + 2) / 2


def test_distilled_mlp_learns_from_the_same_teacher(task):
    xtr, ytr, xte, yte, teacher_train, teacher_test = task
    mlp, history = distilled_mlp(xtr, ytr, teacher_train, target_params=4403, epochs=4, seed=0)
    assert len(history) == 4
    assert evaluate(mlp, xte, yte, teacher_test)["accuracy"] > 0.85


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("fit", ["LogisticRegression", "LinearSVC"])
def test_linear_size_is_what_sklearn_fits(fit: str, classes: int) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    x = np.random.default_rng(0).standard_normal((30, 7))
    y = np.arange(30) % classes
    model = {"LogisticRegression": LogisticRegression, "LinearSVC": LinearSVC}[fit]().fit(x, y)
    assert model.coef_.size + model.intercept_.size == linear_size(7, classes)
