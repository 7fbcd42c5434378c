"""Adapter methods on a frozen base loaded in bfloat16 (``base_dtype=bfloat16``): the base stays
bf16 and untouched, the adapters train in float32, and the result is the float32-base run's to
within bf16's rounding of the base weights. Full-parameter methods refuse bf16 weights."""

import json
import math

import pytest
import torch

from alter.errors import ConfigError
from alter.evals.qa import qa_metrics, summarise
from alter.methods import METHODS
from alter.methods.alter import AlterTrainConfig, unlearn_alter
from alter.methods.loop import UnlearnConfig, run_method
from alter.models import load_model


def nll(model, tok, rows) -> float:
    return summarise(qa_metrics(model, tok, rows, generate=False, progress=False))["nll"]


def finite_losses(log) -> bool:
    values = [v for rec in map(json.loads, log.read_text().splitlines()) for v in rec.values()]
    return all(math.isfinite(v) for v in values if isinstance(v, float))


def alter_run(bench, dtype, log):
    model, tok = load_model("tiny-llama", dtype=dtype)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    am, _ = unlearn_alter(
        model,
        tok,
        bench.forget,
        bench.retain,
        train_cfg=AlterTrainConfig(
            max_steps=12, stage1_max_steps=2, lr_B=5e-3, checkpoint_every=None
        ),
        log_path=log,
        progress=False,
    )
    return am, tok, base


def test_alter_on_a_bf16_base_trains_fp32_adapters_like_a_fp32_base(bench, tmp_path):
    ref, tok, _ = alter_run(bench, torch.float32, tmp_path / "fp32.jsonl")
    am, _, base = alter_run(bench, torch.bfloat16, tmp_path / "bf16.jsonl")
    # The base: still bf16, bit for bit the weights loaded.
    for name, p in am.model.named_parameters():
        if "alter_" not in name:
            key = name.replace(".base_layer.", ".")
            assert p.dtype == torch.bfloat16 and torch.equal(p, base[key]), name
    adapter = am.adapter_tensors()
    assert adapter and {v.dtype for v in adapter.values()} == {torch.float32}
    assert finite_losses(tmp_path / "bf16.jsonl")
    # A trains at lr 1e-5: its updates are far below bf16's resolution. Measured: max relative
    # difference to the fp32-base run 5.2e-5; with bf16 adapters (tried) 1.6e-3.
    want = ref.adapter_tensors()
    for k, v in adapter.items():
        if "alter_A" in k:
            assert (v - want[k]).norm() <= 2e-4 * want[k].norm(), k
    # The trained model's NLL (12 Stage II steps move it by ~0.27 here). Measured: forget 1.1e-3,
    # retain 6.5e-4 from the fp32-base run's.
    for rows in (bench.forget, bench.retain):
        assert abs(nll(am, tok, rows) - nll(ref, tok, rows)) < 5e-3


def lora_run(bench, dtype):
    model, tok = load_model("tiny-llama", dtype=dtype)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = METHODS["lora"](METHODS["lora"].Config())
    summary = run_method(
        m,
        model,
        tok,
        bench.forget,
        bench.retain,
        UnlearnConfig(max_steps=6, lr=1e-3, checkpoint_every=None),
        progress=False,
    )
    return m.result(), tok, base, summary


def test_lora_on_a_bf16_base_trains_fp32_adapters_like_a_fp32_base(bench):
    ref, tok, _, _ = lora_run(bench, torch.float32)
    model, _, base, summary = lora_run(bench, torch.bfloat16)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    for name, p in model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert p.dtype == torch.bfloat16
            assert torch.equal(p, base[name.replace(".base_layer.", ".")]), name
    assert all(math.isfinite(v) for v in summary["last"].values())
    # 6 steps move the NLL by ~0.13 here. Measured: forget 4.6e-5, retain 1.0e-4 from the
    # fp32-base run's. (bf16 LoRA weights are refused by the loop: see the test below.)
    for rows in (bench.forget, bench.retain):
        assert abs(nll(model, tok, rows) - nll(ref, tok, rows)) < 1e-3


@pytest.mark.parametrize("name", ["ga", "npo", "rmu"])
def test_full_parameter_methods_refuse_a_bf16_model(bench, name):
    """Through the Python API (the CLI refuses before loading: tests/test_cli_methods.py)."""
    model, tok = load_model("tiny-llama", dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="bfloat16, and updates smaller"):
        run_method(
            METHODS[name](METHODS[name].Config()),
            model,
            tok,
            bench.forget,
            bench.retain,
            UnlearnConfig(max_steps=1, checkpoint_every=None),
            progress=False,
        )
