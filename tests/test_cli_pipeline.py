"""End-to-end CLI runs on the tiny model: synth -> finetune -> unlearn -> generate, and the demo."""

import json

import pytest

from alter.cli import main


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # typer's standalone mode ends successful runs with SystemExit(0)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def unlearn_argv(synth_dir, out, *extra, model="tiny-llama", retain="retain.jsonl"):
    return [
        "unlearn",
        "--model",
        str(model),
        "--forget",
        str(synth_dir / "forget.jsonl"),
        "--retain",
        str(synth_dir / retain),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from alter.data.synthetic import SyntheticConfig, make_synthetic

    out = tmp_path_factory.mktemp("synth")
    cfg = SyntheticConfig(
        entities_per_subdomain=4,
        forget_entities_per_subdomain=1,
        holdout_entities_per_subdomain=1,
        facts_per_entity=2,
    )
    make_synthetic(cfg).write(out)
    return out


def test_data_synth_writes_the_benchmark(tmp_path, capsys):
    code, out, err = run(["data", "synth", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    assert {"forget.jsonl", "retain.jsonl", "holdout.jsonl", "train.jsonl", "meta.json"} <= {
        p.name for p in (tmp_path / "s").iterdir()
    }
    assert "forget     16 rows" in out
    code, _, err = run(
        ["data", "synth", "--out", str(tmp_path / "s"), "--entities-per-subdomain", "1"], capsys
    )
    assert code == 1 and err.startswith("error: ")


def test_finetune_then_unlearn_then_generate(tmp_path, synth_dir, capsys):
    target = tmp_path / "target"
    code, out, err = run(
        [
            "finetune",
            "--model",
            "tiny-llama",
            "--data",
            str(synth_dir / "train.jsonl"),
            "--out",
            str(target),
            "--epochs",
            "2",
            "--lr",
            "3e-3",
        ],
        capsys,
    )
    assert code == 0, err
    before, after = (float(x) for x in out.split("answer NLL")[1].split()[:3:2])
    assert after < before
    assert (target / "run_complete.json").is_file() and (target / "model.safetensors").is_file()

    # A finished run is never overwritten silently.
    code, _, err = run(
        [
            "finetune",
            "--model",
            "tiny-llama",
            "--data",
            str(synth_dir / "train.jsonl"),
            "--out",
            str(target),
        ],
        capsys,
    )
    assert code == 1 and "pass --overwrite" in err

    run_dir = tmp_path / "unlearn"
    code, out, err = run(
        unlearn_argv(
            synth_dir,
            str(run_dir),
            "--max-steps",
            "2",
            "--set",
            "stage1_max_steps=2",
            "--set",
            "threshold_mode=adaptive",
            "--set",
            "checkpoint_every=1",
            model=str(target),
        ),
        capsys,
    )
    assert code == 0, err
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "resolved_config.json",
        "subdomains.json",
        "metrics.jsonl",
        "summary.json",
        "run_complete.json",
    } <= names
    assert (run_dir / "centroids.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-1", "step-2"]
    last = run_dir / "checkpoints" / "step-2" / "adapter_model.safetensors"
    assert last.read_bytes() == (run_dir / "adapter_model.safetensors").read_bytes()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["peak_rss_mb"] > 100  # torch and the model are resident
    assert summary["tokens"] > 0 and summary["tokens_per_second"] > 0
    resolved = json.loads((run_dir / "resolved_config.json").read_text())
    assert (
        resolved["train"]["max_steps"] == 2 and resolved["adapter"]["threshold_mode"] == "adaptive"
    )
    subs = json.loads((run_dir / "subdomains.json").read_text())
    assert subs["names"] == ["organisations", "people"] and subs["source"] == "field"
    stages = [
        json.loads(line)["stage"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert stages == [1, 1, 2, 2]

    code, out, err = run(
        [
            "generate",
            "--model",
            str(target),
            "--adapter",
            str(run_dir),
            "-p",
            "Who?",
            "--max-new-tokens",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.startswith("Q: Who?\nA:")
    code, _, err = run(
        ["generate", "--model", "tiny-llama", "--adapter", str(run_dir), "-p", "Who?"], capsys
    )
    assert code == 1 and "different base weights" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "bogus=1"], "unknown option(s) for method 'alter': bogus"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--set", "r=0"], "r must be >= 1"),
        (["--set", "target_modules=nothing$"], "matches no linear layer"),
        (["--set", "novalue"], "--set expects key=value"),
    ],
)
def test_unlearn_bad_options_are_one_line_errors(tmp_path, synth_dir, capsys, extra, message):
    code, _, err = run(
        unlearn_argv(synth_dir, str(tmp_path / "u"), *extra),
        capsys,
    )
    assert code == 1
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "u").exists()  # nothing half-written


def test_unlearn_refuses_identical_forget_and_retain_rows(tmp_path, synth_dir, capsys):
    code, _, err = run(
        unlearn_argv(synth_dir, str(tmp_path / "u"), retain="train.jsonl"),
        capsys,
    )
    assert code == 1 and "cannot be both forgotten and retained" in err


def test_yaml_config_file(tmp_path, synth_dir, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nmax_steps: 1\nstage1_max_steps: 1\nthreshold: 3.0\n")
    code, _, err = run(
        unlearn_argv(synth_dir, str(tmp_path / "u"), "--config", str(cfg)),
        capsys,
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "u" / "adapter_config.json").read_text())
    assert saved["threshold"] == 3.0
    (tmp_path / "bad.yaml").write_text("- a list\n")
    code, _, err = run(
        unlearn_argv(synth_dir, str(tmp_path / "v"), "--config", str(tmp_path / "bad.yaml")),
        capsys,
    )
    assert code == 1 and "expected a mapping" in err


def test_set_values_are_coerced_to_the_option_type(tmp_path, synth_dir, capsys):
    """YAML reads 3e-3 as a string; options are converted to their declared type."""
    code, _, err = run(
        unlearn_argv(
            synth_dir,
            str(tmp_path / "u"),
            "--set",
            "lr_B=3e-3",
            "--set",
            "max_steps=1",
            "--set",
            "stage1_max_steps=1",
            "--set",
            "n_subdomains=null",
        ),
        capsys,
    )
    assert code == 0, err
    resolved = json.loads((tmp_path / "u" / "resolved_config.json").read_text())
    assert resolved["train"]["lr_B"] == 0.003 and resolved["train"]["n_subdomains"] is None
    code, _, err = run(
        unlearn_argv(synth_dir, str(tmp_path / "v"), "--set", "r=eight"),
        capsys,
    )
    assert code == 1 and "r must be a number (int), got 'eight'" in err


def test_demo_runs_end_to_end_and_caches_the_target(tmp_path, capsys):
    argv = [
        "demo",
        "--model",
        "tiny-llama",
        "--out",
        str(tmp_path / "demo"),
        "--max-steps",
        "2",
        "--unlearn-steps",
        "1",
        "--lr",
        "1e-3",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "fine-tuning the target model" in out and "ALTER unlearning of the forget set" in out
    for line in ("forget   target", "forget   alter", "retain   alter", "holdout  alter"):
        assert line in out
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert set(summary["sets"]) == {"forget", "retain", "holdout"}
    assert (tmp_path / "demo" / "alter" / "run_complete.json").is_file()
    code, out, err = run(argv, capsys)  # second run: target cached, ALTER run reused
    assert code == 0, err
    assert "target model: cached" in out and "reusing the finished run" in out


def test_inference_option_routes_with_the_probe(tmp_path, synth_dir, capsys):
    """`--set layers=upper` trains the single-pass layout; `--inference probe` serves it. The
    option is refused without an ALTER adapter and with a bad value, as one error line."""
    import torch

    import alter

    run_dir = tmp_path / "upper"
    short = ["--max-steps", "2", "--set", "stage1_max_steps=2"]
    code, _, err = run(unlearn_argv(synth_dir, run_dir, *short, "--set", "layers=upper"), capsys)
    assert code == 0, err
    am, tok = alter.load("tiny-llama", run_dir, inference="probe")
    assert am.inference == "probe" and am.router.probe_fitted
    ids = tok("Who?", return_tensors="pt")
    with torch.no_grad():  # the probe changes the routing entropy: logits differ from prepass
        probe_logits = am(**ids).logits
        am.set_inference("prepass")
        assert not torch.allclose(probe_logits, am(**ids).logits)
    gen = ["generate", "--model", "tiny-llama", "--adapter", str(run_dir), "-p", "Who?"]
    code, out, err = run([*gen, "--max-new-tokens", "3", "--inference", "probe"], capsys)
    assert code == 0, err
    assert out.startswith("Q: Who?\nA:")

    code, _, err = run([*gen, "--inference", "fast"], capsys)
    assert code == 1 and "error: inference must be" in err and "Traceback" not in err
    code, _, err = run(
        ["generate", "--model", "tiny-llama", "-p", "Q?", "--inference", "probe"], capsys
    )
    assert code == 1 and "needs an ALTER adapter" in err
    lora = tmp_path / "lora"
    code, _, err = run(
        unlearn_argv(synth_dir, lora, "--method", "lora", "--max-steps", "1"), capsys
    )
    assert code == 0, err
    code, _, err = run(
        [
            "generate",
            "--model",
            "tiny-llama",
            "--adapter",
            str(lora),
            "-p",
            "Q?",
            "--inference",
            "probe",
        ],
        capsys,
    )
    assert code == 1 and "applies to ALTER adapters only" in err


def test_alter_on_a_bf16_base_then_eval_and_generate_on_bf16(tmp_path, synth_dir, capsys):
    """--base-dtype bfloat16 through unlearn, eval and generate; the adapter is float32."""
    run_dir = tmp_path / "u"
    quick = ["--max-steps", "1", "--set", "stage1_max_steps=1"]
    code, _, err = run(unlearn_argv(synth_dir, run_dir, "--base-dtype", "bfloat16", *quick), capsys)
    assert code == 0, err
    assert json.loads((run_dir / "resolved_config.json").read_text())["train"]["base_dtype"] == (
        "bfloat16"
    )
    saved = json.loads((run_dir / "adapter_config.json").read_text())
    assert saved["base_dtype"] == "bfloat16"
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    ev = ["eval", "--model", "tiny-llama", "--adapter", str(run_dir), "--benchmark", "synthetic"]
    ev += ["--limit", "2", "--no-generate", "--no-progress", "--base-dtype", "bfloat16"]
    code, _, err = run([*ev, "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "e" / "eval_config.json").read_text())
    assert config["options"]["base_dtype"] == "bfloat16"
    for dtype in ("bfloat16", "float32"):  # the adapter also loads on the float32 original
        argv = ["generate", "--model", "tiny-llama", "--adapter", str(run_dir), "-p", "Who?"]
        code, out, err = run([*argv, "--max-new-tokens", "2", "--base-dtype", dtype], capsys)
        assert code == 0 and out.startswith("Q: Who?"), err
    code, _, err = run([*ev, "--out", str(tmp_path / "x"), "--base-dtype", "float16"], capsys)
    assert code == 1 and "base_dtype must be one of float32, bfloat16" in err
