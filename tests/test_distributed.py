"""Data parallelism on accelerate (alter.distributed): 2 CPU processes over gloo give the result of
one process with the same global batch, with full replicas (DDP-style), with FSDP2 shards and with
DeepSpeed ZeRO-2/3 partitions;
gradient accumulation, gradient checkpointing and mixed precision; the shipped accelerate configs.

Tolerance: the processes sum per-process shares of each mean and all-reduce the gradients, so
the floating-point reduction order differs from one process (and each slice is padded to its own
width). AdamW turns the ~1e-7 relative gradient differences into weight differences of at most a
few percent of one step on near-zero gradient elements; with lr 1e-4 that stays below
``ATOL = 1e-5`` on the tiny model (measured: 1e-7 to 1e-6 for GD and ALTER). The per-step
losses, which do not go through Adam, match to ``LOSS_RTOL``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alter.data.schema import validate_rows
from alter.data.synthetic import SyntheticConfig, make_synthetic
from alter.distributed import LOAD_INTO_SHARDS, FSDPOptions, Runtime, split
from alter.errors import ConfigError
from alter.methods.gd import GD
from alter.pipeline import unlearn_and_save
from alter.runs import partial_dir

ACCELERATE_CONFIGS = (
    Path(__file__).resolve().parents[1] / "src" / "alter" / "configs" / "accelerate"
)
ATOL = 1e-5
LOSS_RTOL = 1e-5
SMALL = SyntheticConfig(
    entities_per_subdomain=4,
    forget_entities_per_subdomain=1,
    holdout_entities_per_subdomain=1,
    facts_per_entity=2,
)
# lr 1e-4 for every group: the stated tolerance scales with the step size.
GD_OPTS = {"epochs": 10, "max_steps": 6, "lr": 1e-4}
# The adaptive (Otsu) threshold gives the random tiny model low-entropy forget tokens, so B_f is
# trained by the IHL term. lam = 0: L_struct = |S_theta - S_base| is compared per step but kept
# out of the weights. Its gradient is sign(S_theta - S_base), and on this model the two Tsallis
# entropies (q = 0.5, |S| ~ 30) agree to a few float32 ulps at some positions (measured: min
# |S_theta - S_base| 7.6e-6 over 172 positions): the last-bit differences of a 2-process Stage I
# flip those signs (B_f's step-1 gradient then differs by 2e-3 relative, A's by 4e-5, B_r's by
# 2e-7) and Adam turns that into lr-size weight differences. Any change of reduction order does
# this to ALTER; it says nothing about the split.
ALTER_OPTS = {
    "epochs": 10,
    "max_steps": 6,
    "stage1_max_steps": 3,
    "lr_B": 1e-4,
    "lr_router": 1e-4,
    "threshold_mode": "adaptive",
    "lam": 0.0,
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(SMALL).write(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The shipped FSDP config, on 2 CPU processes (gloo) in fp32.
FSDP = ("--config_file", str(ACCELERATE_CONFIGS / "fsdp.yaml"), "--num_processes", "2")
FSDP += ("--mixed_precision", "no")


def _launch(
    *args: str, config: tuple[str, ...] = (), script: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``alter.cli`` (or ``script``) with the shipped 2-process CPU config
    (gloo, offline), or with the launch options ``config``."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *(config or ("--config_file", str(ACCELERATE_CONFIGS / "cpu_2proc.yaml"))),
        "--main_process_port",
        str(_free_port()),
        *((str(script),) if script else ("-m", "alter.cli")),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _set(opts: dict) -> list[str]:
    return [x for k, v in opts.items() for x in ("--set", f"{k}={v}")]


def _unlearn_args(synth: Path, out: Path, method: str, opts: dict) -> list[str]:
    return [
        "unlearn",
        "--model",
        "tiny-llama",
        "--forget",
        str(synth / "forget.jsonl"),
        "--retain",
        str(synth / "retain.jsonl"),
        "--out",
        str(out),
        "--method",
        method,
        *_set(opts),
    ]


def _single(synth: Path, out: Path, method: str, opts: dict) -> None:
    unlearn_and_save(
        "tiny-llama",
        str(synth / "forget.jsonl"),
        str(synth / "retain.jsonl"),
        out=out,
        method=method,
        overrides=opts,
        progress=False,
    )


def _assert_same_run(
    a: Path,
    b: Path,
    weights: str,
    *,
    atol: float = ATOL,
    rtol: float = LOSS_RTOL,
    struct_rtol: float = 1e-3,
) -> None:
    wa, wb = load_file(str(a / weights)), load_file(str(b / weights))
    assert wa.keys() == wb.keys()
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    print(f"max |w_1proc - w_2proc| = {diff:.2e} ({weights})")  # shown with pytest -s
    assert diff <= atol, f"max |w_1proc - w_2proc| = {diff:.2e} > {atol}"
    la = [json.loads(line) for line in (a / "metrics.jsonl").open()]
    lb = [json.loads(line) for line in (b / "metrics.jsonl").open()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        # grad_norm (before clipping) tells a sum of the processes' gradients from an average,
        # which Adam's scale invariance would almost hide in the weights.
        for key in ("loss", "retain_nll", "forget_nll", "ihl", "router_ce", "grad_norm"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=rtol, abs=1e-6), (key, ra, rb)
        if "struct" in ra:  # a mean of |differences| some of which are a few ulps (see above)
            assert rb["struct"] == pytest.approx(ra["struct"], rel=struct_rtol), (ra, rb)


@pytest.mark.parametrize(
    "method, opts, weights",
    [
        ("gd", GD_OPTS, "model.safetensors"),
        ("alter", ALTER_OPTS, "adapter_model.safetensors"),
        # grad_accum 2 on 2 processes: the subdomain batches of 2 forget rows become micro-batches
        # of 1 row, so one process runs a weight-0 stand-in on every micro-batch.
        ("alter", {**ALTER_OPTS, "grad_accum": 2}, "adapter_model.safetensors"),
    ],
    ids=["gd", "alter", "alter-grad_accum2"],
)
def test_two_processes_match_one(tmp_path, synth, method, opts, weights):
    _single(synth, tmp_path / "one", method, opts)
    _launch(*_unlearn_args(synth, tmp_path / "two", method, opts))
    _assert_same_run(tmp_path / "one", tmp_path / "two", weights)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert not list(tmp_path.glob(".*.partial"))  # rank 0 renamed the run into place


class Boom(Exception):
    pass


def test_two_processes_resume_a_one_process_checkpoint(tmp_path, synth, monkeypatch):
    """Every process loads the same checkpoint; the step plan is global, so a run interrupted on
    one process continues on two."""
    opts = {**GD_OPTS, "checkpoint_every": 2}
    _single(synth, tmp_path / "straight", "gd", opts)
    calls = []
    loss = GD.loss

    def failing(self, f, r):
        calls.append(1)
        if len(calls) == 5:  # steps 1-4 done, checkpoint at step 4
            raise Boom
        return loss(self, f, r)

    monkeypatch.setattr(GD, "loss", failing)
    with pytest.raises(Boom):
        _single(synth, tmp_path / "resumed", "gd", opts)
    monkeypatch.setattr(GD, "loss", loss)
    assert (partial_dir(tmp_path / "resumed") / "resume" / "step-4").is_dir()
    _launch(*_unlearn_args(synth, tmp_path / "resumed", "gd", opts), "--resume")
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", "model.safetensors")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4


def test_sharded_eval_matches_one_process(tmp_path, synth):
    from alter.evals.runner import EvalOptions, run_eval

    opts = EvalOptions(max_new_tokens=4, fluency=False, progress=False)
    one = run_eval("tiny-llama", None, "synthetic", synth, tmp_path / "one", options=opts)
    _launch(
        "eval",
        "--model",
        "tiny-llama",
        "--benchmark",
        "synthetic",
        "--data",
        str(synth),
        "--out",
        str(tmp_path / "two"),
        "--max-new-tokens",
        "4",
        "--no-fluency",
        "--no-progress",
    )
    two = json.loads((tmp_path / "two" / "SYNTHETIC_SUMMARY.json").read_text())
    for split_name in ("forget", "retain", "holdout"):
        for key in (f"{split_name}_Q_A_Prob", f"{split_name}_avg_loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-5), key
    for key in ("mia_loss", "mia_min_k"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    ev = json.loads((tmp_path / "two" / "SYNTHETIC_EVAL.json").read_text())
    rows = ev["forget_Q_A_ROUGE"]["value_by_index"]
    assert len(rows) == len(make_synthetic(SMALL).forget)  # every row's generation gathered
    assert json.loads((tmp_path / "two" / "eval_config.json").read_text())["processes"] == 2


# -- in one process -------------------------------------------------------------------------------


def test_split_and_parts():
    assert [split(range(5), r, 2) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [split([7], r, 2) for r in range(2)] == [[7], []]
    rt = Runtime(rank=1, world=2)
    # Micro-batches first (global), then one contiguous slice per process.
    parts = rt.parts([0, 1, 2, 3], [10, 11, 12, 13], grad_accum=2)
    assert [(p.forget, p.retain) for p in parts] == [([1], [11]), ([3], [13])]
    # An empty slice becomes a weight-0 stand-in (a row of the step, counted for nothing).
    (part,) = rt.parts([5], [10, 11], grad_accum=1)
    assert (part.forget, part.forget_weight, part.retain, part.retain_weight) == (
        [5],
        0.0,
        [11],
        1.0,
    )
    (part,) = Runtime().parts([0, 1], [], grad_accum=1)  # no retain rows (GA): nothing stands in
    assert (part.forget, part.retain, part.retain_weight) == ([0, 1], [], 1.0)


def _equal_length_rows(n: int, name: str, offset: int):
    # Byte-level tokenizer: answers of one length give every micro-batch the same token count.
    return validate_rows(
        [
            {"question": f"What is item {offset + i}?", "answer": f"code {offset + i:03d}"}
            for i in range(n)
        ],
        name,
        "qa",
    )


def test_grad_accum_is_the_global_mean_when_micro_batches_are_equal(tmp_path):
    """With micro-batches of equal token counts, the mean of the micro-batch means is the mean
    over the step: grad_accum 2 trains like grad_accum 1."""
    forget, retain = _equal_length_rows(4, "forget", 0), _equal_length_rows(8, "retain", 100)
    out = {}
    for k in (1, 2):
        unlearn_and_save(
            "tiny-llama",
            forget,
            retain,
            out=tmp_path / str(k),
            method="gd",
            overrides={**GD_OPTS, "grad_accum": k},
            progress=False,
        )
        out[k] = load_file(str(tmp_path / str(k) / "model.safetensors"))
    diff = max((out[1][n] - out[2][n]).abs().max().item() for n in out[1])
    assert diff <= ATOL
    logs = [[json.loads(x) for x in (tmp_path / str(k) / "metrics.jsonl").open()] for k in (1, 2)]
    for a, b in zip(*logs, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL, abs=1e-6)
        assert b["retain_nll"] == pytest.approx(a["retain_nll"], rel=LOSS_RTOL)


@pytest.mark.parametrize(
    "method, weights, extra",
    [
        ("alter", "adapter_model.safetensors", {"stage1_max_steps": 3}),
        ("lora", "adapter_model.safetensors", {}),
    ],
)
def test_gradient_checkpointing_changes_nothing(tmp_path, method, weights, extra):
    """Recomputation gives the same bytes; for ALTER only because the recomputation reinstalls
    the route of the original forward (without it torch raises a CheckpointError)."""
    bench = make_synthetic(SMALL)
    files = []
    for gc in (False, True):
        out = tmp_path / str(gc)
        unlearn_and_save(
            "tiny-llama",
            bench.forget,
            bench.retain,
            out=out,
            method=method,
            overrides={"max_steps": 4, "gradient_checkpointing": gc, **extra},
            progress=False,
        )
        files.append((out / weights).read_bytes())
    assert files[0] == files[1]


def test_finetune_gradient_checkpointing_and_bf16(tmp_path):
    from alter.models import load_model
    from alter.train import FinetuneConfig, finetune

    rows = make_synthetic(SMALL).train_rows()
    params = {}
    for name, kw in (
        ("plain", {}),
        ("gc", {"gradient_checkpointing": True}),
        ("bf16", {"mixed_precision": "bf16"}),
    ):
        model, tok = load_model("tiny-llama")
        cfg = FinetuneConfig(epochs=1, max_steps=3, lr=1e-3, **kw)
        model = finetune(model, tok, rows, cfg, progress=False)
        params[name] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(params["plain"], params["gc"])
    # bf16 autocast changes the arithmetic, not the training: finite and close.
    assert torch.isfinite(params["bf16"]).all()
    assert (params["bf16"] - params["plain"]).abs().max() < 1e-2


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("grad_accum", 0, "grad_accum must be an integer >= 1"),
        ("grad_accum", 1.5, "grad_accum must be a number"),
        ("gradient_checkpointing", 1, "gradient_checkpointing must be true or false"),
        ("mixed_precision", "fp16", "fp16 needs loss scaling"),
        ("mixed_precision", "bf15", "mixed_precision must be one of no, bf16"),
    ],
)
@pytest.mark.parametrize("method", ["alter", "gd"])
def test_scale_options_are_validated(method, option, value, message):
    from alter.api import resolve_baseline_configs, resolve_configs

    with pytest.raises(ConfigError, match=message):
        if method == "alter":
            resolve_configs({option: value})
        else:
            resolve_baseline_configs(method, {option: value})


def test_batch_too_small_for_the_micro_batches(tmp_path):
    bench = make_synthetic(SMALL)
    with pytest.raises(ConfigError, match="cannot be split into 8 micro-batch"):
        unlearn_and_save(
            "tiny-llama",
            bench.forget,
            bench.retain,
            out=tmp_path / "x",
            method="gd",
            overrides={"max_steps": 1, "grad_accum": 8},
            progress=False,
        )
    assert not (tmp_path / "x").exists()


# -- shipped accelerate configs -------------------------------------------------------------------

EXPECTED = {
    "ddp.yaml": ("MULTI_GPU", {}),
    "cpu_2proc.yaml": ("MULTI_GPU", {}),
    "fsdp.yaml": ("FSDP", {"fsdp_config": ("fsdp_version", "fsdp_auto_wrap_policy")}),
    "deepspeed_zero2.yaml": ("DEEPSPEED", {"deepspeed_config": ("zero_stage",)}),
    "deepspeed_zero3.yaml": ("DEEPSPEED", {"deepspeed_config": ("zero_stage",)}),
}


def test_every_shipped_accelerate_config_is_listed():
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_accelerate_config(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = ACCELERATE_CONFIGS / name
    text = path.read_text()
    assert text.startswith("# accelerate launch --config_file ")  # the command that runs it
    data = yaml.safe_load(text)
    kind, sections = EXPECTED[name]
    assert data["distributed_type"] == kind
    assert data["num_machines"] == 1 and data["num_processes"] >= 2
    assert data["mixed_precision"] in ("no", "bf16")
    assert data["use_cpu"] is False
    for section, keys in sections.items():
        assert all(k in data[section] for k in keys), (section, data[section])
    if name.startswith("deepspeed_zero"):
        assert data["deepspeed_config"]["zero_stage"] == int(name[-6])
    # accelerate itself reads it (unknown keys would fail here)
    ClusterConfig.from_yaml_file(str(path))


def test_deepspeed_config_problems_are_named(monkeypatch):
    """What alter does not read of a DeepSpeed config is refused before anything loads."""
    from alter.distributed import launch_runtime

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json")
    with pytest.raises(
        ConfigError,
        match="zero_stage must be 2 or 3.*deepspeed_config_file is not read.*"
        "offload_optimizer_device must be none.*zero3_init_flag must be false",
    ):
        launch_runtime()


def test_deepspeed_options_must_agree_with_alters():
    from alter.distributed import DeepSpeedOptions
    from alter.ds import engine_config

    cfg = engine_config(DeepSpeedOptions(stage=2, grad_accum=1, clipping=1.0), 2, 4, 1.0)
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["train_batch_size"] == 8
    assert cfg["gradient_allreduce_op"] == "sum"  # ZeRO-2 sums; ZeRO-3 scales the loss instead
    assert "gradient_allreduce_op" not in engine_config(DeepSpeedOptions(stage=3), 2, 1, 1.0)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=2 but alter's grad_accum=1"):
        engine_config(DeepSpeedOptions(grad_accum=2), 2, 1, 1.0)
    with pytest.raises(ConfigError, match="gradient_clipping=0.5 but alter's max_grad_norm=1.0"):
        engine_config(DeepSpeedOptions(clipping=0.5), 2, 1, 1.0)


# -- FSDP ------------------------------------------------------------------------------------------
# The same comparison as above with parameters, gradients and AdamW state sharded by FSDP2: the
# reduce-scatter sums the shares' gradients (measured: max |w_1proc - w_fsdp| 7.8e-7 for GD, the
# DDP-style figure; an averaging reduce-scatter gives 2.7e-5 and grad norms off by 50%, and
# fails). Saved files have the single-process layout: same safetensors header, same config.


def _assert_fsdp_run(one: Path, two: Path, weights: str, summary: str) -> None:
    _assert_same_run(one, two, weights)
    assert json.loads((two / summary).read_text())["sharding"] == "fsdp"  # not a silent DDP
    ha, hb = (one / weights).read_bytes(), (two / weights).read_bytes()
    n = int.from_bytes(ha[:8], "little")
    assert ha[: 8 + n] == hb[: 8 + n]  # same tensors, names, dtypes, shapes, offsets
    assert (one / "config.json").read_text() == (two / "config.json").read_text()


@pytest.mark.parametrize(
    "method, opts",
    [
        ("gd", GD_OPTS),
        ("npo", GD_OPTS),  # its reference pass runs on the shards (loaded into them)
        ("npo_kl", GD_OPTS),
        # RMU steers block 2 of 4 and trains the down projections of blocks 0-2: its forwards
        # run blocks 0-2 only, the other weights are sharded frozen in the same FSDP groups.
        ("rmu", {**GD_OPTS, "layer": 2}),
    ],
    ids=["gd", "npo", "npo_kl", "rmu"],
)
def test_fsdp_matches_one_process(tmp_path, synth, method, opts):
    _single(synth, tmp_path / "one", method, opts)
    _launch(*_unlearn_args(synth, tmp_path / "two", method, opts), config=FSDP)
    _assert_fsdp_run(tmp_path / "one", tmp_path / "two", "model.safetensors", "summary.json")
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    _assert_loaded_into_shards(two, method)
    if method in ("npo_kl", "rmu"):
        # The frozen reference is sharded too: rank 0 holds its half (rows of odd-sized
        # tensors split one more to rank 0), not a full replica.
        held, whole = two["reference_bytes_per_process"], one["reference_bytes_per_process"]
        print(f"reference bytes held by rank 0: {held} of {whole}")
        assert whole / 2 <= held <= 0.51 * whole, (held, whole)


def _assert_loaded_into_shards(summary: dict, method: str) -> None:
    """Under FSDP rank 0 alone reads the weights of these methods: rank 1 held none of them for
    real before its shards were filled (every process loading the whole model: both hold it)."""
    loaded = summary["loaded_weights_bytes_per_process"]
    print(f"weights loaded per process: {loaded}")
    if method in LOAD_INTO_SHARDS:
        assert summary["weights_loaded_by"] == "rank0"
        assert loaded[0] > 0 and loaded[1] == 0, loaded
    else:
        assert loaded[0] == loaded[1] > 0, loaded


FINETUNE_OPTS = {"max_steps": 4, "batch_size": 6, "lr": 1e-4, "grad_accum": 2}


def test_fsdp_finetune_matches_one_process(tmp_path, synth):
    """Full fine-tuning with 2 micro-batches of 3 rows (2 + 1 per process) and gradient
    checkpointing under FSDP (one process: bit-identical without it), then the evaluation of the
    sharded model (every process runs every row, in step)."""
    _finetune_matches_one(synth, tmp_path, FINETUNE_OPTS, FSDP, _assert_fsdp_finetune)


def _assert_fsdp_finetune(one: Path, two: Path) -> None:
    _assert_fsdp_run(one, two, "model.safetensors", "finetune_summary.json")
    # Loaded into the shards (full and --mode lora): the first evaluation runs on them.
    _assert_loaded_into_shards(json.loads((two / "finetune_summary.json").read_text()), "finetune")


def _finetune_matches_one(synth, tmp_path, opts: dict, config, assert_run) -> dict:
    """``finetune`` with ``opts`` and gradient checkpointing: one process, then 2 launched with
    ``config``; ``assert_run(one, two)`` compares the outputs, and the evaluations before / after
    must agree. Returns the one-process summary."""
    from alter.data.schema import load_rows
    from alter.pipeline import finetune_and_save
    from alter.train import FinetuneConfig

    rows = load_rows(str(synth / "train.jsonl"))
    one = finetune_and_save("tiny-llama", rows, FinetuneConfig(**opts), tmp_path / "one")
    args = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    data = str(synth / "train.jsonl")
    _launch(
        "finetune", "--model", "tiny-llama", "--data", data, "--out", str(tmp_path / "two"),
        *args, "--gradient-checkpointing", config=config,
    )  # fmt: skip
    assert_run(tmp_path / "one", tmp_path / "two")
    two = json.loads((tmp_path / "two" / "finetune_summary.json").read_text())
    for when in ("eval_before", "eval_after"):
        assert two[when]["nll"] == pytest.approx(one[when]["nll"], rel=1e-5)
    return one


INTERRUPT = """
import sys
import warnings

from alter.cli import main
from alter.methods.gd import GD

calls, loss = [], GD.loss


def failing(self, f, r):
    calls.append(1)
    if len(calls) == 5:  # steps 1-4 done, checkpoint at step 4
        raise RuntimeError("interrupted")
    return loss(self, f, r)


GD.loss = failing
sys.exit(main())
"""


def test_fsdp_resumes_its_own_checkpoint(tmp_path, synth):
    """An FSDP run gathers its checkpoint to the single-process form, and resumes from it."""
    opts = {**GD_OPTS, "checkpoint_every": 2}
    _single(synth, tmp_path / "straight", "gd", opts)
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT)
    args = _unlearn_args(synth, tmp_path / "resumed", "gd", opts)
    res = _launch(*args, config=FSDP, script=script, check=False)
    assert res.returncode != 0 and "interrupted" in res.stderr
    ckpt = partial_dir(tmp_path / "resumed") / "resume" / "step-4"
    assert sorted(load_file(str(ckpt / "tensors.safetensors"))) == sorted(
        load_file(str(tmp_path / "straight" / "model.safetensors"))
    )  # full tensors, named as in a single-process checkpoint (tied LM head stored once)
    _launch(*args, "--resume", config=FSDP)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", "model.safetensors")
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["resumed_from_step"] == 4


# -- FSDP, adapter methods: the frozen base is sharded before the adapters go in; the adapters stay
# whole on every process and their gradients are all-reduced (FSDP manages no trainable parameter,
# so its divide factor plays no part: breaking that all-reduce is what makes these tests fail,
# measured: skipping it gives 1.2e-3, zero gradients for ALTER's unused experts 4.1e-4).


def _assert_same_adapter_files(one: Path, two: Path) -> None:
    assert json.loads((two / "summary.json").read_text())["sharding"] == "fsdp"
    ha = (one / "adapter_model.safetensors").read_bytes()
    hb = (two / "adapter_model.safetensors").read_bytes()
    n = int.from_bytes(ha[:8], "little")
    assert ha[: 8 + n] == hb[: 8 + n]  # same tensors, names, dtypes, shapes, offsets
    # Same config, base-weights checksum included (gathered from the shards); peft writes
    # target_modules from a set, in an order that differs between any two runs.
    ca, cb = (json.loads((d / "adapter_config.json").read_text()) for d in (one, two))
    for c in (ca, cb):
        if isinstance(c.get("target_modules"), list):
            c["target_modules"] = sorted(c["target_modules"])
    assert ca == cb


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16"])
def test_fsdp_alter_matches_one_process(tmp_path, synth, base_dtype):
    """ALTER with a sharded base (the pre-pass padded to the same number of forwards on every
    process): the adapter, per-step losses and gradient norms of one process; forget experts a
    step does not use keep grad=None (a zero gradient would let AdamW move them). Also with the
    base in bf16 (sharded bf16, float32 adapters)."""
    one, two = tmp_path / "one", tmp_path / "two"
    opts = {**ALTER_OPTS, "base_dtype": base_dtype}
    _single(synth, one, "alter", opts)
    _launch(*_unlearn_args(synth, two, "alter", opts), config=FSDP)
    if base_dtype == "float32":
        _assert_same_run(one, two, "adapter_model.safetensors")
    else:
        # bf16 activations of other batch shapes round differently. Measured: adapters 2.5e-4
        # apart (a fp32 and a bf16 base, one process each: 1.3e-3), losses 2.0e-5 relative,
        # gradient norms 8.9e-4 (an average instead of a sum: 0.5), L_struct 1.3e-2.
        _assert_same_run(
            one, two, "adapter_model.safetensors", atol=5e-4, rtol=5e-3, struct_rtol=5e-2
        )
    _assert_same_adapter_files(one, two)
    _assert_loaded_into_shards(json.loads((two / "summary.json").read_text()), "alter")
    a, b = (load_file(str(d / "centroids.safetensors"))["centroids"] for d in (one, two))
    assert torch.equal(a, b)  # from the gathered pre-pass cache: bit-identical


# Adapter methods write their adapters only, whole on every process: saving must not gather the
# sharded base (a full copy of the model on rank 0). Launched through this script, any whole-model
# gather fails the run (measured: with the gather back in pipeline.py, these tests fail there).
NO_BASE_GATHER = """
import sys
import warnings

import torch.distributed.checkpoint.state_dict as sd

from alter.cli import main


def refused(*args, **kwargs):
    raise AssertionError("the sharded base was gathered to save an adapter")


sd.get_model_state_dict = refused
sys.exit(main())
"""


def _launch_adapter_fsdp(tmp_path: Path, args: list[str]) -> None:
    script = tmp_path / "no_base_gather.py"
    script.write_text(NO_BASE_GATHER)
    _launch(*args, config=FSDP, script=script)


@pytest.mark.parametrize(
    "method, opts",
    [("lora", GD_OPTS), ("asymlora", GD_OPTS)],
    ids=["lora", "asymlora"],
)
def test_fsdp_lora_matches_one_process(tmp_path, synth, method, opts):
    """peft LoRA (its NPO reference pass runs every row on every process) and AsymLoRA (routed
    heads) injected into the sharded base; saved without gathering the base."""
    _single(synth, tmp_path / "one", method, opts)
    _launch_adapter_fsdp(tmp_path, _unlearn_args(synth, tmp_path / "two", method, opts))
    _assert_same_run(tmp_path / "one", tmp_path / "two", "adapter_model.safetensors")
    _assert_same_adapter_files(tmp_path / "one", tmp_path / "two")


def test_fsdp_elm_matches_one_process(tmp_path, synth):
    """ELM's peft LoRA on the sharded base: setup's greedy generation from p* and the four
    adapter-off forwards of every step run on every process alike."""
    opts = {**GD_OPTS, "consistency_tokens": 4}
    _single(synth, tmp_path / "one", "elm", opts)
    _launch_adapter_fsdp(tmp_path, _unlearn_args(synth, tmp_path / "two", "elm", opts))
    _assert_same_run(tmp_path / "one", tmp_path / "two", "adapter_model.safetensors")
    _assert_same_adapter_files(tmp_path / "one", tmp_path / "two")
    for key in ("erase_ce", "retain_kl", "consistency_nll"):
        la, lb = (
            [json.loads(line)[key] for line in (d / "metrics.jsonl").open()]
            for d in (tmp_path / "one", tmp_path / "two")
        )
        assert lb == pytest.approx(la, rel=LOSS_RTOL, abs=1e-6), key


def test_fsdp_finetune_lora_matches_one_process(tmp_path, synth):
    """``finetune --mode lora``: the base sharded, the adapters whole (their gradients summed),
    then merged into the shards; 2 micro-batches and gradient checkpointing, as for full
    fine-tuning above."""
    opts = {"mode": "lora", **FINETUNE_OPTS}
    one = _finetune_matches_one(synth, tmp_path, opts, FSDP, _assert_fsdp_finetune)
    assert one["eval_after"]["nll"] != one["eval_before"]["nll"]  # the merge changed the model


INTERRUPT_ALTER = """
import sys
import warnings

import alter.methods.alter as alter_method
from alter.cli import main

calls, terms = [], alter_method._stage_two_terms


def failing(*args, **kwargs):
    calls.append(1)
    if len(calls) == 5:  # Stage II steps 1-4 done, checkpoint at step 4
        raise RuntimeError("interrupted")
    return terms(*args, **kwargs)


alter_method._stage_two_terms = failing
sys.exit(main())
"""


def test_fsdp_alter_resumes_its_own_checkpoint(tmp_path, synth):
    opts = {**ALTER_OPTS, "checkpoint_every": 2}
    _single(synth, tmp_path / "straight", "alter", opts)
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_ALTER)
    args = _unlearn_args(synth, tmp_path / "resumed", "alter", opts)
    res = _launch(*args, config=FSDP, script=script, check=False)
    assert res.returncode != 0 and "interrupted" in res.stderr
    assert (partial_dir(tmp_path / "resumed") / "resume" / "step-4").is_dir()
    _launch(*args, "--resume", config=FSDP)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", "adapter_model.safetensors")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["resumed_from"] == {"stage": 2, "step": 4}


def test_fsdp_covers_every_training():
    from alter.distributed import check_fsdp
    from alter.methods import METHODS

    rt = Runtime(fsdp=FSDPOptions())
    for what in (*METHODS, "alter", "finetune", "finetune --mode lora"):
        check_fsdp(rt, what)  # no ConfigError


def test_fsdp_config_problems_are_named(monkeypatch):
    from alter.distributed import launch_runtime

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with pytest.raises(ConfigError, match="fsdp_version must be 2.*cpu_ram_efficient_loading"):
        launch_runtime()


# -- DeepSpeed ZeRO-2 / ZeRO-3 (alter.ds) ---------------------------------------------------------
# The full-parameter trainings under a DeepSpeed engine (torch AdamW as the client optimizer, on
# ZeRO's flat partitions), 2 CPU processes over gloo against one process. Gradients are summed:
# ZeRO-2 with DeepSpeed's gradient_allreduce_op "sum", ZeRO-3 with each backward on 2 x the share
# (ZeRO-3 always averages). Measured: max |w_1proc - w_zero| 7.8e-7 (ZeRO-2, GD), 1.0e-6 (ZeRO-3,
# GD); averaging instead (tried: ZeRO-2 with "mean", ZeRO-3 without the factor) halves the logged
# gradient norms and moves the weights 2.7e-5 away: these tests fail then.

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (make setup installs it: see docs/SCALING.md)",
)


def _zero(stage: int) -> tuple[str, ...]:
    path = ACCELERATE_CONFIGS / f"deepspeed_zero{stage}.yaml"
    return ("--config_file", str(path), "--num_processes", "2", "--mixed_precision", "no")


def _assert_zero_run(one: Path, two: Path, summary: str, stage: int) -> None:
    _assert_same_run(one, two, "model.safetensors")
    assert json.loads((two / summary).read_text())["sharding"] == f"deepspeed_zero{stage}"
    ha, hb = (one / "model.safetensors").read_bytes(), (two / "model.safetensors").read_bytes()
    n = int.from_bytes(ha[:8], "little")
    assert ha[: 8 + n] == hb[: 8 + n]  # same tensors, names, dtypes, shapes, offsets
    assert (one / "config.json").read_text() == (two / "config.json").read_text()


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_matches_one_process(tmp_path, synth, stage):
    _single(synth, tmp_path / "one", "gd", GD_OPTS)
    _launch(*_unlearn_args(synth, tmp_path / "two", "gd", GD_OPTS), config=_zero(stage))
    _assert_zero_run(tmp_path / "one", tmp_path / "two", "summary.json", stage)


@needs_deepspeed
def test_deepspeed_finetune_matches_one_process(tmp_path, synth):
    """ZeRO-3 fine-tuning with DeepSpeed's gradient accumulation (alter's grad_accum 2), gradient
    checkpointing, the warm-up/decay schedule on the client AdamW, and the evaluation of the
    partitioned model (every process runs every row)."""

    def assert_run(one: Path, two: Path) -> None:
        _assert_zero_run(one, two, "finetune_summary.json", 3)

    _finetune_matches_one(synth, tmp_path, FINETUNE_OPTS, _zero(3), assert_run)
    la = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").open()]
    lb = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").open()]
    assert [r["lr"] for r in la] == [r["lr"] for r in lb]


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_resumes_its_own_checkpoint(tmp_path, synth, stage):
    """A ZeRO run writes its checkpoint in the single-process form (full tensors, AdamW state
    keyed by parameter index) and resumes from it; so does a single process."""
    opts = {**GD_OPTS, "checkpoint_every": 2}
    _single(synth, tmp_path / "straight", "gd", opts)
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT)
    args = _unlearn_args(synth, tmp_path / "resumed", "gd", opts)
    res = _launch(*args, config=_zero(stage), script=script, check=False)
    assert res.returncode != 0 and "interrupted" in res.stderr
    ckpt = partial_dir(tmp_path / "resumed") / "resume" / "step-4"
    weights = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert sorted(load_file(str(ckpt / "tensors.safetensors"))) == sorted(weights)
    opt = torch.load(ckpt / "optimizer-main.pt", weights_only=True)
    assert sorted(opt["state"]) == list(range(len(weights)))
    assert [len(g["params"]) for g in opt["param_groups"]] == [len(weights)]
    # The same checkpoint resumed by one process (the single-process form), then under ZeRO.
    shutil.copytree(partial_dir(tmp_path / "resumed"), partial_dir(tmp_path / "one"))
    unlearn_and_save(
        "tiny-llama",
        str(synth / "forget.jsonl"),
        str(synth / "retain.jsonl"),
        out=tmp_path / "one",
        method="gd",
        overrides=opts,
        progress=False,
        resume=True,
    )
    _assert_same_run(tmp_path / "straight", tmp_path / "one", "model.safetensors")
    _launch(*args, "--resume", config=_zero(stage))
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", "model.safetensors")
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["resumed_from_step"] == 4


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_maps_what_the_engine_does_not_train(stage):
    """Under a DeepSpeed config the engine trains the full-parameter methods; the adapter methods
    and RMU run on the FSDP path (ZeRO-3: the frozen base sharded) or on replicas (ZeRO-2), named
    in a warning on rank 0 and in the summary's fields."""
    from alter.distributed import DEEPSPEED_METHODS, DeepSpeedOptions, runtime_for
    from alter.methods import METHODS

    ds = DeepSpeedOptions(stage=stage)
    for what in (*METHODS, "finetune", "finetune --mode lora"):
        rt = Runtime(deepspeed=ds)
        if what in DEEPSPEED_METHODS:
            assert runtime_for(rt, what) is rt
            assert rt.sharding == {"sharding": f"deepspeed_zero{stage}"}
            continue
        with pytest.warns(UserWarning, match=f"DeepSpeed ZeRO-{stage} config.*{what} trains"):
            mapped = runtime_for(rt, what)
        assert mapped.deepspeed is None
        assert mapped.fsdp == (FSDPOptions() if stage == 3 else None)
        expected = {"sharding": "fsdp"} if stage == 3 else {}
        assert mapped.sharding == {**expected, "launch_config": f"deepspeed_zero{stage}"}
        assert runtime_for(mapped, what) is mapped  # once mapped, stays
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only rank 0 says it
        runtime_for(Runtime(rank=1, world=2, deepspeed=ds), "alter")


@needs_deepspeed
def test_deepspeed_zero3_alter_matches_one_process(tmp_path, synth):
    """`alter unlearn --method alter` launched with deepspeed_zero3.yaml: the FSDP path (base loaded
    into its shards by rank 0), the adapter of one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    _single(synth, one, "alter", ALTER_OPTS)
    res = _launch(*_unlearn_args(synth, two, "alter", ALTER_OPTS), config=_zero(3))
    assert res.stderr.count("DeepSpeed ZeRO-3 config: the engine trains") == 1  # rank 0 only
    _assert_same_run(one, two, "adapter_model.safetensors")
    _assert_same_adapter_files(one, two)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["launch_config"] == "deepspeed_zero3"
    _assert_loaded_into_shards(summary, "alter")


@needs_deepspeed
def test_deepspeed_zero2_lora_matches_one_process(tmp_path, synth):
    """peft LoRA launched with deepspeed_zero2.yaml: replicas with summed gradients."""
    one, two = tmp_path / "one", tmp_path / "two"
    _single(synth, one, "lora", GD_OPTS)
    res = _launch(*_unlearn_args(synth, two, "lora", GD_OPTS), config=_zero(2))
    assert res.stderr.count("DeepSpeed ZeRO-2 config: the engine trains") == 1
    _assert_same_run(one, two, "adapter_model.safetensors")
    summary = json.loads((two / "summary.json").read_text())
    assert summary["launch_config"] == "deepspeed_zero2" and "sharding" not in summary
