"""The asymmetric adapter: injection, zero-init identity, routing paths, save/load, isolation."""

import pytest
import torch

from alter.adapters import (
    AdapterError,
    AlterConfig,
    AlterLinear,
    AlterModel,
    Route,
    load_adapter,
    save_adapter,
)
from alter.adapters.model import count_adapter_parameters
from alter.errors import ConfigError
from alter.models import load_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 120], [8, 9, 10, 11, 12, 13, 14, 15]])
MASK = torch.ones_like(IDS)


def wrapped(name="tiny-llama", **kw):
    model, tok = load_model(name)
    cfg = AlterConfig(**{"n_forget_experts": 3, **kw})
    return AlterModel(model, cfg), tok


def randomise(am, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in am.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name, n_layers", [("tiny-llama", 4 * 7), ("tiny-gpt2", 4 * 4)])
def test_injection_targets_all_projections_and_freezes_the_rest(name, n_layers):
    am, _ = wrapped(name)
    assert len(am.adapted) == n_layers
    assert all(isinstance(am.model.get_submodule(n), AlterLinear) for n in am.adapted)
    trainable = {n for n, p in am.named_parameters() if p.requires_grad}
    assert trainable and all(".alter_" in n or n.startswith("router.alter_") for n in trainable)
    counts = count_adapter_parameters(am)
    assert counts["B_f"] == 3 * counts["B_r"]
    assert counts["adapter"] == sum(p.numel() for p in am.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_zero_init_b_gives_exactly_the_base_model(name):
    base, _ = load_model(name)
    ref = base(input_ids=IDS).logits
    am, _ = wrapped(name)  # wraps a fresh copy with the same seed
    assert torch.equal(am(IDS, MASK).logits, ref)


def test_targets_matching_nothing_is_a_clear_error():
    with pytest.raises(ConfigError, match="matches no linear layer"):
        wrapped(target_modules=r"nope$")


def test_routed_forward_equals_the_explicit_formula():
    """y = W0 x + s (B_r A x + sum_d w_d B_f[d] A x) on one layer, with hand-made weights."""
    am, _ = wrapped()
    randomise(am)
    layer = am.layers()[0]
    x = torch.randn(2, 5, layer.d_in)
    w = torch.rand(2, 5, 3)
    layer.route = Route(expert_weights=w)
    got = layer(x)
    layer.route = None
    ax = x @ layer.alter_A.t()
    manual = layer.base_layer(x) + layer.scaling * (
        ax @ layer.alter_B_r.t()
        + sum(w[..., d : d + 1] * (ax @ layer.alter_B_f[d].t()) for d in range(3))
    )
    torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-6)
    # Oracle routing to expert 1 is the same as one-hot weights on expert 1.
    layer.route = Route(oracle_expert=1)
    oracle = layer(x)
    layer.route = Route(
        expert_weights=torch.nn.functional.one_hot(torch.full((2, 5), 1), 3).float()
    )
    torch.testing.assert_close(oracle, layer(x), rtol=1e-5, atol=1e-6)


def test_inference_reuses_the_expert_matrix_until_a_parameter_changes():
    """Without autograd the layer builds [B_r; B_f]^T once and the route builds [1, w] once; the
    output is bit-identical to the autograd path, and any change to an expert (an in-place
    edit, an optimizer step, loading a state dict) is seen by the next call."""
    am, _ = wrapped()
    randomise(am)
    layer = am.layers()[0]
    x = torch.randn(2, 5, layer.d_in)
    route = Route(expert_weights=torch.rand(2, 5, 3))
    layer.route = route
    with torch.no_grad():
        first = layer(x)
        right = layer._mixed_right[1]
        assert torch.equal(layer(x), first) and layer._mixed_right[1] is right
        assert route.mix(torch.float32) is route.mix(torch.float32)
    assert torch.equal(layer(x), first)  # autograd path, built afresh

    with torch.no_grad():
        layer.alter_B_f[2].mul_(3.0)  # in place
        edited = layer(x)
    assert not torch.equal(edited, first) and torch.equal(layer(x), edited)

    opt = torch.optim.SGD([layer.alter_B_r], lr=0.1)
    layer(x).sum().backward()
    opt.step()
    with torch.no_grad():
        stepped = layer(x)
    assert not torch.equal(stepped, edited) and torch.equal(layer(x), stepped)

    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["alter_B_f.0"] += 1.0
    layer.load_state_dict(state)
    with torch.no_grad():
        loaded = layer(x)
    assert not torch.equal(loaded, stepped) and torch.equal(layer(x), loaded)
    layer.route = None


def test_router_top_k_and_temperature_switch():
    am, _ = wrapped()
    logits = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]])  # D + 1 = 4 slots
    entropy = torch.tensor([[5.0, 0.1]])  # first token high, second low
    w = am.router.expert_weights(
        logits, entropy, 1.2, tau_high=0.8, tau_low=0.01, top_k_high=3, top_k_low=1
    )
    high, low = w[0, 0], w[0, 1]
    assert (high > 0).sum() == 3  # top-3 of the four slots are all forget experts here
    assert low.abs().max() < 1e-6  # slot 0 wins with tau 0.01: no forget expert at all
    probs = torch.softmax(logits[0, 0] / 0.8, -1)
    torch.testing.assert_close(high, probs[1:])  # not renormalised


def test_router_picks_the_right_expert_on_separable_features():
    torch.manual_seed(0)
    am, _ = wrapped()
    H = am.config.hidden_size
    cents = torch.randn(4, H) * 3
    am.router.init_from_centroids(cents[0], cents[1:])
    hidden = cents[torch.tensor([0, 1, 2, 3])][None] + 0.3 * torch.randn(1, 4, H)
    entropy = torch.full((1, 4), 0.1)
    from alter.adapters.router import router_features

    logits = am.router.logits(router_features(hidden, entropy))
    w = am.router.expert_weights(
        logits, entropy, 1.2, tau_high=0.8, tau_low=0.01, top_k_high=3, top_k_low=1
    )
    assert w[0, 0].sum() < 1e-3  # the retain-like token gets no forget expert
    assert w[0, 1:].argmax(-1).tolist() == [0, 1, 2]


def test_save_load_round_trip_is_bit_exact(tmp_path):
    am, tok = wrapped()
    randomise(am, seed=3)
    am.subdomains = ["a", "b", "c"]
    before = am(IDS, MASK).logits
    save_adapter(am, tmp_path)
    model, _ = load_model("tiny-llama")
    again = load_adapter(model, tmp_path)
    assert again.subdomains == ["a", "b", "c"]
    assert torch.equal(again(IDS, MASK).logits, before)
    for k, v in am.adapter_state_dict().items():
        assert torch.equal(v, again.adapter_state_dict()[k]), k


def test_load_refuses_other_architecture_other_weights_and_corruption(tmp_path):
    am, _ = wrapped()
    save_adapter(am, tmp_path)
    with pytest.raises(AdapterError, match="different architecture"):
        load_adapter(load_model("tiny-gpt2")[0], tmp_path)
    other = load_model("tiny-llama", seed=1)[0]
    with pytest.raises(AdapterError, match="different base weights"):
        load_adapter(other, tmp_path)
    assert load_adapter(load_model("tiny-llama", seed=1)[0], tmp_path, allow_other_base=True)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="cannot read adapter weights"):
        load_adapter(load_model("tiny-llama")[0], tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="corrupted JSON"):
        load_adapter(load_model("tiny-llama")[0], tmp_path)
    with pytest.raises(AdapterError, match="no such adapter directory"):
        load_adapter(load_model("tiny-llama")[0], tmp_path / "nowhere")


def test_generate_matches_a_full_recompute_greedy_loop(greedy_by_recompute):
    """The two-cache lockstep generate equals re-running the routed forward on the whole prefix."""
    am, tok = wrapped()
    randomise(am, seed=5)
    prompt = IDS[:1, :5]
    out = am.generate(prompt, max_new_tokens=6, eos_token_id=None)
    assert out.tolist() == greedy_by_recompute(am, prompt, 6).tolist()


def test_generate_handles_left_padding_like_unpadded():
    am, tok = wrapped()
    randomise(am, seed=6)
    a = torch.tensor([[5, 6, 7, 8, 9]])
    b = torch.tensor([[tok.pad_token_id, tok.pad_token_id, 7, 8, 9]])
    batch = torch.cat([a, b])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    out = am.generate(batch, mask, max_new_tokens=4, eos_token_id=None)
    alone = am.generate(torch.tensor([[7, 8, 9]]), max_new_tokens=4, eos_token_id=None)
    assert out[1, 5:].tolist() == alone[0, 3:].tolist()
    assert (
        out[0, 5:].tolist() == am.generate(a, max_new_tokens=4, eos_token_id=None)[0, 5:].tolist()
    )


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"r": 0}, "r must be"),
        ({"n_forget_experts": 0}, "n_forget_experts"),
        ({"target_modules": "("}, "regex"),
        ({"entropy_q": 2.0, "threshold": 1.2}, "can never be exceeded"),
        ({"threshold_mode": "magic"}, "threshold_mode"),
    ],
)
def test_bad_adapter_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AlterConfig(**kw)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_merge_retention_equals_the_unrouted_adapter(name):
    am, _ = wrapped(name)
    randomise(am, seed=9)
    with am.routing(Route()):  # B_r only, no forget expert
        expected = am.model(input_ids=IDS).logits
    with am.routing(Route(expert_weights=torch.tensor([0.5, 0.0, 0.25]).expand(*IDS.shape, 3))):
        fixed_expected = am.model(input_ids=IDS).logits
    am2, _ = wrapped(name)
    am2.load_state_dict(am.state_dict())
    merged = am.merge("retention")
    assert not any(isinstance(m, AlterLinear) for m in merged.modules())
    torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=1e-4, atol=1e-5)
    fixed = am2.merge("fixed", [0.5, 0.0, 0.25])
    torch.testing.assert_close(fixed(input_ids=IDS).logits, fixed_expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="needs 3 expert weights"):
        wrapped(name)[0].merge("fixed", [1.0])
