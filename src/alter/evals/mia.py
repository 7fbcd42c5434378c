"""Membership inference (MIA) scores, MUSE's PrivLeak, exact memorisation and extraction strength.

Everything except :func:`token_logprobs` and :func:`mia_report` is a pure function of per-token
values, so the maths is tested without a model.

Per-token statistics (one :class:`TokenStats` per row, supervised positions only: every token
after the first for a text row, the answer tokens and the final end-of-turn token for a QA row,
exactly the positions :mod:`alter.losses` trains on):

* ``logp[t] = log p(x_t | x_<t)`` under the model, from a float32 ``log_softmax``;
* ``mu[t] = sum_v p_v log p_v`` and ``sigma[t] = sqrt(sum_v p_v (log p_v)^2 - mu[t]^2)``: mean
  and standard deviation of ``log p(v)`` for ``v`` drawn from the model's own next-token
  distribution (Min-K%++, Zhang et al. 2024), the variance computed in the equivalent two-pass
  form ``sum_v p_v (log p_v - mu[t])^2`` for float32 accuracy;
* ``hits[t]``: the argmax prediction equals the label (teacher forcing).

Sign convention: every MIA score is **higher = more likely a member** (seen in training). The
reference code of the field uses loss-like scores (higher = non-member) and flips labels to
match; the AUCs are the same. With ``logp`` the supervised log-probabilities of one row:

* ``loss``: ``mean(logp)``, minus the average NLL (Yeom et al. 2018).
* ``zlib``: ``mean(logp) / zlib_bytes``, minus the average NLL over the length in bytes of the
  zlib-compressed text (Carlini et al. 2021, "Extracting training data from large language
  models": log-perplexity over zlib entropy). This is the *mean* NLL, as in the Min-K% Prob
  code, MUSE (``PPL/zlib``) and open-unlearning (``avg_loss / zlib_entropy``). The text is the
  row's text (text rows) or its answer (QA rows), as decoded from the supervised tokens.
* ``min_k``: mean of the ``max(1, int(n * k))`` lowest ``logp`` (Min-K% Prob, Shi et al. 2023).
  MUSE's PrivLeak uses ``k = 0.4``.
* ``min_k_plus_plus``: the same over ``z[t] = (logp[t] - mu[t]) / sigma[t]`` (Min-K%++). ``sigma``
  is clamped to at least 1e-3 (open-unlearning clamps the variance at 1e-6) so near-one-hot
  positions cannot produce infinite scores.

:func:`auc` is the ROC AUC with members labelled 1, so 1.0 means the attack separates members
perfectly and 0.5 means chance.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from alter.data.collate import IGNORE_INDEX, batches, encode_rows, to_device
from alter.models import eval_mode

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
# sqrt of open-unlearning's variance floor (1e-6) for Min-K%++.
SIGMA_FLOOR = 1e-3


@dataclass
class TokenStats:
    """Statistics of one row's supervised tokens; every tensor has shape ``(N,)``, float32."""

    logp: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    hits: torch.Tensor | None = None  # bool: argmax prediction == label
    text: str = ""  # the scored text, for the zlib attack


# ------------------------------------------------------------------------------ from logits


@torch.no_grad()
def stats_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> list[TokenStats]:
    """Per-row :class:`TokenStats` from logits ``(B, T, V)`` and aligned labels ``(B, T)``.

    Position ``t`` of the logits predicts label ``t + 1`` (see :mod:`alter.losses`); only labels
    other than ``-100`` count. The full-vocabulary softmax is taken one row at a time, on the
    supervised positions only, to bound memory at ``N x V`` floats.
    """
    lg, lb = logits[:, :-1, :], labels[:, 1:]
    out = []
    for b in range(lg.size(0)):
        mask = lb[b] != IGNORE_INDEX
        target = lb[b][mask]
        lp_all = torch.log_softmax(lg[b][mask].float(), dim=-1)  # (N, V)
        p = lp_all.exp()
        # Terms with p = 0 count 0 (also where a logit is -inf and log p = -inf).
        live = p > 0
        mu = torch.where(live, p * lp_all, 0.0).sum(-1)
        # Two-pass variance: E[x^2] - mu^2 cancels badly in float32 when p is near uniform.
        dev = torch.where(live, lp_all - mu[:, None], 0.0)
        sigma = (p * dev.square()).sum(-1).sqrt()
        logp = lp_all.gather(-1, target[:, None]).squeeze(-1)
        hits = lp_all.argmax(-1) == target
        out.append(TokenStats(logp=logp, mu=mu, sigma=sigma, hits=hits))
    return out


@torch.no_grad()
def token_logprobs(
    model,
    tokenizer,
    rows,
    *,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = False,
) -> list[TokenStats]:
    """:class:`TokenStats` of every row (text or QA), in the rows' order.

    Rows are tokenised by :func:`~alter.data.collate.encode_rows` (the training format), batched
    with right padding and run with the attention mask, so a row's values do not depend on the
    batch it lands in. ``text`` is the decoded text (text rows) or answer (QA rows), special
    tokens removed.
    """
    if len(rows) == 0:
        raise ValueError("token_logprobs: no rows")
    kind = getattr(rows, "kind", None) or ("text" if "text" in rows[0] else "qa")
    enc = encode_rows(rows, tokenizer, max_length=max_length)
    out: list[TokenStats | None] = [None] * len(enc)
    n_batches = math.ceil(len(enc) / batch_size)
    it = batches(enc, batch_size, tokenizer.pad_token_id, sort=True)
    device = next(model.parameters()).device
    with eval_mode(model):
        for b in tqdm(
            it, total=n_batches, desc="token log-probs", disable=not progress, leave=False
        ):
            b = to_device(b, device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for i, st in zip(
                b["index"].tolist(), stats_from_logits(logits, b["labels"]), strict=True
            ):
                e = enc[i]
                ids = e.input_ids if kind == "text" else [t for t in e.labels if t != IGNORE_INDEX]
                st.text = tokenizer.decode(ids, skip_special_tokens=True)
                out[i] = st
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ scores


def _values(x: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name}: no supervised tokens to score")
    return t


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")


def _lowest_k_mean(values: torch.Tensor, k: float) -> float:
    _check_k(k)
    n = max(1, int(values.numel() * k))
    return values.sort().values[:n].mean().item()


def loss_score(logp: torch.Tensor | Sequence[float]) -> float:
    """``mean(logp)``: minus the average token NLL. Higher = more likely a member."""
    return _values(logp, "loss_score").mean().item()


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (default compression level)."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(logp: torch.Tensor | Sequence[float], text: str) -> float:
    """``mean(logp) / zlib_entropy(text)``. Higher = more likely a member."""
    if not text:
        raise ValueError("zlib_score: empty text")
    return loss_score(logp) / zlib_entropy(text)


def min_k_score(logp: torch.Tensor | Sequence[float], k: float = 0.4) -> float:
    """Mean of the ``max(1, int(n * k))`` lowest log-probs (Min-K% Prob). Higher = member."""
    return _lowest_k_mean(_values(logp, "min_k_score"), k)


def min_k_plus_plus_score(stats: TokenStats, k: float = 0.4) -> float:
    """Mean of the lowest ``k`` fraction of ``(logp - mu) / sigma`` (Min-K%++). Higher = member."""
    logp = _values(stats.logp, "min_k_plus_plus_score")
    mu = torch.as_tensor(stats.mu, dtype=torch.float64).flatten()
    sigma = torch.as_tensor(stats.sigma, dtype=torch.float64).flatten()
    if not logp.shape == mu.shape == sigma.shape:
        raise ValueError(
            f"min_k_plus_plus_score: logp, mu, sigma differ in shape "
            f"({tuple(logp.shape)}, {tuple(mu.shape)}, {tuple(sigma.shape)})"
        )
    return _lowest_k_mean((logp - mu) / sigma.clamp_min(SIGMA_FLOOR), k)


def mia_scores(stats: Sequence[TokenStats], k: float = 0.4) -> dict[str, list[float]]:
    """The four attack scores of every row: ``{attack: [score per row]}`` (keys :data:`ATTACKS`)."""
    _check_k(k)
    out: dict[str, list[float]] = {name: [] for name in ATTACKS}
    for i, s in enumerate(stats):
        try:
            out["loss"].append(loss_score(s.logp))
            out["zlib"].append(zlib_score(s.logp, s.text))
            out["min_k"].append(min_k_score(s.logp, k))
            out["min_k_plus_plus"].append(min_k_plus_plus_score(s, k))
        except ValueError as e:
            raise ValueError(f"row {i}: {e}") from None
    return out


# ---------------------------------------------------------------------------- AUC, PrivLeak


def auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of scores (higher = member) with members labelled 1 (sklearn ``roc_auc_score``).

    1.0: every member outscores every non-member; 0.5: no separation; ties count one half.
    """
    from sklearn.metrics import roc_auc_score

    m = np.asarray(member_scores, dtype=np.float64).ravel()
    n = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if m.size == 0 or n.size == 0:
        raise ValueError(f"auc: need members and non-members, got {m.size} and {n.size}")
    scores = np.concatenate([m, n])
    if not np.isfinite(scores).all():
        raise ValueError("auc: scores contain NaN or infinity")
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return float(roc_auc_score(labels, scores))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE's PrivLeak in percent, from AUCs in this module's convention (forget = members = 1).

    MUSE (Shi et al. 2024) computes the Min-K% (``k = 0.4``) AUC between the forget set and the
    holdout set, and ``PrivLeak = (AUC(f_unlearn) - AUC(f_retrain)) / AUC(f_retrain)`` in %, with
    ``f_retrain`` the model trained on the retain set only. MUSE's code (``privleak/get_ppl.py``,
    key ``forget_holdout``) labels the *holdout* set 1, so its AUC is ``1 - auc`` here; the
    formula below applies it to ``1 - auc`` so results keep MUSE's sign (open-unlearning's
    ``privleak`` does the same):

        PrivLeak = ((1 - auc_unlearned) - (1 - auc_retain)) / (1 - auc_retain) * 100

    Near 0 is good. Under-unlearning (forget data still recognised, ``auc_unlearned`` near 1)
    gives large negative values (MUSE's target models: about -100 %); over-unlearning (forget
    data *less* likely than unseen data) gives positive values.
    """
    for name, v in (("auc_unlearned", auc_unlearned), ("auc_retain", auc_retain)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"privleak: {name} must be an AUC in [0, 1], got {v}")
    ref = 1.0 - auc_retain
    if ref == 0.0:
        raise ValueError("privleak: auc_retain is 1, so MUSE's reference AUC (1 - auc) is 0")
    return ((1.0 - auc_unlearned) - ref) / ref * 100.0


# ------------------------------------------------------------------ memorisation (teacher forced)


def _hits(hits: torch.Tensor | Sequence[bool], name: str) -> torch.Tensor:
    t = torch.as_tensor(hits).flatten().bool()
    if t.numel() == 0:
        raise ValueError(f"{name}: no supervised tokens")
    return t


def exact_memorisation(hits: torch.Tensor | Sequence[bool]) -> float:
    """Fraction of supervised tokens whose argmax prediction equals the label (teacher forcing).

    open-unlearning's ``exact_memorization`` (Tirumala et al. 2022): ``hits`` is
    :attr:`TokenStats.hits` of one row.
    """
    return _hits(hits, "exact_memorisation").float().mean().item()


def extraction_strength(hits: torch.Tensor | Sequence[bool]) -> float:
    """``ES = 1 - k / n``, ``k`` the shortest prefix after which every prediction is right.

    ES (Carlini et al. 2021; Wang et al. 2025) asks for the shortest prefix from which greedy
    decoding reproduces the rest of the ``n`` supervised tokens. As in open-unlearning it is
    approximated under teacher forcing: ``k`` is the smallest index with ``hits[k:]`` all True.
    ``k = 0`` (ES 1) when every token is predicted, ``k = n`` (ES 0) when even the last one is
    missed. (open-unlearning's loop stops at ``k = n - 1`` in that case and reports ``1 / n``.)
    """
    h = _hits(hits, "extraction_strength")
    misses = (~h).nonzero()
    k = 0 if misses.numel() == 0 else int(misses[-1]) + 1
    return 1.0 - k / h.numel()


# ------------------------------------------------------------------------------------ report


def mia_report(
    model,
    tokenizer,
    members,
    nonmembers,
    *,
    k: float = 0.4,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = False,
) -> dict:
    """The four attacks' AUCs with ``members`` labelled 1 (e.g. MUSE/TOFU forget vs holdout).

    Returns ``{"loss", "zlib", "min_k", "min_k_plus_plus": AUC, "k", "n_members",
    "n_nonmembers", "scores": {"members": {attack: [...]}, "nonmembers": {...}}}``. For MUSE's
    PrivLeak, pass ``report["min_k"]`` of the unlearned and the retain model to :func:`privleak`.
    """
    _check_k(k)
    kw = {"batch_size": batch_size, "max_length": max_length, "progress": progress}
    mem = mia_scores(token_logprobs(model, tokenizer, members, **kw), k)
    non = mia_scores(token_logprobs(model, tokenizer, nonmembers, **kw), k)
    report: dict = {name: auc(mem[name], non[name]) for name in ATTACKS}
    report.update(
        k=k,
        n_members=len(members),
        n_nonmembers=len(nonmembers),
        scores={"members": mem, "nonmembers": non},
    )
    return report
