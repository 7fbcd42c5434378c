"""Pinned values of the NPO, SimNPO and KL losses, computed by hand."""

import pytest
import torch

from alter.data.collate import IGNORE_INDEX
from alter.losses import npo_loss, simnpo_loss, token_kl


def test_npo_by_hand():
    # logp - logp_ref = -2 - (-1) = -1; -(2/0.1) * log sigmoid(0.1) = 20 * log(1 + e^-0.1)
    got = npo_loss(torch.tensor([-2.0, -1.0]), torch.tensor([-1.0, -1.0]), beta=0.1)
    # At logp = logp_ref the loss is (2/beta) log 2 = 20 * 0.693147 = 13.862944.
    assert got.tolist() == pytest.approx([12.887933, 13.862944], abs=1e-5)


def test_npo_gradient_lowers_the_forget_logprob():
    logp = torch.tensor([-1.0], requires_grad=True)
    npo_loss(logp, torch.tensor([-1.0]), beta=0.1).sum().backward()
    assert logp.grad.item() == pytest.approx(1.0)  # d/dlogp = 2 sigmoid(0) = 1 at the reference


def test_simnpo_by_hand():
    # mean NLL 6/3 = 2; beta (2 - 0.5) = 6.75; -(2/4.5) log sigmoid(6.75) = (2/4.5) log(1 + e^-6.75)
    got = simnpo_loss(torch.tensor([6.0]), torch.tensor([3]), beta=4.5, delta=0.5)
    assert got.item() == pytest.approx(0.00052009, rel=1e-4)


def test_simnpo_is_length_normalised():
    a = simnpo_loss(torch.tensor([2.0]), torch.tensor([1]), beta=4.5)
    b = simnpo_loss(torch.tensor([20.0]), torch.tensor([10]), beta=4.5)
    assert a.item() == pytest.approx(b.item())


def test_token_kl_by_hand():
    # position 0 predicts label 1: reference uniform over 2 tokens, theta = (0.75, 0.25).
    # KL(ref || theta) = 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25) = 0.143841
    logits = torch.tensor([[[torch.log(torch.tensor(3.0)), 0.0], [0.0, 0.0]]])
    ref = torch.zeros(1, 2, 2)
    got = token_kl(logits, ref, torch.tensor([[IGNORE_INDEX, 1]]))
    assert got[0].tolist() == pytest.approx([0.143841], abs=1e-6)
    masked = token_kl(logits, ref, torch.tensor([[IGNORE_INDEX, IGNORE_INDEX]]))
    assert masked.tolist() == [[0.0]]


def test_token_kl_is_zero_for_identical_distributions():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    assert token_kl(logits, logits.clone(), labels).abs().max().item() < 1e-6
