"""AsymLoRA: the layer formula, what trains, and the adapter's save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from alter.adapters.io import AdapterError
from alter.methods.asymlora import (
    AsymLoRA,
    AsymLoRAConfig,
    AsymLoRALinear,
    inject_asymlora,
    is_asym_param,
    load_asymlora,
)
from alter.methods.loop import UnlearnConfig, run_method
from alter.models import load_model

FORGET = [{"question": f"Where does Vell {i} live?", "answer": f"In Durn {i}."} for i in range(4)]
RETAIN = [{"question": f"What colour is Oma {i}?", "answer": f"Oma {i} is teal."} for i in range(4)]
IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


def trained(name="tiny-llama", steps=2):
    model, tok = load_model(name)
    method = AsymLoRA()
    summary = run_method(
        method, model, tok, FORGET, RETAIN, UnlearnConfig(max_steps=steps, lr=1e-2), progress=False
    )
    return method, tok, summary


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_injection_changes_nothing_until_trained(name):
    model, _ = load_model(name)
    before = model(IDS).logits
    adapted = inject_asymlora(model, AsymLoRAConfig())
    assert adapted and all(isinstance(model.get_submodule(n), AsymLoRALinear) for n in adapted)
    if name == "tiny-gpt2":  # Conv1D layers (weight stored d_in x d_out) are wrapped too
        assert any(n.endswith("c_attn") for n in adapted)
    assert torch.equal(model(IDS).logits, before)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_layer_equals_the_explicit_formula(name):
    model, _ = load_model(name)
    adapted = inject_asymlora(model, AsymLoRAConfig(n_heads=3))
    layer = model.get_submodule(adapted[0])
    torch.manual_seed(1)
    with torch.no_grad():
        layer.asym_B.normal_()
    x = torch.randn(2, 5, layer.d_in)
    w = torch.softmax(x @ layer.asym_router.weight.t(), dim=-1)
    want = layer.base_layer(x)
    for i in range(3):  # y = W0 x + scaling * sum_i w_i(x) B_i A x
        want = want + layer.scaling * w[..., i : i + 1] * (
            x @ layer.asym_A.t() @ layer.asym_B[i].t()
        )
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_only_the_adapter_trains(name):
    method, _, summary = trained(name)
    assert all(v == v and abs(v) < float("inf") for v in summary["last"].values())
    model = method.result()
    for n, p in model.named_parameters():
        if is_asym_param(n):
            assert p.requires_grad and p.grad is not None, n
        else:
            assert not p.requires_grad and p.grad is None, n
    trained_ids = {id(p) for p in method.trainable()}
    assert trained_ids == {id(p) for n, p in model.named_parameters() if is_asym_param(n)}
    heads = [p.detach().flatten(1) for n, p in model.named_parameters() if n.endswith("asym_B")]
    assert all(bool((h.abs().sum(-1) > 0).all()) for h in heads), "a B head is still zero"


def test_save_and_load_reproduce_the_logits_exactly(tmp_path):
    method, tok, _ = trained()
    method.save(tmp_path, tok)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["format"] == "asymlora/1" and meta["config"]["n_heads"] == 4
    assert meta["adapted_modules"] == method.adapted
    assert (tmp_path / "adapter_model.safetensors").is_file()
    want = method.result().eval()(IDS).logits

    fresh, _ = load_model("tiny-llama")
    got = load_asymlora(fresh, tmp_path)(IDS).logits
    assert torch.equal(got, want)


def test_load_refuses_bad_directories_with_clear_errors(tmp_path):
    method, tok, _ = trained(steps=1)
    good = tmp_path / "good"
    method.save(good, tok)

    with pytest.raises(AdapterError, match="no adapter_config.json"):
        load_asymlora(load_model("tiny-llama")[0], tmp_path / "missing")

    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="corrupted JSON"):
        load_asymlora(load_model("tiny-llama")[0], bad_json)

    (good / "adapter_model.safetensors").rename(tmp_path / "weights")
    (good / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(AdapterError, match="cannot read adapter weights"):
        load_asymlora(load_model("tiny-llama")[0], good)
    (tmp_path / "weights").replace(good / "adapter_model.safetensors")

    meta = json.loads((good / "adapter_config.json").read_text())
    meta["config"]["r"] = 4  # the saved tensors have rank 8
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "adapter_config.json").write_text(json.dumps(meta))
    (shapes / "adapter_model.safetensors").write_bytes(
        (good / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(AdapterError, match=r"has shape \(8, 64\), expected \(4, 64\)"):
        load_asymlora(load_model("tiny-llama")[0], shapes)

    with pytest.raises(AdapterError, match="different architecture"):
        load_asymlora(load_model("tiny-gpt2")[0], good)

    other, _ = load_model("tiny-llama", seed=1)  # same shapes, other weights
    with pytest.raises(AdapterError, match="different base weights"):
        load_asymlora(other, good)
    assert not any(is_asym_param(n) for n, _ in other.named_parameters()), "model was modified"
    load_asymlora(other, good, allow_other_base=True)
    assert any(is_asym_param(n) for n, _ in other.named_parameters())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"r": 0}, "r must be >= 1"),
        ({"lora_alpha": 0}, "lora_alpha must be > 0"),
        ({"n_heads": 0}, "n_heads must be >= 1"),
        ({"target_modules": "("}, "not a valid regex"),
        ({"beta": -1}, "beta and gamma must be >= 0"),
    ],
)
def test_bad_config_values_are_value_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        AsymLoRAConfig(**overrides)
