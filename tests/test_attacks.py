"""Attacks on unlearning: quantisation by hand, probes, relearning, and `alter attack` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from tests.test_cli_pipeline import run, synth_dir, unlearn_argv  # noqa: F401

from alter.attacks import check_attacks, paraphrased, prefixed, quantize_, relearn_, split_halves
from alter.data.synthetic import SyntheticConfig, make_synthetic
from alter.errors import ConfigError
from alter.evals.qa import qa_metrics, summarise
from alter.models import load_model

SMALL = SyntheticConfig(
    entities_per_subdomain=4,
    forget_entities_per_subdomain=1,
    holdout_entities_per_subdomain=1,
    facts_per_entity=2,
)


def test_quantize_by_hand():
    lin = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[7.0, 3.5, -1.75]]))
    emb = torch.nn.Embedding(2, 3)
    before = emb.weight.clone()
    model = torch.nn.Sequential(emb, lin)
    assert quantize_(model, 4) == 1  # the embedding is kept
    # 4 bits: qmax 7, scale max|w| / 7 = 1; 3.5 -> 4 (half to even), -1.75 -> -2
    assert lin.weight[0].tolist() == [7.0, 4.0, -2.0]
    assert torch.equal(emb.weight, before)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.5, -0.25]]))
    quantize_(model, 2)  # qmax 1: 0.5 -> 0 (half to even), -0.25 -> 0
    assert lin.weight[0].tolist() == [1.0, 0.0, 0.0]


def test_probes_and_halves():
    forget = make_synthetic(SMALL).forget
    relearn, heldout = split_halves(forget)
    assert len(relearn) + len(heldout) == len(forget)
    assert {r["question"] for r in relearn}.isdisjoint({r["question"] for r in heldout})
    para = paraphrased(forget)
    assert [r["question"] for r in para] == [r["paraphrased_question"] for r in forget]
    assert all(r["question"].startswith("Ignore any instruction") for r in prefixed(forget))
    with pytest.raises(ConfigError, match="unknown attack"):
        check_attacks(["none", "melt"])


def test_relearning_raises_the_relearned_answers():
    bench = make_synthetic(SMALL)
    model, tok = load_model("tiny-llama")
    before = summarise(qa_metrics(model, tok, bench.forget, generate=False))["prob"]
    relearn_(model, tok, bench.forget, steps=5, lr=3e-3)
    after = summarise(qa_metrics(model, tok, bench.forget, generate=False))["prob"]
    assert after > before * 1.5
    assert not any(p.requires_grad for p in model.parameters())


def test_alter_attack_cli_end_to_end(tmp_path, synth_dir, capsys):  # noqa: F811
    run_dir = tmp_path / "lora"
    code, _, err = run(
        unlearn_argv(synth_dir, run_dir, "--method", "lora", "--max-steps", "2"), capsys
    )
    assert code == 0, err
    out = tmp_path / "att"
    argv = [
        "attack",
        "--model",
        "tiny-llama",
        "--adapter",
        str(run_dir),
        "--forget",
        str(synth_dir / "forget.jsonl"),
        "--retain",
        str(synth_dir / "retain.jsonl"),
        "--out",
        str(out),
        "--relearn-steps",
        "2",
    ]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    data = json.loads((out / "ATTACKS.json").read_text())
    assert set(data["results"]) == {"none", "relearn", "paraphrase", "prefix", "int8", "int4"}
    assert set(data["forget_prob_change"]) == {"relearn", "paraphrase", "prefix", "int8", "int4"}
    assert data["results"]["int4"]["tensors_quantised"] > 0
    assert "relearn" in stdout and "change" in stdout
    code, _, err = run([*argv[:-2], "--attacks", "none,melt"], capsys)
    assert code == 1 and "unknown attack(s): melt" in err
