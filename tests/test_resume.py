"""Interrupted runs resume from their last checkpoint and end exactly like uninterrupted ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from alter.data.synthetic import SyntheticConfig, make_synthetic
from alter.methods import METHODS
from alter.methods.loop import UnlearnConfig, run_method
from alter.models import load_model
from alter.runs import RunDirError, atomic_dir, partial_dir

SMALL = SyntheticConfig(
    entities_per_subdomain=4,
    forget_entities_per_subdomain=1,
    holdout_entities_per_subdomain=1,
    facts_per_entity=2,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(SMALL).write(out)
    return out


class Boom(Exception):
    pass


@pytest.mark.parametrize("name", ["npo", "lora", "asymlora"])
def test_run_method_resumes_to_the_uninterrupted_result(name, tmp_path):
    bench = make_synthetic(SMALL)
    cfg = UnlearnConfig(epochs=10, max_steps=6, lr=1e-3, checkpoint_every=2)

    def run(resume_dir, fail_at=None):
        resume_dir.parent.mkdir(parents=True, exist_ok=True)
        model, tok = load_model("tiny-llama")
        method = METHODS[name]()
        if fail_at is not None:
            loss, calls = method.loss, []

            def failing(f, r):
                calls.append(1)
                if len(calls) == fail_at:
                    raise Boom
                return loss(f, r)

            method.loss = failing
        summary = run_method(
            method,
            model,
            tok,
            bench.forget,
            bench.retain,
            cfg,
            log_path=resume_dir.parent / "metrics.jsonl",
            resume_dir=resume_dir,
            progress=False,
        )
        return [p.detach().clone() for p in method.trainable()], summary

    straight, _ = run(tmp_path / "a" / "resume")
    with pytest.raises(Boom):
        run(tmp_path / "b" / "resume", fail_at=6)  # steps 1-5 done, checkpoint at step 4
    resumed, summary = run(tmp_path / "b" / "resume")
    assert summary["resumed_from_step"] == 4
    assert all(torch.equal(x, y) for x, y in zip(straight, resumed, strict=True))
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint are not logged twice


def test_partial_dir_kept_only_with_resumable_state(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Boom), atomic_dir(out) as tmp:
        (tmp / "x").write_text("half")
        raise Boom
    assert not partial_dir(out).exists() and not out.exists()
    with pytest.raises(Boom), atomic_dir(out) as tmp:
        (tmp / "resume").mkdir()
        raise Boom
    assert partial_dir(out).is_dir() and not out.exists()
    with (
        pytest.raises(RunDirError, match="pass --resume to continue it or --overwrite"),
        atomic_dir(out),
    ):
        pass
    with atomic_dir(out, resume=True) as tmp:
        assert tmp == partial_dir(out)
    assert (out / "run_complete.json").is_file() and not (out / "resume").exists()
    with pytest.raises(RunDirError, match="already finished"), atomic_dir(out, resume=True):
        pass
    with (
        pytest.raises(RunDirError, match="no interrupted run"),
        atomic_dir(tmp_path / "new", resume=True),
    ):
        pass


def _cli(*args):
    code = "import sys; from alter.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "ALTER_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-c", code, *args], env


def _unlearn_args(synth, out, *extra):
    return (
        "unlearn",
        "--model",
        "tiny-llama",
        "--forget",
        str(synth / "forget.jsonl"),
        "--retain",
        str(synth / "retain.jsonl"),
        "--out",
        str(out),
        *extra,
    )


@pytest.mark.parametrize(
    "method, extra, weights",
    [
        ("alter", ("--set", "stage1_max_steps=3"), "adapter_model.safetensors"),
        # One optimizer group per forget expert: the resumed optimizer state must fit them.
        (
            "alter",
            ("--set", "stage1_max_steps=3", "--set", "expert_lr_total=0.01"),
            "adapter_model.safetensors",
        ),
        ("gd", (), "model.safetensors"),
    ],
)
def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path, synth, method, extra, weights):
    common = (
        "--method",
        method,
        "--epochs",
        "1000",
        "--max-steps",
        "120",
        "--lr",
        "1e-4",
        "--set",
        "checkpoint_every=10",
        *extra,
    )
    cmd, env = _cli(*_unlearn_args(synth, tmp_path / "straight", *common))
    subprocess.run(cmd, env=env, check=True, capture_output=True)

    out = tmp_path / "killed"
    cmd, env = _cli(*_unlearn_args(synth, out, *common))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = partial_dir(out) / "resume" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial_dir(out).is_dir()  # an interrupted run never looks finished

    # Rerunning without --resume refuses to clobber the interrupted run.
    cmd, env = _cli(*_unlearn_args(synth, out, *common))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "pass --resume" in res.stderr

    cmd, env = _cli(*_unlearn_args(synth, out, *common, "--resume"))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a = load_file(str(tmp_path / "straight" / weights))
    b = load_file(str(out / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((out / "summary.json").read_text())
    if method == "alter":
        assert summary["resumed_from"]["stage"] == 2 and summary["resumed_from"]["step"] >= 20
    else:
        assert summary["resumed_from_step"] >= 20


def test_resume_refuses_other_options(tmp_path, synth):
    from alter.pipeline import unlearn_and_save

    out = tmp_path / "r"
    partial_dir(out).mkdir(parents=True)
    (partial_dir(out) / "resolved_config.json").write_text(
        json.dumps({"method": "ga", "model": "tiny-llama", "train": {"seed": 1}})
    )
    with pytest.raises(RunDirError, match="cannot resume .* other options"):
        unlearn_and_save(
            "tiny-llama",
            str(synth / "forget.jsonl"),
            str(synth / "retain.jsonl"),
            out=out,
            method="ga",
            resume=True,
            progress=False,
        )


def test_finetune_resumes_to_the_uninterrupted_result(tmp_path):
    from alter.train import FinetuneConfig, finetune

    rows = make_synthetic(SMALL).train_rows()
    cfg = FinetuneConfig(epochs=3, lr=1e-3, checkpoint_every=3)

    def run(resume_dir, fail_at=None):
        resume_dir.parent.mkdir(parents=True, exist_ok=True)
        model, tok = load_model("tiny-llama")
        if fail_at is not None:
            calls = []
            forward = model.forward

            def failing(*a, **k):
                calls.append(1)
                if len(calls) == fail_at:
                    raise Boom
                return forward(*a, **k)

            model.forward = failing
        model = finetune(
            model,
            tok,
            rows,
            cfg,
            log_path=resume_dir.parent / "m.jsonl",
            resume_dir=resume_dir,
            progress=False,
        )
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    straight = run(tmp_path / "a" / "resume")
    with pytest.raises(Boom):
        run(tmp_path / "b" / "resume", fail_at=8)  # checkpoints at steps 3 and 6
    resumed = run(tmp_path / "b" / "resume")
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "m.jsonl").open()]
    assert steps == sorted(set(steps)) and steps[-1] == len(steps)
