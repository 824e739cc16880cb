"""QPA, QTHA and the peft LoRA baseline on real Hugging Face models: a tiny random GPT-2 (its
Conv1D attention and MLP layers, and its lm_head, which is tied to the token embedding) and the
embedded all-MiniLM-L6-v2 (BERT Linear layers). Every method is held to the same checks: only
adapter parameters train, merge/unmerge round trips, save/load, and a merged folder that loads
with plain ``from_pretrained``. Then the parameter counts of the QPA paper, and bad input."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from lab.methods.peft import MERGE_TOLERANCE
from lab.teacher import resolve_model
from qcore.ablation import circuits_on
from qcore.adapters import AdapterError, QPAConfig, QTHAConfig, adapt, adapter_config, load_adapter
from qcore.adapters.counting import compare, skeleton
from qcore.adapters.qpa import PUBLISHED_HIDDEN, QPAModel
from qcore.adapters.qpa.layer import basis_states, transform_probabilities
from qcore.adapters.qtha import MPO, factorize
from qcore.adapters.training import peak_memory, train_steps
from qcore.layer import QuantumLayer
from qcore.simulators.exact import ExactSimulator

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

TINY_GPT2 = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=300, n_positions=64, bos_token_id=0, eos_token_id=0)
# Small QPA/QTHA settings for small layers (the published QPA sizes are checked by the counts).
OPTIONS = {"lora": {}, "qpa": {"chunk_size": 64, "hidden_sizes": [16]}, "qtha": {"qubits": 3, "layers": 1}}


@pytest.fixture(scope="module")
def minilm() -> torch.nn.Module:
    return transformers.AutoModel.from_pretrained(resolve_model(None)).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(**TINY_GPT2)).eval()


# case: (model builder, targets, inputs)
CASES = {
    "gpt2-conv1d": (lambda _: tiny_gpt2(), ["c_attn", "c_fc"], {"input_ids": torch.arange(24).view(2, 12) * 7 % 300}),
    "gpt2-tied-lm_head": (lambda _: tiny_gpt2(), ["lm_head"], {"input_ids": torch.arange(24).view(2, 12) * 5 % 300}),
    "minilm-query-value": (
        lambda m: copy.deepcopy(m),
        ["query", "value"],
        {"input_ids": torch.tensor([[101, 7592, 2088, 102], [101, 2204, 3185, 102]])},
    ),
}
TABLE = [(method, case) for method in ("lora", "qpa", "qtha") for case in CASES]


def outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def trained(method: str, case: str, minilm: torch.nn.Module, steps: int = 2):
    """The case's base model, and a copy adapted by ``method`` and trained a few steps at a high
    learning rate (so ΔW ≠ 0 for every method, LoRA's and QTHA's zero start included)."""
    build, targets, inputs = CASES[case]
    base = build(minilm)
    torch.manual_seed(0)  # the adapters' initialisation: the same model in every run
    adapted = adapt(copy.deepcopy(base), adapter_config(method, target_modules=targets, r=4, **OPTIONS[method]))
    optimizer = torch.optim.Adam(adapted.trainable_parameters().values(), lr=1e-2)
    adapted.train()
    for _ in range(steps):
        out = adapted(**inputs)
        (out.logits if hasattr(out, "logits") else out.last_hidden_state).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return base, adapted, inputs


def close(a: torch.Tensor, b: torch.Tensor, tol: float = MERGE_TOLERANCE) -> bool:
    """Equal to ``tol`` relative to the outputs' scale (at least 1), the bound the flow checks.

    Merging moves ΔW into W, so float32 rounds differently; after two steps at lr 1e-2, QPA's ΔW
    on MiniLM is ~100× W: over 60 initialisations the merged outputs moved by up to 1.3e-5 of
    the scale (1e-5 failed CI once). A wrong merge is off by O(1)."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("method,case", TABLE)
def test_only_adapter_parameters_train(method: str, case: str, minilm: torch.nn.Module) -> None:
    build, targets, inputs = CASES[case]
    model = build(minilm)
    base = {id(p): (p, p.detach().clone()) for p in model.parameters()}
    adapted = adapt(model, adapter_config(method, target_modules=targets, r=4, **OPTIONS[method]))
    trainable = adapted.trainable_parameters()
    assert trainable and not any(id(p) in base for p in trainable.values())  # only new, adapter tensors
    assert not any(p.requires_grad for p, _ in base.values())
    out = adapted(**inputs)
    (out.logits if hasattr(out, "logits") else out.last_hidden_state).square().mean().backward()
    assert all(p.grad is None for p, _ in base.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    torch.optim.SGD(trainable.values(), lr=1.0).step()
    assert all(torch.equal(p, before) for p, before in base.values())


@pytest.mark.parametrize("method,case", TABLE)
def test_merge_unmerge_save_load_and_export(method: str, case: str, minilm: torch.nn.Module, tmp_path: Path) -> None:
    base, adapted, inputs = trained(method, case, minilm)
    expected = outputs(adapted, inputs)
    assert not close(expected, outputs(base, inputs), 1e-4), "training did not change the outputs"

    # merge / unmerge: the same outputs; unmerge restores the base weights; a tied embedding is untouched
    layers = [layer for _, layer in adapted.adapter_layers()]
    originals = [layer.base_layer.weight.detach().clone() for layer in layers]
    adapted.merge()
    assert close(outputs(adapted, inputs), expected), "merged outputs differ"
    assert not torch.equal(layers[0].base_layer.weight, originals[0]), "merge changed no weight"
    adapted.unmerge()
    assert close(outputs(adapted, inputs), expected), "unmerged outputs differ"
    for layer, original in zip(layers, originals, strict=True):
        assert torch.allclose(layer.base_layer.weight, original, atol=1e-6), "unmerge did not restore the weight"
    if method != "lora":  # (peft's own layers only warn)
        with pytest.raises(AdapterError, match="already unmerged"):
            layers[0].unmerge()

    # save / load into a fresh copy of the base model
    folder = adapted.save_pretrained(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    loaded = load_adapter(copy.deepcopy(base), folder)
    assert type(loaded) is type(adapted)
    assert torch.allclose(outputs(loaded, inputs), expected, atol=1e-6), "the loaded adapter differs"

    # merge_and_unload → a plain Hugging Face folder that from_pretrained reads, same outputs
    merged = adapted.merge_and_unload()
    assert not any(type(m).__module__.startswith(("qcore", "peft")) for m in merged.modules())
    merged.save_pretrained(tmp_path / "merged")
    auto = transformers.AutoModelForCausalLM if case.startswith("gpt2") else transformers.AutoModel
    reloaded = auto.from_pretrained(tmp_path / "merged")
    assert close(outputs(reloaded, inputs), expected), "the saved merged model differs"
    embedding = [p for n, p in base.named_parameters() if n.endswith("wte.weight")]
    for p in embedding:
        assert torch.equal(reloaded.transformer.wte.weight, p), "merging changed the tied token embedding"


def test_merged_model_runs_without_qcore(minilm: torch.nn.Module, tmp_path: Path) -> None:
    """A QPA-merged GPT-2 (tied lm_head) in a Python where qcore, peft and qiskit cannot import."""
    _, adapted, inputs = trained("qpa", "gpt2-tied-lm_head", minilm)
    torch.save({"inputs": inputs["input_ids"], "expected": outputs(adapted, inputs)}, tmp_path / "check.pt")
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    script = (
        "import sys; sys.modules.update(qcore=None, peft=None, qiskit=None)\n"
        "import torch, transformers\n"
        f"check = torch.load({str(tmp_path / 'check.pt')!r})\n"
        f"model = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'merged')!r}).eval()\n"
        "with torch.no_grad(): got = model(input_ids=check['inputs']).logits\n"
        "d = (got - check['expected']).abs().max().item()\n"
        "assert d <= 1e-5 * max(1.0, check['expected'].abs().max().item()), d\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


# --- counts ---------------------------------------------------------------------------------------


def test_gpt2_lm_head_counts_reproduce_the_qpa_paper() -> None:
    """GPT-2 small's lm_head (768 → 50,257), rank 4, chunk 2048, depth 8, published mapping sizes:
    LoRA 204,100; QPA 106,264 = 56 circuit angles (7 qubits) + 106,208 mapping; 52.06%."""
    configs = [adapter_config(m, target_modules=["lm_head"], r=4) for m in ("lora", "qpa", "qtha")]
    lora, qpa, qtha = compare(lambda: skeleton(GPT2Config()), configs)
    assert (lora.adapter, lora.circuit, lora.ratio_to_lora) == (204_100, 0, 1.0)
    assert (qpa.adapter, qpa.circuit, qpa.details) == (106_264, 56, ("7 qubits, 100 chunks",))
    assert round(qpa.ratio_to_lora * 100, 2) == 52.06
    assert qtha.adapter < lora.adapter and qtha.circuit == 4 * 2 * 2


def test_minilm_counts_on_query_and_value() -> None:
    config = transformers.AutoConfig.from_pretrained(resolve_model(None))
    configs = [adapter_config(m, target_modules=["query", "value"], r=4, **OPTIONS[m]) for m in ("lora", "qpa")]
    lora, qpa = compare(lambda: skeleton(config), configs)
    assert (lora.adapter, lora.layers, lora.qubits) == (12 * 4 * (384 + 384), 12, 0)
    assert qpa.qubits == 6  # what a noise ablation's device must hold
    # m = 3,072 per layer → 48 chunks of 64 → 6 qubits; mapping 7→16→64
    assert qpa.adapter == 12 * (6 * 8 + (7 * 16 + 16) + (16 * 64 + 64)) and qpa.details == ("6 qubits, 48 chunks",)


# --- the methods' internals ---------------------------------------------------------------------


# case: (model builder, targets, zero_start, {qubits: layers} of the shape groups, the layer moved
# to Aer (None: none), tolerance after the circuit). The circuits' probabilities and gradients
# agree to 1e-6 everywhere. After them, the published x^0.15 of near-zero probabilities amplifies
# float32 rounding, which the batch and a layer's own run do in a different order: on MiniLM,
# batching moves the gradients about as much as nudging every angle by 1e-7 (relative) moves the
# per-layer ones, and at initialisation ΔW = A·B − A₀·B₀ is itself rounding only.
BATCHES = {
    "minilm-one-group": (lambda m: copy.deepcopy(m), ["query", "value"], True, {6: 12}, None, 1e-4),
    "gpt2-two-groups": (lambda _: tiny_gpt2(), ["c_attn", "c_fc"], False, {3: 2, 4: 2}, None, 1e-6),
    "gpt2-one-layer-on-aer": (
        lambda _: tiny_gpt2(),
        ["c_attn", "c_fc", "lm_head"],
        False,
        {3: 2, 4: 2, 5: 1},
        "transformer.h.0.attn.c_attn",
        1e-5,
    ),
}


def batch_case(name: str, minilm: torch.nn.Module) -> tuple[QPAModel, dict[str, torch.Tensor], str | None, float]:
    build, targets, zero_start, groups, on_aer, tol = BATCHES[name]
    torch.manual_seed(0)
    config = QPAConfig(target_modules=targets, r=4, dropout=0.0, zero_start=zero_start, **OPTIONS["qpa"])
    model = QPAModel(build(minilm), config)
    assert {g.layers[0].generator.num_qubits: len(g.layers) for g in model.circuit_groups} == groups
    inputs = CASES["minilm-query-value" if name.startswith("minilm") else "gpt2-conv1d"][2]
    return model, inputs, on_aer, tol


@pytest.mark.parametrize("name", BATCHES)
def test_qpa_simulates_each_shape_once_per_forward(
    name: str, minilm: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batched simulation per shape group; a layer moved to Aer runs its own circuit there,
    and so does every layer run on its own (outside the model's forward)."""
    model, inputs, on_aer, _ = batch_case(name, minilm)
    runs: list[object] = []
    layer_forward, probs = QuantumLayer.forward, ExactSimulator.probs
    monkeypatch.setattr(QuantumLayer, "forward", lambda self, *a: runs.append(self) or layer_forward(self, *a))
    monkeypatch.setattr(ExactSimulator, "probs", lambda self, *a, **k: runs.append(self) or probs(self, *a, **k))
    groups = [g.simulator for g in model.circuit_groups]
    layers = [layer for _, layer in model.adapter_layers()]
    with circuits_on(model.model.get_submodule(on_aer), "aer") if on_aer else contextlib.nullcontext():
        model(**inputs)
    assert runs[: len(groups)] == groups  # each group once, before the model runs
    assert runs[len(groups) :] == ([model.model.get_submodule(on_aer).generator.circuit] if on_aer else [])
    runs.clear()
    model.model(**inputs)
    assert len(runs) == 2 * len(layers) and not set(map(id, runs)) & set(map(id, groups))


@pytest.mark.parametrize("name", BATCHES)
def test_qpa_batched_circuits_equal_each_layers_own(name: str, minilm: torch.nn.Module) -> None:
    """The same probabilities, circuit gradients, ΔW, outputs and model gradients as the layers
    give run one by one (``model.model``: each layer on its own circuit, as before batching)."""
    model, inputs, on_aer, tol = batch_case(name, minilm)
    layers = [layer for _, layer in model.adapter_layers()]
    angles = [layer.generator.circuit.weights for layer in layers]
    probe = [torch.randn(2**layer.generator.num_qubits) for layer in layers]
    moved = model.model.get_submodule(on_aer) if on_aer else None

    def run(batched: bool) -> tuple[list[torch.Tensor], ...]:
        with circuits_on(moved, "aer") if moved else contextlib.nullcontext():
            with model.circuits_batched() if batched else contextlib.nullcontext():
                probs = [layer.generator.probabilities() for layer in layers]
                delta = [layer.delta_weight().detach() for layer in layers]
                factors = [f.detach() for layer in layers for f in layer.generated()]
            circuit_grads = torch.autograd.grad(sum((p * r).sum() for p, r in zip(probs, probe, strict=True)), angles)
            out = model(**inputs) if batched else model.model(**inputs)
        y = out.logits if hasattr(out, "logits") else out.last_hidden_state
        grads = torch.autograd.grad(y.square().mean(), list(model.trainable_parameters().values()))
        return [p.detach() for p in probs], list(circuit_grads), factors, delta, [y.detach()], list(grads)

    bounds = {
        "probabilities": 1e-6,
        "circuit gradients": 1e-6,
        "A, B": tol,
        "ΔW": tol,
        "outputs": tol,
        "gradients": tol,
    }
    for (kind, bound), mine, theirs in zip(bounds.items(), run(True), run(False), strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert close(a, b, bound), f"{kind} differ by {(a - b).abs().max().item():.2e}"
    assert all(layer.generator.batched is None for layer in layers)  # handed back after the pass


def test_qpa_generator_pieces_are_the_published_ones() -> None:
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    x = (0.6 * torch.tanh(0.1 * 2 * p)) ** 0.15
    assert torch.allclose(transform_probabilities(p, 2), x - x.mean())
    assert torch.equal(
        basis_states(3, 5),
        torch.tensor([[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float),
    )
    layer = QPAModel(tiny_gpt2(), QPAConfig(target_modules=["lm_head"], chunk_size=64)).model.lm_head
    widths = [m.out_features for m in layer.generator.mapping if isinstance(m, torch.nn.Linear)]
    assert widths == [*PUBLISHED_HIDDEN, 64] and layer.generator.mapping[0].in_features == 5 + 1
    assert not any(isinstance(m, torch.nn.ReLU) for m in layer.generator.mapping)  # linear, as published
    relu = QPAModel(tiny_gpt2(), QPAConfig(target_modules=["lm_head"], chunk_size=64, activation="relu"))
    assert sum(isinstance(m, torch.nn.ReLU) for m in relu.model.lm_head.generator.mapping) == len(PUBLISHED_HIDDEN)


def test_qpa_zero_start_begins_at_the_base_model_and_saves_its_start(tmp_path: Path) -> None:
    config = QPAConfig(target_modules=["lm_head"], chunk_size=64, hidden_sizes=[16], zero_start=True)
    model, x = QPAModel(tiny_gpt2(), config), {"input_ids": torch.arange(8).view(1, 8)}
    assert model.model.lm_head.delta_weight().abs().max() < 1e-6  # A·B − A₀·B₀, to rounding
    assert torch.allclose(outputs(model, x), outputs(tiny_gpt2(), x), atol=1e-5)
    published = QPAModel(tiny_gpt2(), replace(config, zero_start=False)).model.lm_head
    assert published.delta_weight().abs().max() > 1e-2  # as published: far from zero
    model(**x, labels=x["input_ids"]).loss.backward()
    torch.optim.SGD(model.trainable_parameters().values(), lr=1e-2).step()
    model.save_pretrained(tmp_path)
    loaded = load_adapter(tiny_gpt2(), tmp_path)
    assert torch.equal(loaded.model.lm_head.start_a, model.model.lm_head.start_a)
    assert torch.allclose(outputs(loaded, x), outputs(model, x), atol=1e-6)


def test_qtha_starts_at_the_base_model_and_its_mpo_is_exact() -> None:
    model = adapt(tiny_gpt2(), QTHAConfig(target_modules=["c_attn"], r=4))
    for _, layer in model.adapter_layers():
        assert torch.count_nonzero(layer.delta_weight()) == 0  # A's last core is zero, like LoRA's B
    assert factorize(768, 3) == (8, 8, 12) and factorize(50_257, 3) == (34, 37, 40)
    mpo = MPO(6, 10, cores=2, bond_dim=3, std=1.0)
    g1, g2 = mpo.cores  # (1, p1, q1, χ), (χ, p2, q2, 1)
    dense = torch.einsum("aijb,bklc->ikjl", g1, g2).reshape(g1.shape[1] * g2.shape[1], -1)[:6, :10]
    assert torch.allclose(mpo.matrix(), dense)
    assert [c.shape[-1] for c in MPO(4, 4, cores=3, bond_dim=100, std=1.0).cores] == [
        1,
        4,
        1,
    ]  # bonds capped by the 1×1 first core


def test_peak_memory_counts_resident_and_step_tensors() -> None:
    weight = torch.zeros(1000)  # 4,000 bytes resident
    _, peak = peak_memory(lambda: torch.ones(2000).sum(), [weight, weight])  # 8,000 bytes at most during
    assert peak >= 4000 + 8000 and peak < 4000 + 8000 + 1024


def test_training_steps_are_seeded_and_logged() -> None:
    def run() -> list[float]:
        model = adapt(tiny_gpt2(), adapter_config("qtha", target_modules=["c_attn"], **OPTIONS["qtha"]))
        x = torch.arange(24).view(2, 12) % 300
        return train_steps(model, iter([{"input_ids": x, "labels": x}] * 3), steps=3, lr=1e-2, seed=0).losses

    first = run()
    assert len(first) == 3 and first == run()


def test_parameters_can_train_at_their_own_rate() -> None:
    model = adapt(tiny_gpt2(), adapter_config("lora", target_modules=["c_attn"]))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n}
    x = torch.arange(24).view(2, 12) % 300
    train_steps(
        model, iter([{"input_ids": x, "labels": x}] * 3), steps=3, lr=1e-2, seed=0, lr_of=dict.fromkeys(frozen, 0.0)
    )
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())  # lora_A at rate 0: unchanged
    assert any(p.abs().sum() > 0 for n, p in params.items() if "lora_B" in n)  # lora_B (from 0) trained


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"target_modules": ["nothing"]}, "target_modules ['nothing'] match no module of GPT2LMHeadModel"),
        ({"target_modules": ["wte"]}, "only nn.Linear and GPT-2 Conv1D"),
        (
            {"target_modules": ["lm_head"], "r": 33},
            "rank r=33 exceeds layer 'lm_head' (32 → 300): r must be at most 32",
        ),
        (
            {"target_modules": ["lm_head"], "chunk_size": 2048},
            "chunk_size=2048 does not divide layer 'lm_head' sensibly",
        ),
        ({"target_modules": ["lm_head"], "chunk_size": 0}, "chunk_size=0 is invalid"),
        ({"target_modules": ["lm_head"], "activation": "swish"}, "activation='swish' is unknown"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"target_modules": ["lm_head"], "dropout": 1.0}, "dropout=1.0 is invalid"),
    ],
)
def test_bad_qpa_settings_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(AdapterError) as err:
        adapt(tiny_gpt2(), adapter_config("qpa", **fields))
    assert message in str(err.value)


def test_too_many_qubits_and_unknown_methods_are_refused() -> None:
    with pytest.raises(AdapterError, match=r"needs 21 qubits \(at most 20\); choose chunk_size at least 2"):
        adapt(skeleton(GPT2Config()), adapter_config("qpa", target_modules=["lm_head"], r=32, chunk_size=1))
    with pytest.raises(AdapterError, match="qubits=17 is too many"):
        adapter_config("qtha", target_modules=["x"], qubits=17)
    with pytest.raises(AdapterError, match="method 'dora' is unknown"):
        adapter_config("dora", target_modules=["x"])


def test_loading_an_adapter_into_the_wrong_model_is_refused(tmp_path: Path) -> None:
    adapted = adapt(tiny_gpt2(), adapter_config("qtha", target_modules=["c_attn"]))
    adapted.save_pretrained(tmp_path)
    other = GPT2LMHeadModel(GPT2Config(**{**TINY_GPT2, "n_layer": 1}))
    with pytest.raises(AdapterError, match="does not fit the model"):
        load_adapter(other, tmp_path)
