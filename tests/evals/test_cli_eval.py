"""`alter eval` / `alter report`: results and printed summary, or one `error:` line and exit 1."""

from __future__ import annotations

import pytest

from alter.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    """Call the CLI in-process; typer ends successful runs with SystemExit(0)."""
    try:
        code = main(list(map(str, args)))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _eval(out, *extra, benchmark="tofu"):
    return ("eval", "--model", "tiny-llama", "--benchmark", benchmark, "--out", out, *extra)


def test_eval_then_report(shared_data, tmp_path, capsys):
    fast = ("--limit", 2, "--max-new-tokens", 4, "--no-progress", "--data", shared_data)
    code, out, err = run(capsys, *_eval(tmp_path / "a", *fast))
    assert code == 0, err
    assert "forget_quality" in out and "no retain reference: forget quality not computed" in out
    assert "None" not in out
    assert (tmp_path / "a" / "TOFU_SUMMARY.json").is_file()
    code, out, err = run(capsys, *_eval(tmp_path / "b", "--no-generate", *fast))
    assert code == 0, err
    code, out, err = run(
        capsys, "report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "r.md"
    )
    assert code == 0, err
    text = (tmp_path / "r.md").read_text()
    assert "| metric | a | b |" in text
    assert (tmp_path / "r_figures" / "TOFU.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--benchmark", "nope"), "error: unknown benchmark 'nope'"),
        (("--data", "/no/such/dir"), "error: /no/such/dir: no such data directory"),
        (("--reference", "/no/ref.json"), "error: /no/ref.json: no such reference file"),
        (("--limit", "0"), "error: --limit must be >= 1"),
        (("--forget-split", "forget02"), "error: unknown TOFU forget split 'forget02'"),
        (("--inference", "fast"), "error: inference must be prepass or probe"),
        (("--inference", "probe"), "error: inference=probe needs an ALTER adapter"),
    ],
)
def test_eval_errors_are_one_line(shared_data, tmp_path, capsys, extra, message):
    args = ["eval", "-m", "tiny-llama", "--out", tmp_path / "o", "--data", shared_data]
    if "--benchmark" not in extra:
        args += ["--benchmark", "tofu"]
    code, out, err = run(capsys, *args, *extra)
    assert code == 1
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_eval_bad_reference_and_existing_out(shared_data, tmp_path, capsys):
    bad = tmp_path / "ref.json"
    bad.write_text("{not json")
    data = ("--data", shared_data)
    code, _, err = run(capsys, *_eval(tmp_path / "o", "--reference", bad, *data))
    assert code == 1 and err.startswith(f"error: {bad}: reference is not valid JSON")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    code, _, err = run(capsys, *_eval(tmp_path / "o", *data))
    assert code == 1 and "pass --overwrite" in err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep.txt"]


def test_report_errors(tmp_path, capsys):
    code, _, err = run(capsys, "report", tmp_path / "nope", "--out", tmp_path / "r.md")
    assert code == 1 and err.startswith("error: ") and "no such results directory" in err
    assert not (tmp_path / "r.md").exists()
