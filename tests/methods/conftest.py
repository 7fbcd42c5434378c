"""Fixtures shared by the method tests: the small built-in benchmark and a tiny model that
has learned it (so forgetting is measurable)."""

import pytest

from alter.data.synthetic import SyntheticConfig, make_synthetic
from alter.models import load_model
from alter.train import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def bench():
    return make_synthetic(
        SyntheticConfig(
            entities_per_subdomain=4,
            forget_entities_per_subdomain=1,
            holdout_entities_per_subdomain=1,
            facts_per_entity=2,
        )
    )


@pytest.fixture(scope="module")
def target(bench, tmp_path_factory):
    """A tiny model fine-tuned on the benchmark's forget + retain rows, saved to a directory."""
    model, tok = load_model("tiny-llama")
    model = finetune(
        model,
        tok,
        bench.train_rows(),
        FinetuneConfig(epochs=30, lr=3e-3, batch_size=8),
        progress=False,
    )
    path = tmp_path_factory.mktemp("target")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
