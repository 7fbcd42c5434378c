"""MUSE-News metrics: ROUGE / prompt / cut-off definitions by hand, and the model path on a tiny LM."""

from __future__ import annotations

import pytest

from alter.evals import mia, muse
from alter.evals.metrics import rouge_recall


def test_muse_rouge_by_hand():
    # LCS of "the cat is on the mat" and "the cat sat on the mat" is "the cat on the mat": 5 of 6
    # tokens on both sides, so recall = precision = F1 = 5/6; unigram overlap is 5 too.
    s = muse.muse_rouge("the cat sat on the mat", "the cat is on the mat")
    assert s["rougeL_f1"] == pytest.approx(5 / 6)
    assert s["rougeL_recall"] == pytest.approx(5 / 6)
    assert s["rouge1_f1"] == pytest.approx(5 / 6)
    # Unequal lengths: prediction "Paris" vs reference "Paris France": P = 1, R = 1/2, F1 = 2/3.
    s = muse.muse_rouge("Paris", "Paris France")
    assert (s["rougeL_recall"], s["rougeL_f1"]) == (pytest.approx(0.5), pytest.approx(2 / 3))


def test_muse_rouge_does_not_stem_unlike_tofu():
    assert muse.muse_rouge("cats running", "cat run")["rougeL_f1"] == 0.0
    assert rouge_recall("cats running", "cat run") == 1.0  # TOFU: Porter stemmer on


def test_empty_generation_scores_zero():
    assert set(muse.muse_rouge("", "an answer").values()) == {0.0}


def test_knowmem_prompt_and_stop_strings():
    prompt = muse.knowmem_prompt("Q3?", [("Q1?", "A1"), ("Q2?", "A2")])
    assert (
        prompt
        == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    )
    assert muse.knowmem_prompt("Q?") == "Question: Q?\nAnswer: "
    assert muse.cut_at_stop("Paris\n\nQuestion: next") == "Paris"
    assert muse.cut_at_stop("Paris\nQuestion: next") == "Paris"
    assert muse.cut_at_stop("Paris Question: next") == "Paris "
    assert muse.cut_at_stop("Paris, France") == "Paris, France"


def test_truncate_reference_counts_tokens(tiny_llama):
    _, tok = tiny_llama  # byte-level: one token per character, no BOS added
    assert muse.truncate_reference(tok, "hello world", 5) == "hello"
    assert muse.truncate_reference(tok, "hi", 128) == "hi"


def test_batched_left_padded_generation_equals_one_by_one(tiny_gpt2):
    model, tok = tiny_gpt2
    prompts = ["The weather in", "A much longer prompt about the news of the day:", "x"]
    batched = muse.generate_continuations(model, tok, prompts, max_new_tokens=5, batch_size=3)
    single = [muse.generate_continuations(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single


def test_long_prompts_keep_their_end(tiny_gpt2):
    model, tok = tiny_gpt2
    long = "word " * 400 + "The end"
    out = muse.generate_continuations(model, tok, [long], max_new_tokens=4, max_length=64)
    short = muse.generate_continuations(model, tok, [long[-60:]], max_new_tokens=4)
    assert out == short  # the last 60 characters (= tokens) are what the model saw
    with pytest.raises(ValueError, match="no room"):
        muse.generate_continuations(model, tok, ["x"], max_new_tokens=64, max_length=64)


def test_privleak_needs_a_reference():
    report = {"min_k": 0.8, "loss": 0.7}
    value, reason = muse.privleak_result(report, None)
    assert value is None and reason.startswith("no retain reference: PrivLeak not computed")
    assert "0.8000" in reason
    value, reason = muse.privleak_result(report, 0.5)
    # MUSE's convention: ((1 - 0.8) - (1 - 0.5)) / (1 - 0.5) * 100 = -60 %
    assert value == pytest.approx(-60.0) and reason is None
    assert value == pytest.approx(mia.privleak(0.8, 0.5))
    with pytest.raises(ValueError, match="unknown attack"):
        muse.privleak_result(report, 0.5, "nope")


def test_summary_and_eval_json_from_items():
    items = [
        {"index": 0, "rougeL_f1": 0.5, "input": "p", "ground_truth": "g", "generation": "o"},
        {"index": 1, "rougeL_f1": 1.0, "input": "p", "ground_truth": "g", "generation": "o"},
    ]
    scores = {a: [0.1, 0.2] for a in mia.ATTACKS}
    report = {**{a: 0.75 for a in mia.ATTACKS}, "scores": {"members": scores, "nonmembers": scores}}
    ev = muse.MuseEval(verbmem=items, mia_report=report, privleak=None, privleak_reason="why")
    s = ev.summary()
    assert s["forget_verbmem_ROUGE"] == pytest.approx(0.75)
    assert "forget_knowmem_ROUGE" not in s
    assert s["mia_min_k"] == 0.75 and s["privleak"] is None and s["privleak_reason"] == "why"
    j = ev.to_eval_json()
    assert j["forget_verbmem_ROUGE"]["value_by_index"]["1"]["rougeL_f1"] == 1.0
    assert j["mia_min_k"]["forget"]["value_by_index"]["0"] == {"score": 0.1}
    assert j["privleak"]["reason"] == "why"


@pytest.fixture(scope="module")
def news_splits():
    from pathlib import Path

    data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "muse" / "news"
    return muse.load_muse_splits(data, limit=2)


def test_load_muse_splits_limits_rows_but_keeps_every_shot(news_splits):
    assert {k: len(v) for k, v in news_splits.items()} == {
        "verbmem": 2,
        "knowmem_forget": 2,
        "knowmem_forget_icl": 10,
        "knowmem_retain": 2,
        "knowmem_retain_icl": 10,
        "privleak_forget": 2,
        "privleak_holdout": 2,
    }


def test_evaluate_muse_on_a_tiny_model(tiny_gpt2, news_splits):
    model, tok = tiny_gpt2
    with pytest.warns(UserWarning, match="truncated"):
        res = muse.evaluate_muse(
            model,
            tok,
            news_splits,
            verbmem_max_new_tokens=4,
            knowmem_max_new_tokens=4,
            privleak_max_length=64,
            reference_auc=0.5,
        )
    assert len(res.verbmem) == len(res.knowmem_forget) == len(res.knowmem_retain) == 2
    v = res.verbmem[0]
    assert v["input"] == news_splits["verbmem"][0]["prompt"]
    assert v["ground_truth"] == news_splits["verbmem"][0]["gt"][:4]  # 4 byte tokens
    k = res.knowmem_forget[1]
    assert k["prompt"].startswith("Question: ") and k["prompt"].endswith("\nAnswer: ")
    assert k["prompt"].count("Question: ") == 11  # 10 shots + the question
    s = res.summary()
    assert 0.0 <= s["mia_min_k"] <= 1.0
    assert s["privleak"] == pytest.approx(mia.privleak(s["mia_min_k"], 0.5))
    with pytest.raises(ValueError, match="unknown MUSE metric"):
        muse.evaluate_muse(model, tok, news_splits, metrics=("verbmem",))
