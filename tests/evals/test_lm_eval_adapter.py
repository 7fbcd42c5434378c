"""lm-eval's HFLM on models alter produces gives the same log-likelihoods as our MCQ scorer."""

import pytest
import torch

from alter.adapters import AlterConfig
from alter.adapters.model import AlterModel
from alter.data.benchmarks import MCQItem
from alter.evals.mcq import choice_loglikelihoods, continuations, format_prompt
from alter.models import load_model

lm_eval = pytest.importorskip("lm_eval")  # the `eval` extra; installed with `dev` in CI


def items():
    return [
        MCQItem(
            "Which gas do plants absorb?",
            ("Oxygen", "Carbon dioxide", "Argon", "Neon"),
            1,
            "biology",
        ),
        MCQItem("2 + 2 = ?", ("3", "4", "5", "22"), 1, "college_mathematics"),
    ]


def alter_model():
    model, tok = load_model("tiny-llama")
    am = AlterModel(model, AlterConfig(n_forget_experts=2, threshold=2.0))
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero experts and router, so the adapter changes the outputs
        for m in am.layers():
            m.alter_B_r.normal_(std=0.05)
            for b in m.alter_B_f:
                b.normal_(std=0.05)
        am.router.alter_router.weight.normal_(std=0.5)
    am.eval()
    return am, tok


@pytest.mark.parametrize("wrap", ["plain", "alter"])
def test_hflm_loglikelihoods_match_our_scorer(wrap):
    from lm_eval.api.instance import Instance

    from alter.evals.lm_eval_adapter import lm_eval_model

    model, tok = alter_model() if wrap == "alter" else load_model("tiny-llama")
    lm = lm_eval_model(model, tok, batch_size=4)
    requests, k = [], 0
    for item in items():
        for cont in continuations(item):
            requests.append(
                Instance("loglikelihood", doc={}, arguments=(format_prompt(item), cont), idx=k)
            )
            k += 1
    theirs = [ll for ll, _ in lm.loglikelihood(requests)]
    ours = [
        x
        for row in choice_loglikelihoods(model, tok, items(), single_token_fast_path=False)
        for x in row
    ]
    assert theirs == pytest.approx(ours, abs=1e-4)


def test_alter_generate_honours_max_length():
    am, tok = alter_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    out = am.generate(ids, max_length=10, eos_token_id=-1)
    assert out.shape == (1, 10)
