"""ELM: aligned answer positions, the prompts, the consistency text, what trains, and saving."""

from __future__ import annotations

import json

import pytest
import torch

from alter.adapters.io import base_fingerprint
from alter.data.collate import IGNORE_INDEX, format_prompt
from alter.losses import elm_target_logprobs
from alter.methods.elm import ELM, ELMConfig, aligned_positions
from alter.methods.loop import UnlearnConfig, run_method
from alter.models import load_model

FORGET = [
    {"question": f"Where does Vell {i} live?", "answer": f"In Durn {i}.", "subdomain": "maps"}
    for i in range(2)
] + [{"question": f"Who taught Vell {i}?", "answer": f"Sar {i} did."} for i in range(2, 4)]
RETAIN = [{"question": f"What colour is Oma {i}?", "answer": f"Oma {i} is teal."} for i in range(4)]
IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])
X = IGNORE_INDEX


def trained(rows=FORGET, steps=2, **overrides):
    model, tok = load_model("tiny-llama")
    method = ELM(ELMConfig(**overrides))
    summary = run_method(
        method, model, tok, rows, RETAIN, UnlearnConfig(max_steps=steps, lr=1e-2), progress=False
    )
    return method, tok, summary


def test_answer_positions_line_up_across_prefixes():
    # Same answers (5 6 7 / 8 9) after prompts of different lengths; the novice copy of row 0
    # was truncated to 2 answer tokens, so every batch keeps 2 of row 0. Position t predicts t+1.
    plain = torch.tensor([[X, X, 5, 6, 7], [X, 8, 9, X, X]])
    expert = torch.tensor([[X, X, X, X, 5, 6, 7], [X, X, X, 8, 9, X, X]])
    novice = torch.tensor([[X, X, X, 5, 6], [X, X, 8, 9, X]])
    (r0, p0), (r1, p1), (r2, p2) = aligned_positions(plain, expert, novice)
    assert r0.tolist() == r1.tolist() == r2.tolist() == [0, 0, 1, 1]
    assert p0.tolist() == [1, 2, 0, 1]
    assert p1.tolist() == [3, 4, 2, 3]
    assert p2.tolist() == [2, 3, 1, 2]


def test_prompts_name_the_topic_and_keep_the_answer_tokens():
    method, tok, _ = trained(steps=1)
    for i, row in enumerate(FORGET):
        topic = row.get("subdomain", "the following subject")
        for enc, want in (
            (method.expert_enc[i], f"You are an expert in {topic}. {row['question']}"),
            (
                method.novice_enc[i],
                f"You are a novice in {topic} who knows nothing about it. {row['question']}",
            ),
        ):
            prompt = tok.decode(
                [t for t, lb in zip(enc.input_ids, enc.labels, strict=True) if lb == X]
            )
            assert want in prompt and prompt.startswith("<|im_start|>user")
            answer = [lb for lb in enc.labels if lb != X]
            plain = tok(row["answer"], add_special_tokens=False)["input_ids"]
            assert answer == plain + [tok.eos_token_id]


def test_consistency_text_is_greedy_from_the_erasure_target():
    model, tok = load_model("tiny-llama")
    q = FORGET[2]["question"]  # no subdomain: the config topic
    contexts = [
        format_prompt(tok, q),
        format_prompt(tok, f"You are an expert in the following subject. {q}"),
        format_prompt(
            tok, f"You are a novice in the following subject who knows nothing about it. {q}"
        ),
    ]
    with torch.no_grad():
        last = [
            model(torch.tensor([tok(c, add_special_tokens=False)["input_ids"]])).logits[0, -1]
            for c in contexts
        ]
    first = int(elm_target_logprobs(*last, eta=2.0).argmax())

    method, _, _ = trained(steps=1, consistency_tokens=5)
    enc = method.consistency_enc[2]
    prompt = tok(contexts[0], add_special_tokens=False)["input_ids"]
    assert enc.input_ids[: len(prompt)] == prompt
    generated = [lb for lb in enc.labels if lb != X]
    assert generated[0] == first and 1 <= len(generated) <= 5
    assert enc.input_ids[len(prompt) :] == generated


@pytest.mark.parametrize("rows", ["qa", "text"])
def test_only_the_lora_trains_and_the_frozen_model_stays_put(rows):
    forget = (
        FORGET if rows == "qa" else [{"text": f"Vell {i} lives in Durn {i}."} for i in range(4)]
    )
    method, _, summary = trained(forget)
    assert set(summary["last"]) == {"erase_ce", "retain_kl", "consistency_nll"}
    assert all(v == v and abs(v) < float("inf") for v in summary["last"].values())
    model = method.result()
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad and p.grad is not None, n
        else:
            assert not p.requires_grad and p.grad is None, n
    # The target's reference is the original model (adapters off), not the trained one.
    fresh, _ = load_model("tiny-llama")
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    assert torch.equal(method._frozen_logits(batch), fresh(IDS).logits)
    assert not torch.allclose(model.eval()(IDS).logits, fresh(IDS).logits)


def test_no_consistency_term_when_switched_off():
    method, _, summary = trained(steps=1, consistency_tokens=0)
    assert method.consistency_enc is None and "consistency_nll" not in summary["last"]


def test_saved_adapter_loads_back_through_peft(tmp_path):
    from peft import PeftModel

    method, tok, _ = trained()
    method.save(tmp_path, tok)
    fresh, _ = load_model("tiny-llama")
    meta = json.loads((tmp_path / "alter_method.json").read_text())
    assert meta == {"method": "elm", "kind": "peft", **base_fingerprint(fresh)}
    assert (tmp_path / "adapter_config.json").is_file()
    want = method.result().eval()(IDS).logits
    got = PeftModel.from_pretrained(fresh, str(tmp_path)).eval()(IDS).logits
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eta": 0}, "eta must be > 0"),
        ({"expert_prompt": "An expert in {subject}."}, "only use the {topic} placeholder"),
        ({"novice_prompt": "A novice in {}."}, "only use the {topic} placeholder"),
        ({"topic": " "}, "topic must not be empty"),
        ({"erase_weight": 0}, "erase_weight > 0"),
        ({"retain_weight": -1}, "weights must be >= 0"),
        ({"consistency_tokens": -1}, "consistency_tokens must be >= 0"),
        ({"r": 0}, "r must be >= 1"),
        ({"target_modules": "("}, "not a valid regex"),
    ],
)
def test_bad_config_values_are_value_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        ELMConfig(**overrides)
