"""Pure loss helpers. Shapes: logits ``(B, T, V)``, labels ``(B, T)`` with ``-100`` = ignored.

Labels are aligned with ``input_ids`` (as in Hugging Face models): position ``t`` of the logits
predicts label ``t + 1``. Functions return per-token or per-sequence values; callers reduce, with
the three reducing helpers :func:`masked_mean`, :func:`ratio_mean` and :func:`batch_mean` (and
:func:`router_cross_entropy`). In a data-parallel step (:mod:`alter.distributed`) these return
this process's share of the mean over the step's global batch; otherwise they compute exactly
what they always did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alter.data.collate import IGNORE_INDEX
from alter.distributed import share, sharing


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits ``(B, T, V)`` with next-token labels: returns ``(B, T-1, V)``, ``(B, T-1)``."""
    return logits[:, :-1, :], labels[:, 1:]


def at_positions(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (one per True position of ``mask``) placed into zeros of ``mask``'s shape."""
    out = values.new_zeros(mask.shape)
    out[mask] = values
    return out


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood ``(B, T-1)`` in float32, 0 where the label is ignored.

    The vocabulary-wide work runs on the supervised positions only (their rows of the logits are
    gathered first): the same values, without a float32 copy of every position's logits."""
    lg, lb = shift(logits, labels)
    mask = lb != IGNORE_INDEX
    nll = F.cross_entropy(lg[mask].float(), lb[mask], reduction="none")
    return at_positions(mask, nll)


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer NLL per sequence ``(B,)`` and the number of supervised tokens ``(B,)``."""
    nll = token_nll(logits, labels)
    count = (shift(logits, labels)[1] != IGNORE_INDEX).sum(-1)
    return nll.sum(-1), count


def mean_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every supervised token of the batch (the usual LM fine-tuning loss)."""
    total, count = sequence_nll(logits, labels)
    return ratio_mean(total, count)


def ratio_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``sum(total) / sum(count)``: per-sequence sums ``(B,)`` and token counts ``(B,)`` to a
    mean per token (0 when there are no tokens)."""
    if sharing():
        return share(total.sum(), count.sum())
    return total.sum() / count.sum().clamp_min(1)


def batch_mean(values: torch.Tensor) -> torch.Tensor:
    """``values.mean()`` over every element (rows or positions) of the batch."""
    if sharing():
        return share(values.sum(), values.numel())
    return values.mean()


def inverse_hinge(
    logits: torch.Tensor, labels: torch.Tensor, where: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token inverse hinge loss ``(B, T-1)``: ``1 + p(y) - max_{v != y} p(v)``, in ``[0, 2]``.

    Minimising it lowers the target token's probability and raises the runner-up's. Softmax in
    float32; 0 where the label is ignored and, given ``where`` ``(B, T-1)`` bool, where it is
    False (the softmax then runs on those positions only: ALTER's IHL covers the low-entropy
    answer tokens).
    """
    lg, lb = shift(logits, labels)
    mask = lb != IGNORE_INDEX
    if where is not None:
        mask = mask & where
    p = torch.softmax(lg[mask].float(), dim=-1)  # (N, V): the selected positions only
    target = lb[mask][:, None]
    p_y = p.gather(-1, target).squeeze(-1)
    others = p.scatter(-1, target, -1.0)  # exclude y from the max
    return at_positions(mask, 1.0 + p_y - others.max(dim=-1).values)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over True positions of ``mask`` (0 when the mask is empty, with grad)."""
    mask = mask.to(values.dtype)
    if sharing():
        return share((values * mask).sum(), mask.sum())
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def structural_invariance(
    s_theta: torch.Tensor, s_base: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """ALTER's ``L_struct``: mean over high-entropy positions of ``|S_q(p_theta) - S_q(p_base)|``.

    ``s_theta``, ``s_base``: ``(B, T)`` Tsallis entropies (q = q_A = 0.5) of the adapted and the
    frozen base model at each position; ``high``: ``(B, T)`` bool mask of high-entropy, non-pad
    positions. Returns a scalar (0 with gradient when no position is high).
    """
    return masked_mean((s_theta - s_base).abs(), high)


def router_cross_entropy(logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Router loss: cross-entropy of slot logits ``(N, D + 1)`` against slot labels ``(N,)``.

    Label 0 = "no forget expert" (retain tokens), ``d + 1`` = forget subdomain ``d``.
    """
    if sharing():
        return share(F.cross_entropy(logits.float(), slots, reduction="sum"), len(slots))
    return F.cross_entropy(logits.float(), slots)


# -- baseline losses ---------------------------------------------------------------------------


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024) per sequence ``(B,)``: ``-(2/beta) log sigmoid(-beta (logp - logp_ref))``.

    ``logp``, ``logp_ref``: ``(B,)`` answer log-probabilities summed over tokens under the trained
    and the frozen reference model. Tends to ``2 (logp - logp_ref)`` (gradient ascent, scaled) as
    beta -> 0 and saturates once the sequence is far less likely than under the reference.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref))


def simnpo_loss(
    nll_sum: torch.Tensor, count: torch.Tensor, beta: float, delta: float = 0.0
) -> torch.Tensor:
    """SimNPO (Fan et al. 2024) per sequence ``(B,)``: ``-(2/beta) log sigmoid(beta (nll/|y| - delta))``.

    Reference-free and length-normalised: ``nll_sum`` ``(B,)`` summed answer NLL, ``count``
    ``(B,)`` supervised tokens. The loss falls as the mean NLL grows past ``delta``.
    """
    mean_nll = nll_sum / count.clamp_min(1).to(nll_sum.dtype)
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta))


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token ``KL(p_ref || p_theta)`` ``(B, T-1)`` at supervised positions (0 elsewhere).

    ``logits``, ``ref_logits``: ``(B, T, V)``; the retain term of NPO_KL (the reference's
    distribution is the target, as in open-unlearning's ``compute_kl_divergence``).
    As :func:`token_nll`, the vocabulary-wide work runs on the supervised positions' rows only.
    """
    lg, lb = shift(logits, labels)
    mask = lb != IGNORE_INDEX
    lp = torch.log_softmax(lg[mask].float(), dim=-1)
    lp_ref = torch.log_softmax(ref_logits[:, :-1, :][mask].float(), dim=-1)
    return at_positions(mask, (lp_ref.exp() * (lp_ref - lp)).sum(-1))


def activation_mse(acts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RMU's term per position ``(B, T)``: mean over the hidden dimension of ``(acts - target)^2``.

    ``acts``: ``(B, T, H)``; ``target``: ``(B, T, H)`` or broadcastable (``c * u`` of shape ``(H,)``).
    """
    return (acts.float() - target.float()).pow(2).mean(-1)


def soft_cross_entropy(logits: torch.Tensor, target_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-position ``-sum_v p*(v) log p_theta(v)`` ``(..., )`` for a target distribution given as
    log-probabilities ``(..., V)`` (ELM's erase and retain terms)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -(target_logprobs.float().exp() * lp).sum(-1)


def elm_target_logprobs(
    base_logits: torch.Tensor,
    expert_logits: torch.Tensor,
    novice_logits: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """ELM (Gandikota et al. 2024) erasure target ``log p*`` ``(..., V)``.

    ``p*(x) ∝ p(x) (p(x | c_novice) / p(x | c_expert))^eta``: the original model's distribution
    pushed away from what an "expert" prompt makes likely and toward a "novice" prompt's. All
    inputs are logits at the same answer positions.
    """
    lp = torch.log_softmax(base_logits.float(), -1)
    le = torch.log_softmax(expert_logits.float(), -1)
    ln = torch.log_softmax(novice_logits.float(), -1)
    return torch.log_softmax(lp + eta * (ln - le), dim=-1)
