"""Shared helpers of the adapter tests."""

import pytest
import torch


@pytest.fixture
def greedy_by_recompute():
    """Greedy decoding by re-running ``am``'s routed forward on the whole prefix every step:
    the reference that cached ``generate`` must match."""

    def run(am, prompt: torch.Tensor, steps: int) -> torch.Tensor:
        ids = prompt
        for _ in range(steps):
            nxt = am(ids, torch.ones_like(ids)).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=-1)
        return ids

    return run
