"""RMU: defaults scaled to the depth, the steered activations, what trains, and saving."""

from __future__ import annotations

import json

import pytest
import torch

from alter.data.collate import Collator, encode_rows
from alter.errors import ConfigError
from alter.methods.loop import Context, UnlearnConfig, run_method
from alter.methods.rmu import RMU, RMUConfig, block_output, default_layer
from alter.models import load_model

FORGET = [{"question": f"Where does Vell {i} live?", "answer": f"In Durn {i}."} for i in range(4)]
RETAIN = [{"question": f"What colour is Oma {i}?", "answer": f"Oma {i} is teal."} for i in range(4)]


def set_up(name="tiny-llama", seed=0, **overrides):
    """A method after ``setup`` plus one forget and one retain batch (no training)."""
    model, tok = load_model(name)
    cfg = UnlearnConfig(seed=seed)
    f_enc, r_enc = encode_rows(FORGET, tok), encode_rows(RETAIN, tok)
    method = RMU(RMUConfig(**overrides))
    method.setup(Context(model, tok, FORGET, RETAIN, f_enc, r_enc, cfg, progress=False))
    collate = Collator(tok.pad_token_id)
    return method, collate(f_enc), collate(r_enc)


def test_default_layer_is_a_quarter_of_the_depth():
    # 0-based block round(L/4) - 1: the paper's layer 7 of zephyr's 32.
    assert [default_layer(n) for n in (32, 30, 24, 12, 4, 1)] == [7, 7, 5, 2, 0, 0]


@pytest.mark.parametrize(
    "name, layer, regex, trained",
    [
        (
            "tiny-llama",
            None,
            r"^model\.layers\.(0)\.mlp\.down_proj\.",
            {"model.layers.0.mlp.down_proj.weight"},
        ),
        (
            "tiny-llama",
            3,
            r"^model\.layers\.(1|2|3)\.mlp\.down_proj\.",
            {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)},
        ),
        (
            "tiny-gpt2",
            2,
            r"^transformer\.h\.(0|1|2)\.mlp\.c_proj\.",
            {f"transformer.h.{i}.mlp.c_proj.{w}" for i in (0, 1, 2) for w in ("weight", "bias")},
        ),
    ],
)
def test_default_trainable_parameters_are_the_down_projections(name, layer, regex, trained):
    method, _, _ = set_up(name, layer=layer)
    assert method.regex == regex
    names = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert names == trained
    assert {id(p) for p in method.trainable()} == {
        id(p) for n, p in method.model.named_parameters() if n in trained
    }


def test_block_output_steering_target_and_retain_reference_at_the_start():
    method, fb, rb = set_up(layer=1)
    u = method.u
    assert torch.all(u >= 0) and float(u.norm()) == pytest.approx(1.0, abs=1e-6)
    # c = steering_scale x mean norm of the frozen layer-1 output over non-pad forget tokens.
    # The reference holds blocks 0..l only (its last hidden state would be the final norm's);
    # before any step the model is its own reference, so read the hidden states there.
    assert len(method.ref.model.layers) == 2
    with torch.no_grad():
        out = method.model(
            input_ids=fb["input_ids"],
            attention_mask=fb["attention_mask"],
            output_hidden_states=True,
        )
    h = out.hidden_states[2]  # [0] is the embedding output: block l's output is l + 1
    torch.testing.assert_close(block_output(method.ref, method.ref_block, fb), h)
    mean_norm = h.norm(dim=-1)[fb["attention_mask"].bool()].mean()
    assert method.coeff == pytest.approx(5.0 * float(mean_norm), rel=1e-5)
    loss, stats = method.loss(fb, rb)
    assert stats["retain_mse"] == 0.0  # the model is its own reference before any step
    assert torch.isfinite(loss) and stats["forget_mse"] > 0
    # Same seed, same direction; another seed, another one.
    assert torch.equal(set_up(layer=1)[0].u, u)
    assert not torch.allclose(set_up(layer=1, seed=1)[0].u, u)
    fixed, _, _ = set_up(layer=1, steering_coeff=3.0)
    assert fixed.coeff == 3.0 and torch.allclose(fixed.target, 3.0 * u)


def test_only_the_chosen_weights_change(tmp_path):
    model, tok = load_model("tiny-llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = RMU(RMUConfig(layer=2))
    summary = run_method(
        method, model, tok, FORGET, RETAIN, UnlearnConfig(max_steps=3, lr=1e-3), progress=False
    )
    assert all(v == v and abs(v) < float("inf") for v in summary["last"].values())
    chosen = {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 2)}
    for n, p in model.named_parameters():
        if n in chosen:
            assert p.grad is not None and not torch.equal(p, before[n]), n
        else:
            assert not p.requires_grad and p.grad is None and torch.equal(p, before[n]), n

    method.save(tmp_path, tok)
    meta = json.loads((tmp_path / "alter_method.json").read_text())
    assert meta["method"] == "rmu" and meta["kind"] == "full" and meta["layer"] == 2
    assert meta["steering_coeff"] == pytest.approx(method.coeff)
    reloaded, _ = load_model(str(tmp_path))
    ids = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(reloaded(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"layer": -1}, "layer must be >= 0"),
        ({"trainable_regex": "("}, "not a valid regex"),
        ({"steering_coeff": 0.0}, "steering_coeff must be > 0"),
        ({"steering_scale": 0.0}, "steering_scale must be > 0"),
        ({"alpha": -1.0}, "alpha must be >= 0"),
    ],
)
def test_bad_config_values_are_value_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        RMUConfig(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"layer": 4}, "layer must be < 4"),
        ({"trainable_regex": r"nothing\.here"}, "matches no parameter"),
        ({"layer": 1, "trainable_regex": r"layers\.3\.mlp"}, r"block\(s\) \[3\], above"),
    ],
)
def test_options_that_do_not_fit_the_model_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        set_up(**overrides)
