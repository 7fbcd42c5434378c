"""Evaluate any model `alter` produces with EleutherAI's lm-evaluation-harness (optional extra).

    pip install 'alter-unlearn[eval]'

    import alter
    from alter.evals.lm_eval_adapter import evaluate_tasks
    am, tok = alter.load("runs/target", adapter="runs/alter")
    results = evaluate_tasks(am, tok, ["wmdp_bio", "mmlu"], limit=100)

The model can be a plain Hugging Face model (a full-parameter run), a peft model (LoRA, ELM), an
ALTER :class:`~alter.adapters.model.AlterModel` or a model with AsymLoRA layers: lm-eval's
``HFLM`` takes an already-built model object and only calls ``model(input_ids).logits`` (every
log-likelihood request: ALTER's routed forward, pre-pass included) and ``model.generate``
(ALTER's lockstep generation; ``max_length`` is honoured, lm-eval's stop sequences are applied to
the decoded text afterwards). lm-eval downloads its task data from the hub, so tasks need network
access or a populated Hugging Face cache; the offline zero-shot MCQ scorer of
:mod:`alter.evals.mcq` uses the same prompt format and is checked against this adapter in the
tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from alter.errors import AlterError


def lm_eval_model(model, tokenizer, *, batch_size: int = 8, max_length: int | None = None):
    """An lm-eval ``LM`` (``HFLM``) wrapping ``model`` and ``tokenizer``."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise AlterError(
            "lm-eval is not installed: pip install 'alter-unlearn[eval]' (or 'lm-eval>=0.4')"
        ) from None
    model.eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def evaluate_tasks(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
) -> dict:
    """Run lm-eval's ``simple_evaluate`` on ``tasks``; returns its results dictionary."""
    from lm_eval import simple_evaluate

    lm = lm_eval_model(model, tokenizer, batch_size=batch_size)
    return simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot)
