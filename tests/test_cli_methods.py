"""`alter unlearn --method NAME` for the baselines, `alter methods`, and the shipped configs."""

import dataclasses
import json
from pathlib import Path

import pytest
from tests.test_cli_pipeline import run, synth_dir, unlearn_argv  # noqa: F401

from alter.cli import _load_yaml
from alter.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "alter" / "configs"


def test_methods_lists_every_method_with_defaults(capsys):
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    for name, cls in METHODS.items():
        assert f"\n{name} " in "\n" + out and cls.description in out
    assert "defaults: lr=1e-05, beta=0.1" in out  # npo


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_ships_a_config_with_its_defaults(name):
    from alter.api import resolve_baseline_configs, resolve_configs

    path = CONFIGS / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith(f"# alter unlearn --method {name} --config")
    values = _load_yaml(path)
    assert values.pop("method") == name
    if name == "alter":
        a, t = resolve_configs(values)
        got = {**dataclasses.asdict(a), **dataclasses.asdict(t)}
        default = {**dataclasses.asdict(type(a)()), **dataclasses.asdict(type(t)())}
    else:
        shared, own = resolve_baseline_configs(name, values)
        got = {**dataclasses.asdict(shared), **dataclasses.asdict(own)}
        default = {**dataclasses.asdict(type(shared)()), **dataclasses.asdict(type(own)())}
        default["lr"] = METHODS[name].default_lr
    assert got == default
    assert set(values) == set(default), "the shipped config lists every option"


def test_no_config_for_an_unregistered_method():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(METHODS)


def test_unlearn_gd_writes_a_model_and_generate_reads_it(tmp_path, synth_dir, capsys):  # noqa: F811
    out = tmp_path / "gd"
    code, stdout, err = run(
        unlearn_argv(synth_dir, out, "--method", "gd", "--max-steps", "2", "--lr", "1e-4"), capsys
    )
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / "summary.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peak_rss_mb"] > 100  # torch and the model are resident
    assert summary["tokens_per_second"] > 0
    code, stdout, err = run(
        ["generate", "--model", str(out), "-p", "Who is Ada?", "--max-new-tokens", "3"], capsys
    )
    assert code == 0, err
    assert stdout.startswith("Q: Who is Ada?")
    code, _, err = run(
        ["generate", "--model", "tiny-llama", "--adapter", str(out), "-p", "x"], capsys
    )
    assert code == 1 and "holds a full unlearned model (gd)" in err


def test_unlearn_lora_with_a_config_file_and_generate_with_its_adapter(tmp_path, synth_dir, capsys):  # noqa: F811
    out = tmp_path / "lora"
    cfg = tmp_path / "lora.yaml"
    cfg.write_text((CONFIGS / "lora.yaml").read_text().replace("loss: 'npo'", "loss: 'ihl'"))
    code, _, err = run(
        unlearn_argv(synth_dir, out, "--config", str(cfg), "--max-steps", "1", "--batch-size", "2"),
        capsys,
    )
    assert code == 0, err
    import json

    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["method"] == "lora" and resolved["method_config"]["loss"] == "ihl"
    assert resolved["train"]["forget_batch_size"] == 2 and resolved["train"]["max_steps"] == 1
    code, stdout, err = run(
        [
            "generate",
            "--model",
            "tiny-llama",
            "--adapter",
            str(out),
            "-p",
            "Who?",
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 0, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "npo", "--set", "lam=0.1"], "unknown option(s) for method 'npo': lam"),
        (["--method", "simnpo", "--set", "beta=-1"], "simnpo: beta must be > 0"),
        (["--method", "sgd"], "unknown method 'sgd'"),
    ],
)
def test_bad_method_options_are_one_line_errors(tmp_path, synth_dir, capsys, extra, message):  # noqa: F811
    code, _, err = run(unlearn_argv(synth_dir, tmp_path / "x", *extra), capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "gd", "--base-dtype", "bfloat16"], "gd trains the model's own weights"),
        (["--method", "npo", "--set", "base_dtype=bfloat16"], "npo trains the model's own"),
        (["--method", "rmu", "--set", "base_dtype=bfloat16"], "rmu trains the model's own"),
        (["--set", "base_dtype=bf16"], "base_dtype must be one of float32, bfloat16, got 'bf16'"),
    ],
)
def test_bf16_base_is_refused_before_loading_for_full_parameter_methods(
    tmp_path,
    synth_dir,  # noqa: F811
    capsys,
    monkeypatch,
    argv,
    message,
):
    def no_loading(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("alter.pipeline.load_model", no_loading)
    code, _, err = run(unlearn_argv(synth_dir, tmp_path / "x", *argv), capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and "mixed_precision=bf16" in err
    assert not any(tmp_path.iterdir())  # nothing written, not even a partial directory


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_finetune_refuses_a_bf16_base(tmp_path, synth_dir, capsys, mode):  # noqa: F811
    argv = ["finetune", "--model", "tiny-llama", "--data", str(synth_dir / "train.jsonl")]
    argv += ["--out", str(tmp_path / "f"), "--mode", mode, "--base-dtype", "bfloat16"]
    code, _, err = run(argv, capsys)
    reason = "merges the LoRA update" if mode == "lora" else "finetune trains the model's own"
    assert code == 1 and reason in err and err.count("\n") == 1
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("5e-3", 0.005),
        ("-2.5E-1", -0.25),
        ("1e3", 1000.0),
        (".5e1", 5.0),
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("upper", "upper"),
        ("e5", "e5"),
        ("1e3x", "1e3x"),
    ],
)
def test_set_values_are_read_as_yaml_with_scientific_numbers(raw, value):
    from alter.api import parse_set_value

    got = parse_set_value(raw)
    assert got == value and type(got) is type(value)


def test_readme_lists_every_alter_option():
    import re

    from alter.adapters.config import AlterConfig
    from alter.distributed import ScaleOptions
    from alter.methods.alter import AlterTrainConfig

    text = " ".join((CONFIGS.parents[2] / "README.md").read_text().split())
    adapter = re.search(r"Adapter keys: `([^`]*)`", text).group(1).split()
    training = re.search(r"training keys: `([^`]*)`", text).group(1).split()
    shared = re.search(r"every method shares, `([^`]*)`", text).group(1).split()
    names = lambda cls: [f.name for f in dataclasses.fields(cls)]  # noqa: E731
    assert adapter == names(AlterConfig)
    scale = names(ScaleOptions)
    assert training == [n for n in names(AlterTrainConfig) if n not in scale]
    assert shared == scale
