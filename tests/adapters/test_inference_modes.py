"""Inference without the full base pre-pass: the entropy probe and the upper-layers layout."""

import pytest
import torch
import torch.nn.functional as F

from alter.adapters import AlterConfig, AlterLinear, AlterModel, load_adapter, save_adapter
from alter.adapters.model import PrePass, block_index, decoder_blocks
from alter.errors import ConfigError
from alter.models import load_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 120], [8, 9, 10, 11, 12, 13, 14, 15]])
MASK = torch.ones_like(IDS)


def wrapped(name="tiny-llama", **kw):
    model, tok = load_model(name)
    return AlterModel(model, AlterConfig(**{"n_forget_experts": 3, **kw})), tok


def randomise(am, seed=0):
    """Random adapter, router and probe, with a threshold inside the probe's range so both the
    high and the low routing rules occur."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in am.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        am.router.alter_probe.copy_(torch.randn(am.router.alter_probe.shape, generator=g) * 0.3)
        am.router.alter_probe[-1] = 1.0
    am.threshold = 1.0


def explicit(am, ids, mask):
    """The probe-mode formula written out: base hidden at the routing layer -> probe entropy ->
    router weights -> adapted pass."""
    with am.adapters_disabled(), torch.no_grad():
        hidden = am.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h = hidden.hidden_states[am.routing_layer]
    ln = F.layer_norm(h.float(), h.shape[-1:])
    ent = (ln @ am.router.alter_probe[:-1] + am.router.alter_probe[-1]).clamp_min(0)
    route = am.route_from_prepass(PrePass(entropy=ent, hidden=h))
    with am.routing(route):
        return am.model(input_ids=ids, attention_mask=mask).logits, ent


def test_probe_fit_recovers_a_linear_entropy():
    am, _ = wrapped()
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(n, 64, generator=g) for n in (30, 50, 40)]
    w = torch.randn(64, generator=g) * 0.1
    entropy = [F.layer_norm(h, (64,)) @ w + 2.0 for h in hidden]
    stats = am.router.fit_probe(hidden, entropy, ridge=1e-6)
    assert stats["tokens"] == 120 and stats["r2"] > 0.999999
    pred = am.router.predicted_entropy(hidden[1][None])[0]
    assert torch.allclose(pred, entropy[1], atol=1e-4)


def test_upper_layout_adapts_only_blocks_from_the_routing_layer():
    am, _ = wrapped(layers="upper")  # tiny-llama: 4 blocks, routing layer 2
    blocks_name, blocks = decoder_blocks(am.model)
    assert len(blocks) == 4 and am.routing_layer == 2
    idx = {block_index(n, blocks_name) for n in am.adapted}
    assert idx == {2, 3} and len(am.adapted) == 2 * 7
    below = [m for m in blocks[:2].modules() if isinstance(m, AlterLinear)]
    assert below == []


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("layers", ["all", "upper"])
def test_probe_forward_equals_the_explicit_formula(name, layers):
    am, _ = wrapped(name, layers=layers, inference="probe")
    randomise(am, seed=3)
    expected, ent = explicit(am, IDS, MASK)
    assert (ent > am.threshold).any() and (ent <= am.threshold).any()
    assert torch.allclose(am(IDS, MASK).logits, expected, atol=1e-5)
    am.set_inference("prepass")  # a different routing entropy gives different logits
    assert not torch.allclose(am(IDS, MASK).logits, expected, atol=1e-3)


@pytest.mark.parametrize("layers", ["all", "upper"])
def test_probe_generate_matches_a_full_recompute(layers, greedy_by_recompute):
    am, _ = wrapped(layers=layers, inference="probe")
    randomise(am, seed=5)
    prompt = IDS[:1, :5]
    out = am.generate(prompt, max_new_tokens=6, eos_token_id=None)
    assert out.tolist() == greedy_by_recompute(am, prompt, 6).tolist()


@pytest.mark.parametrize("layers", ["all", "upper"])
def test_probe_generate_computes_only_the_last_positions_logits(layers):
    """Decoding reads one position's logits: the head never runs on the whole prompt (in probe
    mode the base pass stops at the routing block, so every head call is the adapted pass)."""
    am, _ = wrapped(layers=layers, inference="probe")
    randomise(am, seed=7)
    seen = []
    head = am.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    try:
        am.generate(IDS[:, :6], max_new_tokens=3, eos_token_id=None)
    finally:
        handle.remove()
    assert seen == [1, 1, 1]


def test_probe_generate_handles_left_padding():
    am, tok = wrapped(layers="upper", inference="probe")
    randomise(am, seed=6)
    batch = torch.tensor([[5, 6, 7, 8, 9], [tok.pad_token_id, tok.pad_token_id, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    out = am.generate(batch, mask, max_new_tokens=4, eos_token_id=None)
    alone = am.generate(torch.tensor([[7, 8, 9]]), max_new_tokens=4, eos_token_id=None)
    assert out[1, 5:].tolist() == alone[0, 3:].tolist()


def test_probe_round_trips_and_old_adapters_without_one_still_load(tmp_path):
    am, _ = wrapped(layers="upper")
    randomise(am, seed=7)
    save_adapter(am, tmp_path / "a")
    loaded = load_adapter(load_model("tiny-llama")[0], tmp_path / "a")
    assert torch.equal(loaded.router.alter_probe, am.router.alter_probe)
    assert loaded.cfg.layers == "upper"
    # An adapter saved before the probe existed: no alter_probe tensor in the file.
    from safetensors.torch import load_file, save_file

    path = tmp_path / "a" / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.endswith("alter_probe")}
    save_file(tensors, str(path), metadata={"format": "alter-adapter/1"})
    old = load_adapter(load_model("tiny-llama")[0], tmp_path / "a")
    assert not old.router.probe_fitted
    old(IDS, MASK)  # the pre-pass still works
    with pytest.raises(ConfigError, match="no entropy probe"):
        old.set_inference("probe")
    old.inference = "probe"  # forced past the check: the forward refuses too
    with pytest.raises(ConfigError, match="no entropy probe"):
        old(IDS, MASK)


def test_bad_inference_settings_are_clear_errors():
    with pytest.raises(ValueError, match="inference must be"):
        AlterConfig(inference="fast")
    with pytest.raises(ValueError, match="layers must be"):
        AlterConfig(layers="lower")
    with pytest.raises(ConfigError, match="routing layer below"):
        wrapped(layers="upper", routing_layer=4)
    am, _ = wrapped()
    with pytest.raises(ConfigError, match="inference must be"):
        am.set_inference("fast")


@pytest.mark.parametrize(
    "layout", [("all", "prepass"), ("all", "probe"), ("upper", "probe")], ids="-".join
)
def test_a_forward_inside_adapters_disabled_is_the_base_model(layout):
    """The routed forward disables the adapters for its own base pass; that inner block must not
    switch them back on inside an outer ``adapters_disabled`` (evaluation measures fluency and
    entropy of "the model with the adapter off" this way)."""
    layers, inference = layout
    am, _ = wrapped(layers=layers, inference=inference)
    randomise(am)
    with torch.no_grad():
        with am.adapters_disabled():
            base = am.model(input_ids=IDS, attention_mask=MASK).logits
            nested = am(input_ids=IDS, attention_mask=MASK).logits
        adapted = am(input_ids=IDS, attention_mask=MASK).logits
    assert torch.equal(nested, base)
    assert not torch.allclose(adapted, base, atol=1e-4)
    assert all(m.enabled for m in am.layers())
