"""Adapters on a base loaded in bfloat16: float32 adapter parameters and path, output in the
base's dtype, and adapters that move between a float32 base and its bf16 copy (both ways)."""

import json

import pytest
import torch

from alter.adapters import AdapterError, AlterConfig, AlterModel, load_adapter, save_adapter
from alter.adapters.io import METHOD_META, base_fingerprint, same_base
from alter.api import load
from alter.models import load_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 120], [8, 9, 10, 11, 12, 13, 14, 15]])
MASK = torch.ones_like(IDS)


def trained_alter(dtype):
    """An ALTER adapter with random (non-zero) values on tiny-llama loaded in ``dtype``."""
    model, _ = load_model("tiny-llama", dtype=dtype)
    am = AlterModel(model, AlterConfig(n_forget_experts=3))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in am.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return am


def test_alter_adapter_is_float32_on_a_bf16_base_and_its_output_bf16():
    am = trained_alter(torch.bfloat16)
    assert {p.dtype for p in am.adapter_tensors().values()} == {torch.float32}
    layer = am.layers()[0]
    x = torch.randn(2, 3, layer.d_in).bfloat16()
    y = layer(x)
    assert y.dtype == torch.bfloat16
    # The adapter path in float32 on the upcast input, rounded once when added to W0 x.
    want = layer.base_layer(x) + (layer.scaling * layer.delta(x.float())).bfloat16()
    assert torch.equal(y, want)
    out = am(IDS, MASK).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert layer.alter_A.grad.dtype == torch.float32 and layer.alter_A.grad.abs().sum() > 0


def test_a_bf16_copy_is_the_same_base_two_float32_bases_must_match_exactly():
    fp32 = base_fingerprint(load_model("tiny-llama")[0])
    bf16 = base_fingerprint(load_model("tiny-llama", dtype=torch.bfloat16)[0])
    assert fp32["base_dtype"] == "float32" and bf16["base_dtype"] == "bfloat16"
    assert fp32["base_weights"] != bf16["base_weights"]
    assert same_base(fp32, bf16) and same_base(bf16, fp32)
    other = load_model("tiny-llama", seed=1)[0]
    assert not same_base(fp32, base_fingerprint(other))
    assert not same_base(base_fingerprint(other.bfloat16()), fp32)
    # Two float32 bases that differ below bf16's resolution are still two bases.
    nudged = load_model("tiny-llama")[0]
    with torch.no_grad():
        nudged.model.norm.weight.mul_(1 + 1e-5)
    assert not same_base(fp32, base_fingerprint(nudged))
    # Adapters saved before base_weights_bf16 existed: exact matches only.
    assert not same_base({"base_weights": fp32["base_weights"]}, bf16)


@pytest.mark.parametrize(
    ("trained_on", "loaded_on"), [(torch.float32, "bfloat16"), (torch.bfloat16, "float32")]
)
def test_alter_adapter_moves_between_a_fp32_base_and_its_bf16_copy(tmp_path, trained_on, loaded_on):
    am = trained_alter(trained_on)
    save_adapter(am, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["base_dtype"] == str(trained_on).removeprefix("torch.")
    again, _ = load("tiny-llama", tmp_path, base_dtype=loaded_on)
    assert next(again.model.parameters()).dtype == getattr(torch, loaded_on)
    for k, v in am.adapter_state_dict().items():  # the saved float32 values, unchanged
        assert torch.equal(again.adapter_state_dict()[k], v), k
    # The logits differ by the bf16 rounding of the base. Measured: max 6.0e-3 (max |logit|
    # 0.63), either direction.
    got, want = again(IDS, MASK).logits.float(), am(IDS, MASK).logits.float()
    assert (got - want).abs().max() < 2e-2
    other = load_model("tiny-llama", seed=1, dtype=getattr(torch, loaded_on))[0]
    with pytest.raises(AdapterError, match="different base weights"):
        load_adapter(other, tmp_path)


def test_peft_lora_adapter_loads_float32_onto_a_bf16_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model("tiny-llama")[0]
    fingerprint = base_fingerprint(base)  # as LoRA records it: before injection
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path)
    meta = {"method": "lora", "kind": "peft", **fingerprint}
    (tmp_path / METHOD_META).write_text(json.dumps(meta))
    again, _ = load("tiny-llama", tmp_path, base_dtype="bfloat16")
    lora = {n: p for n, p in again.named_parameters() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    got, want = again(input_ids=IDS).logits.float(), peft_model(input_ids=IDS).logits
    assert (got - want).abs().max() < 2e-2  # measured 5.4e-3 (max |logit| 0.74)


def test_merge_into_a_bf16_base_rounds_once():
    am = trained_alter(torch.bfloat16)
    layer = am.model.get_submodule(am.adapted[0])
    w0 = layer.base_layer.weight.detach().clone()
    delta = layer.scaling * (layer.alter_B_r.detach() @ layer.alter_A.detach())
    merged = am.merge("retention")
    w = merged.get_submodule(am.adapted[0]).weight
    assert w.dtype == torch.bfloat16 and torch.equal(w, (w0.float() + delta).bfloat16())
