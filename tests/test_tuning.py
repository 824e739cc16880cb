"""Hyper-parameter search (lab.tuning) on a small real task, trials run in this process: the
study is stored and resumed, a trial below the median is pruned, tuning never reads the test
split, and bad spaces are refused before any trial."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from lab.data import DataError
from lab.embedded import EmbeddedSplit
from lab.methods import METHODS
from lab.search_space import Float, Int, parse_dimension
from lab.tuning import Pruning, TrialOutcome, TrialTask, TuneError, check_space, run_trial, tune

QDLLM = METHODS["qdllm"]
SPACE = {"lr": Float(1e-3, 0.1, log=True), "blocks": Int(1, 2)}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 16)) + 1.5 * y[:, None] * np.eye(16)[0]
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def split() -> EmbeddedSplit:
    (train_x, train_y), (test_x, test_y) = separable(120, 0), separable(60, 1)
    logits = np.zeros((len(train_y), 2), dtype=np.float32)
    return EmbeddedSplit(
        train_x, train_y, logits, test_x, test_y, logits[:60], ("a", "b"), "separable-120", {"kind": "probe"}
    )


def base() -> object:
    return QDLLM.params(qubits=[4], blocks=[1], seeds=[0], epochs=3, batch_size=16, eval_shots=None, eval_noise=None)


def execute_here(view: EmbeddedSplit, root: Path):
    def execute(tasks: list[TrialTask]) -> list:
        return [run_trial(t, view, str(root)) for t in tasks]

    return execute


def test_the_tuning_view_holds_out_training_examples_and_never_the_test_split(split: EmbeddedSplit) -> None:
    view = QDLLM.tuning_view(split, 0.25, 0)
    train_rows = {r.tobytes() for r in split.train_x}
    assert len(view.test_y) == 30 and len(view.train_y) == 90
    assert all(r.tobytes() in train_rows for r in view.test_x)  # held out of the training split
    assert not {r.tobytes() for r in view.test_x} & {r.tobytes() for r in split.test_x}
    assert abs(view.test_y.mean() - split.train_y.mean()) < 0.05  # stratified
    with pytest.raises(DataError, match="leaves a class without a training or a held-out example"):
        QDLLM.tuning_view(split, 0.999, 0)


def test_a_study_runs_stores_and_resumes(split: EmbeddedSplit, tmp_path: Path) -> None:
    view = QDLLM.tuning_view(split, 0.25, 0)
    seen: list[int] = []
    kwargs = dict(data_key=view.key, root=str(tmp_path), parallel=2, seed=0, execute=execute_here(view, tmp_path))
    first = tune(QDLLM, base(), SPACE, trials=3, on_trial=lambda o: seen.append(o.number), **kwargs)
    assert seen == [0, 1, 2] and first.resumed == 0 and len(first.trials) == 3
    assert first.best_value == max(t.value for t in first.trials if t.state == "complete")
    assert 1e-3 <= first.best_values["lr"] <= 0.1 and first.best_values["blocks"] in (1, 2)
    database = tmp_path / "tuning" / f"{first.key[:32]}.db"
    assert database.is_file()
    # a run killed mid-trial leaves that trial RUNNING: the next run redoes it with its values
    study = optuna.load_study(study_name=first.key[:32], storage=f"sqlite:///{database}")
    cut = study.ask({k: d.distribution() for k, d in SPACE.items()})
    again = tune(QDLLM, base(), SPACE, trials=5, on_trial=lambda o: seen.append(o.number), **kwargs)
    assert again.resumed == 3 and len(again.trials) == 5 and seen[3:] == [4, 5]
    assert again.trials[3].values == cut.params  # the cut-off trial's values, run again
    with sqlite3.connect(database) as db:
        states = dict(db.execute("select state, count(*) from trials group by state").fetchall())
    assert states.pop("FAIL") == 1 and set(states) <= {"COMPLETE", "PRUNED"} and sum(states.values()) == 5


def test_two_methods_studies_draw_their_own_values(tmp_path: Path) -> None:
    """Same space, same ``sampler_seed``: QD-LLM and its stand-in must not draw one grid."""
    drawn: dict[str, list[float]] = {}

    def record(tasks: list[TrialTask]) -> list:
        drawn.setdefault(tasks[0].method, []).extend(t.values["lr"] for t in tasks)
        return [TrialOutcome(t.number, t.values, "complete", 0.5, [], 0.0) for t in tasks]

    for m in ("qdllm", "qdllm-classical"):
        method = METHODS[m]
        tune(
            method,
            method.for_trial(base(), {}),
            SPACE,
            data_key="k",
            root=str(tmp_path),
            trials=3,
            parallel=1,
            seed=0,
            execute=record,
        )
    assert len(drawn["qdllm"]) == 3 and not set(drawn["qdllm"]) & set(drawn["qdllm-classical"])


def test_a_trial_saves_no_model(split: EmbeddedSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial's model is never loaded: it skips the merged folder, its check and the ablation."""
    seen = []
    monkeypatch.setattr(type(QDLLM), "train", lambda self, job, data, root, hooks: seen.append(hooks) or _raise())
    view = QDLLM.tuning_view(split, 0.25, 0)
    outcome = run_trial(TrialTask("qdllm", 0, {}, base().model_dump()), view, str(tmp_path))
    assert outcome.state == "failed" and [h.save_models for h in seen] == [False]


def _raise() -> None:
    raise RuntimeError("stop here")


def test_a_trial_below_the_median_is_pruned(split: EmbeddedSplit, tmp_path: Path) -> None:
    view = QDLLM.tuning_view(split, 0.25, 0)
    perfect = [
        optuna.trial.create_trial(value=1.0, intermediate_values=dict.fromkeys(range(1, 4), 1.0)) for _ in range(3)
    ]
    params = QDLLM.for_trial(base(), {"lr": 1e-3}).model_dump()
    task = TrialTask("qdllm", 7, {"lr": 1e-3}, params, perfect, Pruning(startup=2, warmup=1))
    outcome = run_trial(task, view, str(tmp_path))
    assert outcome.state == "pruned" and [s for s, _ in outcome.curve] == [1, 2]  # epoch 1 is warm-up
    unpruned = run_trial(TrialTask("qdllm", 8, {"lr": 1e-3}, params), view, str(tmp_path))
    assert unpruned.state == "complete" and len(unpruned.curve) == 3


@pytest.mark.parametrize(
    "space,message",
    [
        (
            {"lr": Float(1e-3, 2.0)},
            r"qdllm: search bound lr=2.0 is not allowed \(Input should be less than or equal to 1",
        ),
        ({"qubit": Int(2, 4)}, "'qubit' is not a parameter of qdllm; its search space names lr, circuit_lr"),
        ({"blocks": Int(0, 3)}, "search bound blocks=0 is not allowed"),
        ({}, "qdllm declares nothing to tune"),
    ],
)
def test_bad_spaces_are_refused_before_any_trial(space: dict, message: str) -> None:
    with pytest.raises(TuneError, match=message):
        check_space(QDLLM, base(), space)


def test_space_overrides_parse_as_the_declared_kind() -> None:
    assert parse_dimension("lr", "1e-4:0.3:log", Float(1e-3, 0.1)) == Float(1e-4, 0.3, log=True)
    assert parse_dimension("blocks", "1:6", Int(1, 4)) == Int(1, 6)
    with pytest.raises(ValueError, match="low < high"):
        parse_dimension("lr", "0.3:1e-4", None)


@pytest.mark.parametrize("circuit,in_circuit_group", [("quantum", 1), ("classical", 4)])
def test_the_circuit_learning_rate_reaches_the_circuit_or_its_stand_in(circuit: str, in_circuit_group: int) -> None:
    from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
    from qcore.training import parameter_groups

    student = QDLLMStudent(QDLLMConfig(in_features=8, num_classes=2, qubits=3, blocks=1, circuit=circuit))
    groups = {g["lr"]: len(g["params"]) for g in parameter_groups(student, 0.01, 0.1)}
    assert groups == {0.01: 4, 0.1: in_circuit_group}  # the dense layers; the angles or the stand-in MLP
    assert [g["lr"] for g in parameter_groups(student, 0.01, None)] == [0.01, 0.01]
