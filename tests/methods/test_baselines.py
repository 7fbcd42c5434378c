"""Every registered baseline through the shared loop on a tiny fine-tuned model."""

from __future__ import annotations

import json

import pytest
import torch

from alter.errors import ConfigError
from alter.methods import METHODS
from alter.methods.common import sequence_logprobs
from alter.methods.loop import TrainingError, UnlearnConfig, run_method
from alter.models import load_model

BASELINES = [name for name in METHODS if name != "alter"]


def forget_logprob(model, tok, rows) -> float:
    from alter.data.collate import encode_rows

    return float(sequence_logprobs(model, encode_rows(rows, tok), tok.pad_token_id).mean())


@pytest.mark.parametrize("name", BASELINES)
def test_method_trains_only_its_parameters_and_lowers_forget_logprob(name, bench, target):
    model, tok = load_model(str(target))
    before = forget_logprob(model, tok, bench.forget)
    base_names = {n for n, _ in model.named_parameters()}
    method = METHODS[name]()
    # A tiny random model needs a larger step than the methods' defaults (tuned for real LMs).
    cfg = UnlearnConfig(epochs=10, max_steps=8, lr=2e-3, seed=0)
    summary = run_method(method, model, tok, bench.forget, bench.retain, cfg, progress=False)
    assert summary["steps"] == 8 and summary["tokens"] > 0
    assert all(isinstance(v, float) and v == v for v in summary["last"].values())

    trained = {id(p) for p in method.trainable()}
    result = method.result()
    with_grad = [(n, p) for n, p in result.named_parameters() if p.grad is not None]
    assert with_grad, "no parameter received a gradient"
    assert all(id(p) in trained for _, p in with_grad), "a frozen parameter received a gradient"
    assert any(float(p.grad.abs().sum()) > 0 for _, p in with_grad)
    if name in ("lora", "elm", "asymlora"):  # adapters: the base weights stay frozen
        frozen = [n for n, p in result.named_parameters() if not p.requires_grad]
        assert len(frozen) >= len(base_names) - 1
    after = forget_logprob(result, tok, bench.forget)
    assert after < before - 0.1, f"{name}: forget log-prob {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_result(name, bench, target):
    def once():
        model, tok = load_model(str(target))
        method = METHODS[name]()
        run_method(
            method,
            model,
            tok,
            bench.forget,
            bench.retain,
            UnlearnConfig(max_steps=2, lr=1e-3, seed=3),
            progress=False,
        )
        return [p.detach().clone() for p in method.trainable()]

    a, b = once(), once()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_nan_loss_stops_the_run_with_a_clear_error(bench, target):
    model, tok = load_model(str(target))
    method = METHODS["ga"]()
    method.loss = lambda f, r: (torch.tensor(float("nan"), requires_grad=True), {})
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        run_method(method, model, tok, bench.forget, bench.retain, UnlearnConfig(), progress=False)


def test_epochs_count_passes_over_the_forget_set(bench, target):
    model, tok = load_model(str(target))
    cfg = UnlearnConfig(epochs=2, forget_batch_size=4)
    summary = run_method(
        METHODS["ga"](), model, tok, bench.forget, bench.retain, cfg, progress=False
    )
    assert summary["steps"] == 2 * -(-len(bench.forget) // 4)


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ("npo", {"beta": 0}, "beta must be > 0"),
        ("lora", {"loss": "kl"}, "loss must be one of ga, npo, ihl"),
        ("ga", {"beta": 0.1}, "unknown option(s) for method 'ga': beta"),
        ("gd", {"lr": "fast"}, "lr must be a number"),
        ("nope", {}, "unknown method 'nope'"),
    ],
)
def test_bad_configs_are_clear_errors(method, overrides, message):
    from alter.api import resolve_baseline_configs

    with pytest.raises(ConfigError) as e:
        resolve_baseline_configs(method, overrides)
    assert message in str(e.value)


def test_overrides_split_between_shared_and_method_options():
    from alter.api import resolve_baseline_configs

    shared, own = resolve_baseline_configs("npo", {"lr": "3e-5", "beta": "0.2", "epochs": 2})
    assert shared.lr == 3e-5 and shared.epochs == 2.0 and own.beta == 0.2


def test_full_runs_save_a_model_dir_and_adapter_runs_an_adapter(bench, target, tmp_path):
    from alter.adapters.io import AdapterError, load_adapter
    from alter.pipeline import unlearn_and_save

    full, tok = unlearn_and_save(
        str(target),
        bench.forget,
        bench.retain,
        out=tmp_path / "ga",
        method="ga",
        overrides={"max_steps": 1},
        progress=False,
    )
    meta = json.loads((tmp_path / "ga" / "alter_method.json").read_text())
    assert meta == {"method": "ga", "kind": "full"}
    assert (tmp_path / "ga" / "run_complete.json").is_file()
    reloaded, _ = load_model(str(tmp_path / "ga"))
    ids = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(reloaded(ids).logits, full(ids).logits)
    with pytest.raises(AdapterError, match="holds a full unlearned model"):
        load_adapter(load_model(str(target))[0], tmp_path / "ga")

    lora, _ = unlearn_and_save(
        str(target),
        bench.forget,
        bench.retain,
        out=tmp_path / "lora",
        method="lora",
        overrides={"max_steps": 2, "lr": 1e-2},
        progress=False,
    )
    again = load_adapter(load_model(str(target))[0], tmp_path / "lora")
    assert torch.allclose(again(ids).logits, lora(ids).logits, atol=1e-5)
    summary = json.loads((tmp_path / "lora" / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["steps"] == 2
    other, _ = load_model("tiny-llama")  # same architecture, different weights
    with pytest.raises(AdapterError, match="different base weights"):
        load_adapter(other, tmp_path / "lora")
