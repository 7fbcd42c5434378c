"""EVAL/SUMMARY files on disk and the Markdown report built from them."""

from __future__ import annotations

import json

import pytest

from alter.evals.results import (
    ResultsError,
    bench_tag,
    entry,
    read_eval,
    read_summaries,
    write_results,
)
from alter.report import ReportError, build_report, fmt


def test_entry_layout():
    assert entry(0.5, [1.0, 0.0]) == {"agg_value": 0.5, "value_by_index": {"0": 1.0, "1": 0.0}}
    assert entry(None, reason="why") == {"agg_value": None, "reason": "why"}
    assert bench_tag("tofu") == "TOFU"
    with pytest.raises(ValueError):
        bench_tag("../x")


def test_write_and_read_round_trip(tmp_path):
    ev = {"acc": entry(0.5, [True, False])}
    paths = write_results(tmp_path, "mcq", ev, {"acc": 0.5})
    assert [p.name for p in paths] == ["MCQ_EVAL.json", "MCQ_SUMMARY.json"]
    assert read_summaries(tmp_path) == {"MCQ": {"acc": 0.5}}
    assert read_eval(tmp_path, "mcq")["acc"]["value_by_index"] == {"0": True, "1": False}


def test_read_errors(tmp_path):
    with pytest.raises(ResultsError, match="no such results directory"):
        read_summaries(tmp_path / "missing")
    with pytest.raises(ResultsError, match="no \\*_SUMMARY.json"):
        read_summaries(tmp_path)
    (tmp_path / "X_SUMMARY.json").write_text("{oops")
    with pytest.raises(ResultsError, match="malformed JSON at line 1"):
        read_summaries(tmp_path)
    (tmp_path / "X_SUMMARY.json").write_text("[1]")
    with pytest.raises(ResultsError, match="expected a JSON object"):
        read_summaries(tmp_path)
    with pytest.raises(ResultsError, match="no such file"):
        read_eval(tmp_path, "tofu")


def test_fmt():
    assert fmt(None) == "n/a"
    assert fmt(3) == "3"
    assert fmt(0.123456) == "0.1235"
    assert fmt(0.0) == "0.0000"
    assert fmt(1.8e-21) == "1.800e-21"
    assert fmt(True) == "true"
    assert fmt("a|b") == "a\\|b"


def _run(path, summary, config=None, entropy=None):
    write_results(path, "tofu", {}, summary)
    if config:
        (path / "eval_config.json").write_text(json.dumps(config))
    if entropy:
        (path / "ENTROPY_STABILITY.json").write_text(json.dumps(entropy))
    return path


def test_report_side_by_side(tmp_path):
    a = _run(
        tmp_path / "full",
        {"forget_quality": None, "forget_quality_reason": "no retain reference", "mu": 0.6},
        config={"model": "m", "limit": 5, "eval_seconds": 12.3},
    )
    entropy = {
        "q": 1.0,
        "threshold": 1.2,
        "splits": {"all": {"stability": {"high_stay": 0.9, "low_stay": 0.95, "agreement": 0.93}}},
        "figures": ["entropy_base.png"],
    }
    b = _run(tmp_path / "other" / "full", {"forget_quality": 0.25, "mu": 0.5}, entropy=entropy)
    out = build_report([a, b], tmp_path / "rep" / "report.md")
    text = out.read_text()
    # Same directory names: labels take the parent too.
    assert f"| metric | {tmp_path.name}/full | other/full |" in text
    assert "| `forget_quality` | n/a | 0.2500 |" in text
    assert "| `mu` | 0.6000 | 0.5000 |" in text
    assert "`forget_quality`: no retain reference" in text
    assert "| m | none | TOFU | 5 | 12 s |" in text
    assert "0.9000 | 0.9500" in text and "../other/full/entropy_base.png" in text
    assert (tmp_path / "rep" / "report_figures" / "TOFU.png").stat().st_size > 1000
    assert "![TOFU](report_figures/TOFU.png)" in text


def test_report_refuses_bad_input_and_writes_nothing(tmp_path):
    run = _run(tmp_path / "r", {"mu": 0.5})
    with pytest.raises(ReportError, match="ending in .md"):
        build_report([run], tmp_path / "report.txt")
    with pytest.raises(ReportError, match="no such results directory"):
        build_report([run, tmp_path / "nope"], tmp_path / "report.md")
    with pytest.raises(ReportError, match="at least one"):
        build_report([], tmp_path / "report.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    build_report([run], tmp_path / "report.md", plots=False)
    assert not (tmp_path / "report_figures").exists()
    with pytest.raises(ReportError, match="pass --overwrite"):
        build_report([run], tmp_path / "report.md")
    build_report([run], tmp_path / "report.md", overwrite=True)
