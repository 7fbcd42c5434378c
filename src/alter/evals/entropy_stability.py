"""Stability of the high/low token-entropy split between an original and an unlearned model.

ALTER routes tokens by the frozen base model's entropy; the paper claims the split is stable:
more than 87% of high-entropy and 92% of low-entropy answer tokens stay on their side after
unlearning. This module measures that on QA rows:

1. the answer-token entropies (the supervised positions of :mod:`alter.data.collate`, see
   :func:`alter.entropy.answer_entropies`) under the original model and under the unlearned one;
2. one threshold: the adapter's own (when known) or an adaptive (Otsu) threshold of the
   original model's entropies;
3. :func:`alter.entropy.split_stability` per split and over all rows, plus histograms (PNG).

Both models see exactly the same token sequences, so entry ``i`` of both entropy vectors is the
same position.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alter import entropy as ent
from alter.data.collate import batches, encode_rows, to_device
from alter.models import eval_mode


@torch.no_grad()
def answer_token_entropies(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    *,
    q: float = 1.0,
    batch_size: int = 8,
    max_length: int = 512,
    context: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: bool = False,
    desc: str = "entropy",
) -> torch.Tensor:
    """1-D float32 Tsallis entropies (``q = 1``: Shannon, nats) of every answer token of ``rows``.

    ``context`` (e.g. ``am.adapters_disabled``) is entered around every forward pass. The order
    is deterministic (rows sorted by length, then position), the same for any model.
    """
    enc = encode_rows(list(rows), tokenizer, max_length=max_length)
    out = []
    n_batches = math.ceil(len(enc) / batch_size)
    device = next(model.parameters()).device
    with eval_mode(model):
        for b in tqdm(
            batches(enc, batch_size, tokenizer.pad_token_id, sort=True),
            total=n_batches,
            desc=desc,
            disable=not progress,
            leave=False,
        ):
            b = to_device(b, device)
            with context() if context is not None else contextlib.nullcontext():
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            out.append(ent.answer_entropies(ent.token_entropy(logits, q), b["labels"]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def entropy_stability(
    base_model,
    unlearned_model,
    tokenizer,
    rows_by_split: Mapping[str, Sequence[Mapping]],
    *,
    q: float = 1.0,
    threshold: float | None = None,
    base_context: Callable[[], contextlib.AbstractContextManager] | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = False,
) -> dict:
    """Split statistics and stability per split and overall (``"all"``); PNGs into ``out_dir``.

    ``base_model`` may be ``unlearned_model`` itself with ``base_context`` switching its adapters
    off. Without ``threshold`` the Otsu threshold of the base entropies is used (recorded under
    ``threshold_source``). Returns ``{"q", "threshold", "threshold_source", "splits": {name:
    {"base": split_stats, "unlearned": split_stats, "stability": split_stability}}, "figures"}``.
    """
    if not rows_by_split:
        raise ValueError("entropy stability needs at least one split of rows")
    kw = {"q": q, "batch_size": batch_size, "max_length": max_length, "progress": progress}
    before, after = {}, {}
    for name, rows in rows_by_split.items():
        before[name] = answer_token_entropies(
            base_model, tokenizer, rows, context=base_context, desc=f"entropy base {name}", **kw
        )
        after[name] = answer_token_entropies(
            unlearned_model, tokenizer, rows, desc=f"entropy unlearned {name}", **kw
        )
    before["all"] = torch.cat(list(before.values()))
    after["all"] = torch.cat([after[n] for n in rows_by_split])
    source = "given"
    if threshold is None:
        try:
            threshold = ent.adaptive_threshold(before["all"], "otsu")
            source = "otsu on the base entropies"
        except ValueError:
            # Degenerate (constant) entropies: any threshold splits them the same way.
            threshold = float(before["all"].median()) if before["all"].numel() else 0.0
            source = "median of the base entropies (too few distinct values for Otsu)"
    splits = {
        name: {
            "base": ent.split_stats(before[name], None, threshold),
            "unlearned": ent.split_stats(after[name], None, threshold),
            "stability": ent.split_stability(before[name], after[name], None, threshold),
        }
        for name in before
    }
    figures = []
    if out_dir is not None:
        for label, values in (("base", before["all"]), ("unlearned", after["all"])):
            path = Path(out_dir) / f"entropy_{label}.png"
            ent.plot_histogram(
                values, threshold, path, title=f"answer-token entropy, {label} model (q={q:g})"
            )
            figures.append(path.name)
    return {
        "q": q,
        "threshold": float(threshold),
        "threshold_source": source,
        "splits": splits,
        "figures": figures,
    }
