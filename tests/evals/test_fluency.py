"""Fluency measures on hand-computed examples, including empty and one-word generations."""

from __future__ import annotations

import math

import pytest
import torch

from alter.evals import fluency as flu


def test_distinct_and_repetition_by_hand():
    text = "The cat the CAT sat"  # words: the cat the cat sat
    assert flu.words(text) == ["the", "cat", "the", "cat", "sat"]
    assert flu.distinct_n(text, 1) == pytest.approx(3 / 5)  # the, cat, sat
    # bigrams: (the cat) (cat the) (the cat) (cat sat): 3 unique of 4
    assert flu.distinct_n(text, 2) == pytest.approx(3 / 4)
    assert flu.repetition_rate(text, 2) == pytest.approx(1 / 4)
    # 4-grams: (the cat the cat) (cat the cat sat): both unique
    assert flu.repetition_rate(text) == 0.0


def test_a_loop_repeats():
    loop = "a a a a a"  # 4-grams: (a a a a) twice -> 1 unique of 2
    assert flu.repetition_rate(loop) == pytest.approx(0.5)
    assert flu.distinct_n(loop, 1) == pytest.approx(1 / 5)


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_generation_has_no_values(text):
    item = flu.text_fluency(text)
    assert item == flu.FluencyItem(
        n_words=0, repetition_rate=None, distinct_1=None, distinct_2=None
    )


def test_one_word_has_distinct_1_only():
    item = flu.text_fluency("Hello")
    assert (item.distinct_1, item.distinct_2, item.repetition_rate) == (1.0, None, None)


def test_ngrams_and_perplexity_edges():
    assert flu.ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert flu.ngrams(["a"], 2) == []
    with pytest.raises(ValueError, match="n must be"):
        flu.ngrams(["a"], 0)
    assert flu.perplexity(3 * math.log(4.0), 3) == pytest.approx(4.0)
    assert flu.perplexity(0.0, 0) is None
    with pytest.raises(ValueError):
        flu.perplexity(1.0, -1)


def test_summary_averages_defined_values_and_counts_empties():
    items = [flu.text_fluency(""), flu.text_fluency("a b a b"), flu.text_fluency("x y")]
    items[1].ppl, items[2].ppl = 2.0, 4.0
    s = flu.fluency_summary(items)
    assert s["n"] == 3 and s["n_empty"] == 1
    assert s["ppl"] == pytest.approx(3.0)
    assert s["distinct_1"] == pytest.approx((2 / 4 + 1.0) / 2)
    assert s["distinct_2"] == pytest.approx((2 / 3 + 1.0) / 2)  # (a b)(b a)(a b): 2 of 3
    assert s["repetition_rate"] == pytest.approx(0.0)  # only "a b a b" has a 4-gram
    assert flu.fluency_summary([flu.text_fluency("")])["ppl"] is None


def test_generation_nll_matches_a_manual_forward(tiny_gpt2):
    model, tok = tiny_gpt2
    contexts = ["Question: hi\nAnswer:", "Q: a longer context here\nA:"]
    gens = [" yes it is", " no"]
    nll = flu.generation_nll(model, tok, contexts, gens, batch_size=2)
    for (total, count), ctx, gen in zip(nll, contexts, gens, strict=True):
        c = tok(ctx, add_special_tokens=False)["input_ids"]
        g = tok(gen, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([c + g])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)
        manual = -sum(lp[len(c) - 1 + j, t].item() for j, t in enumerate(g))
        assert count == len(g)
        assert total == pytest.approx(manual, rel=1e-4)


def test_evaluate_fluency_with_a_model_and_an_empty_generation(tiny_gpt2):
    model, tok = tiny_gpt2
    items = flu.evaluate_fluency(
        [" the the the the", ""], model=model, tokenizer=tok, contexts=["Q:", "Q:"]
    )
    (total, count), _ = flu.generation_nll(model, tok, ["Q:"] * 2, [" the the the the", ""])
    assert items[0].ppl == pytest.approx(math.exp(total / count))
    assert items[0].repetition_rate == 0.0 and items[0].distinct_1 == 0.25
    assert items[1].ppl is None and items[1].n_words == 0
    with pytest.raises(ValueError, match="tokenizer and the contexts"):
        flu.evaluate_fluency(["x"], model=model)
