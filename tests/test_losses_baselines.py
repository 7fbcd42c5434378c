"""RMU's and ELM's losses on small examples computed by hand (values pinned, not recomputed)."""

import math

import pytest
import torch

from alter.losses import activation_mse, elm_target_logprobs, soft_cross_entropy


def log(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def test_activation_mse_by_hand():
    acts = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, T=2, H=2)
    # Against c*u = (1, 0): position 0 ((1-1)^2 + (2-0)^2) / 2 = 2; position 1 (4 + 16) / 2 = 10.
    torch.testing.assert_close(
        activation_mse(acts, torch.tensor([1.0, 0.0])), torch.tensor([[2.0, 10.0]])
    )
    # Against per-position targets (the frozen model's activations): (0.25 + 0) / 2, (1 + 4) / 2.
    ref = torch.tensor([[[1.5, 2.0], [2.0, 6.0]]])
    torch.testing.assert_close(activation_mse(acts, ref), torch.tensor([[0.125, 2.5]]))


def test_soft_cross_entropy_by_hand():
    target = log([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    logits = log([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])
    # Row 0: -(0.5 ln .25 + .25 ln .25 + .25 ln .5) = 0.75 ln 4 + 0.25 ln 2 = 1.75 ln 2.
    # Row 1: the target's own entropy, 0.5 ln 2 + 0.5 ln 4 = 1.5 ln 2.
    want = torch.tensor([1.75 * math.log(2), 1.5 * math.log(2)])
    torch.testing.assert_close(soft_cross_entropy(logits, target), want)
    # Logits need not be normalised: a constant shift changes nothing.
    torch.testing.assert_close(soft_cross_entropy(logits + 3.0, target), want)


def test_elm_target_by_hand():
    base = log([0.5, 0.25, 0.25])
    expert = log([0.8, 0.1, 0.1]) + 1.0  # unnormalised logits on purpose
    novice = log([0.2, 0.4, 0.4]) - 2.0
    # eta = 1: p * (pn / pe) = (0.5 * 0.25, 0.25 * 4, 0.25 * 4) = (1/8, 1, 1); Z = 17/8.
    torch.testing.assert_close(
        elm_target_logprobs(base, expert, novice, 1.0).exp(), torch.tensor([1, 8, 8]) / 17.0
    )
    # eta = 2: p * (pn / pe)^2 = (0.5 / 16, 0.25 * 16, 0.25 * 16) = (1/32, 4, 4); Z = 257/32.
    torch.testing.assert_close(
        elm_target_logprobs(base, expert, novice, 2.0).exp(), torch.tensor([1, 128, 128]) / 257.0
    )
    # eta = 0 leaves the base distribution; equal expert and novice views change nothing.
    want = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(elm_target_logprobs(base, expert, novice, 0.0).exp(), want)
    torch.testing.assert_close(elm_target_logprobs(base, expert, expert, 5.0).exp(), want)


def test_elm_target_keeps_leading_dimensions():
    base = torch.zeros(2, 3, 5)
    out = elm_target_logprobs(base, base, torch.randn(2, 3, 5), 2.0)
    assert out.shape == (2, 3, 5)
    assert out.exp().sum(-1) == pytest.approx(torch.ones(2, 3))
