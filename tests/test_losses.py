"""Loss helpers on small examples computed by hand."""

import math

import pytest
import torch

from alter.data.collate import IGNORE_INDEX
from alter.losses import (
    inverse_hinge,
    masked_mean,
    mean_token_nll,
    router_cross_entropy,
    sequence_nll,
    soft_cross_entropy,
    structural_invariance,
    token_kl,
    token_nll,
)


def logits_for(probs):
    """Logits whose softmax is ``probs`` (B, T, V)."""
    return torch.tensor(probs, dtype=torch.float32).log()


# One sequence, three positions, vocabulary of 3. Position t predicts label t + 1.
PROBS = [[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]]]
LABELS = torch.tensor(
    [[IGNORE_INDEX, 0, 2]]
)  # position 0 predicts 0 (p=.7), position 1 predicts 2 (p=.3)


def test_token_nll_by_hand():
    nll = token_nll(logits_for(PROBS), LABELS)
    assert nll.shape == (1, 2)
    torch.testing.assert_close(nll, torch.tensor([[-math.log(0.7), -math.log(0.3)]]))
    total, count = sequence_nll(logits_for(PROBS), LABELS)
    assert count.tolist() == [2]
    torch.testing.assert_close(total, torch.tensor([-math.log(0.7) - math.log(0.3)]))
    torch.testing.assert_close(mean_token_nll(logits_for(PROBS), LABELS), total[0] / 2)


def test_token_nll_ignores_masked_labels():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2]])
    nll = token_nll(logits_for(PROBS), labels)
    torch.testing.assert_close(nll, torch.tensor([[0.0, -math.log(0.3)]]))


def test_inverse_hinge_by_hand():
    # Position 0: target 0 with p=.7, runner-up .2 -> 1 + .7 - .2 = 1.5.
    # Position 1: target 2 with p=.3, runner-up .6 -> 1 + .3 - .6 = 0.7.
    ihl = inverse_hinge(logits_for(PROBS), LABELS)
    torch.testing.assert_close(ihl, torch.tensor([[1.5, 0.7]]))


def test_inverse_hinge_bounds_and_gradient_direction():
    # Certain target: IHL = 2; target at zero, other certain: IHL -> 0.
    sure = torch.tensor([[[20.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    lab = torch.tensor([[IGNORE_INDEX, 0]])
    assert inverse_hinge(sure, lab)[0, 0] == pytest.approx(2.0, abs=1e-6)
    gone = torch.tensor([[[-20.0, 20.0, 0.0], [0.0, 0.0, 0.0]]])
    assert inverse_hinge(gone, lab)[0, 0] == pytest.approx(0.0, abs=1e-6)
    z = logits_for(PROBS).requires_grad_(True)
    inverse_hinge(z, LABELS).sum().backward()
    # Descending the loss lowers the target logit and raises the runner-up's.
    assert z.grad[0, 0, 0] > 0 and z.grad[0, 0, 1] < 0
    assert z.grad[0, 1, 2] > 0 and z.grad[0, 1, 1] < 0


def test_inverse_hinge_where_computes_only_there_with_the_same_values_and_gradients():
    """``where`` restricts the softmax to some positions: their values and the gradient through
    them are those of the unrestricted loss; other positions are 0 and pass no gradient."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = IGNORE_INDEX
    where = torch.tensor([[True, True, False, True], [False, True, True, False]])
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    full = inverse_hinge(a, labels)
    part = inverse_hinge(b, labels, where=where)
    keep = where & (labels[:, 1:] != IGNORE_INDEX)
    torch.testing.assert_close(part, full * keep)
    assert (part[~keep] == 0).all() and keep.sum() < keep.numel()
    (full * keep).sum().backward()
    part.sum().backward()
    torch.testing.assert_close(b.grad, a.grad)
    # Nothing selected: zeros, with a graph.
    none = inverse_hinge(logits.requires_grad_(True), labels, where=torch.zeros_like(where))
    assert none.shape == (2, 4) and (none == 0).all() and none.requires_grad


def test_inverse_hinge_is_float32_for_half_inputs():
    ihl = inverse_hinge(logits_for(PROBS).to(torch.bfloat16), LABELS)
    assert ihl.dtype == torch.float32


def test_structural_invariance_by_hand():
    s_theta = torch.tensor([[1.0, 2.0, 5.0]])
    s_base = torch.tensor([[1.5, 1.0, 0.0]])
    high = torch.tensor([[True, True, False]])
    assert structural_invariance(s_theta, s_base, high).item() == pytest.approx((0.5 + 1.0) / 2)
    assert structural_invariance(s_theta, s_base, torch.zeros_like(high)).item() == 0.0


def test_router_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    slots = torch.tensor([1, 0])
    expected = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    assert router_cross_entropy(logits, slots).item() == pytest.approx(expected, rel=1e-6)


def test_masked_mean():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert masked_mean(v, torch.tensor([True, False, True, False])).item() == 2.0
    assert masked_mean(v, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def _bf16_case():
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 6, 300, generator=gen)).bfloat16()  # a bf16 base's logits
    labels = torch.randint(0, 300, (2, 6), generator=gen)
    labels[:, :2] = IGNORE_INDEX
    return logits, labels


@pytest.mark.parametrize(
    "fn",
    [
        token_nll,
        inverse_hinge,
        lambda lg, lb: sequence_nll(lg, lb)[0],
        lambda lg, lb: token_kl(lg, lg.flip(-1), lb),
        lambda lg, lb: soft_cross_entropy(lg, torch.log_softmax(lg.flip(-1).float(), -1)),
        lambda lg, lb: router_cross_entropy(lg[:, 0], lb[:, -1]),
    ],
    ids=["token_nll", "inverse_hinge", "sequence_nll", "token_kl", "soft_ce", "router_ce"],
)
def test_losses_of_bf16_logits_are_computed_in_float32(fn):
    """A base loaded in bf16 gives bf16 logits; every loss upcasts before its softmax, so it
    equals the loss of the same values in float32 (a bf16 softmax would be ~1e-2 off)."""
    logits, labels = _bf16_case()
    got = fn(logits, labels)
    assert got.dtype == torch.float32
    assert torch.equal(got, fn(logits.float(), labels))
