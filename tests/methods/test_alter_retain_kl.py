"""ALTER's opt-in retain KL term (``retain_kl``): KL(p_base || p_theta) on the retain answers."""

import json
from types import SimpleNamespace

import pytest
import torch

from alter.adapters.layer import Route
from alter.data.collate import Collator, encode_rows
from alter.distributed import Runtime
from alter.losses import masked_mean, token_kl
from alter.methods.alter import (
    AlterTrainConfig,
    _batch,
    _stage_two_terms,
    base_cache,
    supervised_positions,
    unlearn_alter,
)
from alter.models import load_model


def _unlearn(bench, target, tmp_path, **train):
    model, tok = load_model(str(target))
    log = tmp_path / f"metrics-{len(list(tmp_path.iterdir()))}.jsonl"
    am, _ = unlearn_alter(
        model,
        tok,
        bench.forget,
        bench.retain,
        train_cfg=AlterTrainConfig(checkpoint_every=None, **train),
        log_path=log,
        progress=False,
    )
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return am, tok, [r for r in records if r.get("stage") == 2]


@torch.no_grad()
def _retain_kl_to(base, am, tok, rows) -> float:
    """Mean KL(base || the unlearned model as deployed, routed) over the rows' answer tokens."""
    b = Collator(tok.pad_token_id)(encode_rows(rows, tok, max_length=256))
    kw = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    kl = token_kl(am(**kw).logits, base(**kw).logits, b["labels"])
    return float(masked_mean(kl, supervised_positions(b["labels"])[:, :-1]))


def test_retain_kl_term_is_the_kl_of_the_retain_pass_from_the_base_model(bench, target, tmp_path):
    am, tok, _ = _unlearn(bench, target, tmp_path, max_steps=2, stage1_max_steps=2)
    base, _ = load_model(str(target))  # the base model, loaded on its own
    pad = tok.pad_token_id
    f_enc, r_enc = (
        encode_rows(rows[:4], tok, max_length=256) for rows in (bench.forget, bench.retain)
    )
    caches = [
        base_cache(base, enc, pad, layer=1, q=1.0, q_struct=0.5, progress=False)
        for enc in (f_enc, r_enc)
    ]
    fb, rb = (
        _batch(enc, cache, list(range(4)), Collator(pad), "cpu")
        for enc, cache in zip((f_enc, r_enc), caches, strict=True)
    )
    part = SimpleNamespace(forget_weight=1.0, retain_weight=1.0)
    on = _stage_two_terms(am, fb, rb, 0, Runtime(), part, retain_kl=True)
    off = _stage_two_terms(am, fb, rb, 0, Runtime(), part, retain_kl=False)

    kw = {"input_ids": rb["input_ids"], "attention_mask": rb["attention_mask"]}
    with torch.no_grad():
        with am.routing(Route(grad_retain=True)):  # the retain pass: B_r only
            retain_logits = am.model(**kw).logits
        expected = masked_mean(
            token_kl(retain_logits, base(**kw).logits, rb["labels"]),
            supervised_positions(rb["labels"])[:, :-1],
        )
    assert float(expected) > 1e-4  # Stage I moved B_r: there is a KL to measure
    assert float(on["retain_kl"].detach()) == pytest.approx(float(expected), rel=1e-4, abs=1e-7)
    assert float(off["retain_kl"]) == 0.0
    assert float(on["retain_nll"].detach()) == pytest.approx(float(off["retain_nll"].detach()))

    # Its gradient reaches the retention expert and no forget expert.
    am.zero_grad(set_to_none=True)
    on["retain_kl"].backward()
    groups = am.parameter_groups()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["B_r"])
    assert all(p.grad is None or not p.grad.any() for p in groups["B_f"])


def test_retain_kl_keeps_the_retain_answers_closer_to_the_base_model(bench, target, tmp_path):
    """With the spec's retain NLL off (gamma=0), B_r keeps what Stage I taught it; the KL term
    pulls the deployed model's retain answers back toward the base model's distribution."""
    base, _ = load_model(str(target))
    kls, logged = {}, {}
    for weight in (0.0, 1.0):
        am, tok, stage2 = _unlearn(
            bench,
            target,
            tmp_path,
            epochs=6,
            stage1_max_steps=4,
            lr_B=5e-3,
            gamma=0.0,
            retain_kl=weight,
        )
        kls[weight] = _retain_kl_to(base, am, tok, bench.retain)
        logged[weight] = [r["retain_kl"] for r in stage2]
    assert all(v == 0.0 for v in logged[0.0])
    assert logged[1.0][0] > 0 and logged[1.0][-1] < logged[1.0][0], logged[1.0]
    assert kls[1.0] < 0.7 * kls[0.0], kls


def test_retain_kl_must_not_be_negative():
    with pytest.raises(ValueError, match="retain_kl"):
        AlterTrainConfig(retain_kl=-0.5)
