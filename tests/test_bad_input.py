"""The bad-input matrix of `alter unlearn` / `alter generate`: one clear line, exit 1, nothing written."""

from __future__ import annotations

import json

import pytest
from tests.test_cli_pipeline import run, synth_dir, unlearn_argv  # noqa: F401


def _write(path, text):
    path.write_text(text)
    return path


def _strip_subdomains(d):
    """The synthetic forget rows without their subdomain field (so k-means picks the experts)."""
    from alter.data.synthetic import SyntheticConfig, make_synthetic

    cfg = SyntheticConfig(  # the same benchmark as the synth_dir fixture
        entities_per_subdomain=4,
        forget_entities_per_subdomain=1,
        holdout_entities_per_subdomain=1,
        facts_per_entity=2,
    )
    rows = make_synthetic(cfg).forget
    lines = [json.dumps({"question": r["question"], "answer": r["answer"]}) for r in rows]
    return _write(d / "f.jsonl", "\n".join(lines) + "\n")


CASES = {
    "malformed JSON": (
        lambda d: {"forget": _write(d / "f.json", '[{"question": "q", "answer": ')},
        [],
        "malformed JSON",
    ),
    "missing field": (
        lambda d: {"forget": _write(d / "f.jsonl", json.dumps({"question": "q"}) + "\n")},
        [],
        "row 1, field 'answer': missing",
    ),
    "empty forget set": (
        lambda d: {"forget": _write(d / "f.jsonl", "")},
        [],
        "file is empty",
    ),
    "unreadable file": (
        lambda d: {"forget": d / "nope.jsonl"},
        [],
        "no such file",
    ),
    "target modules match nothing (alter)": (
        lambda d: {},
        ["--set", "target_modules=nothing_here"],
        "matches no linear layer",
    ),
    "target modules match nothing (lora)": (
        lambda d: {},
        ["--method", "lora", "--set", "target_modules=nothing_here"],
        "matches no linear layer",
    ),
    "more experts than forget rows": (
        lambda d: {"forget": _strip_subdomains(d)},
        ["--set", "n_subdomains=999"],
        "more than the",
    ),
    "unknown method": (lambda d: {}, ["--method", "sgd"], "unknown method 'sgd'"),
    "unknown option": (lambda d: {}, ["--set", "lr_Z=1"], "unknown option(s)"),
    "bad option value": (lambda d: {}, ["--method", "ga", "--lr", "-1"], "lr must be > 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unlearn_bad_input_is_one_clear_line(case, tmp_path, synth_dir, capsys):  # noqa: F811
    make, extra, message = CASES[case]
    files = make(tmp_path)
    argv = unlearn_argv(synth_dir, tmp_path / "out", *extra)
    for key in ("forget", "retain"):
        if key in files:
            argv[argv.index(f"--{key}") + 1] = str(files[key])
    code, _, err = run(argv, capsys)
    assert code == 1, err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())


def test_over_long_rows_are_truncated_with_a_warning(tmp_path, synth_dir, capsys):  # noqa: F811
    argv = unlearn_argv(
        synth_dir, tmp_path / "out", "--method", "ga", "--max-steps", "1", "--set", "max_length=12"
    )
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert "warning:" in err and "truncated" in err


def test_corrupted_adapter_and_other_base_are_clear_errors(tmp_path, synth_dir, capsys):  # noqa: F811
    out = tmp_path / "run"
    code, _, err = run(
        unlearn_argv(synth_dir, out, "--method", "asymlora", "--max-steps", "1"), capsys
    )
    assert code == 0, err
    gen = ["generate", "--model", "tiny-gpt2", "--adapter", str(out), "-p", "q"]
    code, _, err = run(gen, capsys)
    assert code == 1 and err.startswith("error: ") and "architecture" in err
    (out / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    gen = ["generate", "--model", "tiny-llama", "--adapter", str(out), "-p", "q"]
    code, _, err = run(gen, capsys)
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def test_tokenizer_without_pad_token_gets_one():
    from alter.models import _prepare, load_model

    model, tok = load_model("tiny-gpt2")
    tok.pad_token = None
    model.config.pad_token_id = None
    model, tok = _prepare(model, tok)
    assert tok.pad_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize(
    "exc", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate")]
)
def test_out_of_memory_gives_advice_not_a_traceback(exc, tmp_path, synth_dir, capsys, monkeypatch):  # noqa: F811
    import alter.pipeline

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(alter.pipeline, "unlearn_and_save", boom)
    code, _, err = run(unlearn_argv(synth_dir, tmp_path / "out"), capsys)
    assert code == 1 and err.startswith("error: out of memory") and "--batch-size" in err


def test_other_exceptions_are_not_swallowed(tmp_path, synth_dir, capsys, monkeypatch):  # noqa: F811
    import alter.pipeline

    def boom(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(alter.pipeline, "unlearn_and_save", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        run(unlearn_argv(synth_dir, tmp_path / "out"), capsys)
