"""bench/muse_news_mini.py and bench/sequential.py end to end on the tiny random model.

The numbers of a random model mean nothing; these tests check that each protocol runs as one
command, writes its table and summaries with finite numbers, and that a second run skips every
finished stage (nothing is rewritten).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stamps(out: Path) -> dict[str, int]:
    """Modification times of every finished stage's marker and of the timings."""
    files = [*out.rglob("run_complete.json"), out / "timings.json"]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_muse_selection_traces_every_item_to_trained_text(shared_data):
    muse = _script("muse_news_mini")
    sel = muse.build(shared_data / "muse" / "news", 8, None, 512)
    forget, retain = " ".join(sel["forget_texts"]), " ".join(sel["retain_texts"])
    assert len(sel["verbmem"]) == len(sel["knowmem_forget"]) == 8
    assert len(sel["knowmem_retain"]) == 15  # all that privleak/retain2 holds
    assert all(v["text"].startswith(v["prompt"]) and v["docs"] for v in sel["verbmem"])
    assert all(v["text"] in forget and v["gt"] in v["text"] for v in sel["verbmem"])
    assert all(t in forget for t in sel["privleak"]["forget"])
    assert all(it["answer"] in forget for it in sel["knowmem_forget"])
    assert all(it["answer"] in retain for it in sel["knowmem_retain"])
    trained = sel["forget_texts"] + sel["retain_texts"]
    assert not any(h[:200] in t for h in sel["privleak"]["holdout"] for t in trained)


def test_muse_news_mini_end_to_end_and_resume(tmp_path, shared_data):
    muse = _script("muse_news_mini")
    out = tmp_path / "muse"
    argv = [
        "--model=tiny-llama",
        f"--data={shared_data}",
        "--methods=alter,gd,npo",
        "--forget-items=3",
        "--retain-items=2",
        "--text-chars=48",
        "--ft-epochs=1",
        "--epochs=1",
        "--max-new-tokens=4",
        f"--out={out}",
    ]
    result = muse.main(argv)
    table = (out / "table.md").read_text()
    for tag in ("retain_model", "target", "alter", "gd", "npo"):
        assert f"| {tag} |" in table
        summary = json.loads((out / "evals" / tag / "MUSE_SUMMARY.json").read_text())
        for key in ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE"):
            assert 0.0 <= summary[key] <= 1.0
        assert 0.0 <= summary["mia_min_k"] <= 1.0
        assert _finite(summary["privleak"]) or summary.get("privleak_reason")
        # every model's continuations are scored under one model, the target
        ev = json.loads((out / "evals" / tag / "MUSE_EVAL.json").read_text())
        assert ev["forget_verbmem_fluency_ppl"]["model"] == str(out / "target")
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(result))
    assert result["selection"]["verbmem"] == 3 and result["selection"]["knowmem_retain"] == 2
    assert (out / "data" / "muse" / "news" / "knowmem" / "retain_qa.json").is_file()
    plot = _script("plot_tradeoff")
    points = plot.muse_points(out)[0]
    with_privleak = {t for t, m in result["models"].items() if m.get("privleak") is not None}
    assert set(points) == with_privleak == {"target", "alter", "gd", "npo"}
    assert plot.main(["--muse", str(out), "--out", str(tmp_path / "muse.png")]) == 4
    assert (tmp_path / "muse.png").stat().st_size > 0

    before = _stamps(out)
    muse.main(argv)
    assert _stamps(out) == before
    with pytest.raises(SystemExit, match="other options"):
        muse.main([*argv, "--forget-items=4"])

    # A --set variant runs next to the defaults under METHOD+VARIANT and keeps its options.
    variant = [*(a for a in argv if not a.startswith("--methods")), "--methods=alter"]
    result = muse.main([*variant, "--set=expert_lr_total=0.01", "--variant=x"])
    assert list(result["models"]) == ["retain_model", "target", "alter+x"]
    run = out / "runs" / "alter+x"
    assert (
        json.loads((run / "resolved_config.json").read_text())["train"]["expert_lr_total"] == 0.01
    )
    assert (out / "evals" / "alter+x" / "MUSE_SUMMARY.json").is_file()
    for key, stamp in before.items():  # the references and the default runs are reused
        assert (out / key).stat().st_mtime_ns == stamp or key == "timings.json"
    with pytest.raises(SystemExit, match="variant 'x' was run with"):
        muse.main([*variant, "--set=expert_lr_total=0.02", "--variant=x"])
    with pytest.raises(SystemExit):  # --set without a name
        muse.main([*variant, "--set=expert_lr_total=0.02"])


def test_sequential_end_to_end_resume_and_chained(tmp_path, shared_data):
    seq = _script("sequential")
    out = tmp_path / "seq"
    argv = [
        "--model=tiny-llama",
        f"--data={shared_data}",
        "--methods=alter,gd",
        "--stages=forget05,forget01",  # any order: run from the smallest
        "--rows-per-author=1",
        "--retain-items=4",
        "--utility-items=2",
        "--ft-epochs=1",
        "--epochs=1",
        "--max-new-tokens=4",
        f"--out={out}",
    ]
    result = seq.main(argv)
    rows = {(r["stage"], r["model"]): r for r in result["rows"]}
    assert set(rows) == {
        (s, m) for s in ("forget01", "forget05") for m in ("retain_model", "target", "alter", "gd")
    }
    assert result["stages"]["forget01"]["forget_rows"] == 2
    assert result["stages"]["forget05"]["forget_rows"] == 10
    for (stage, model), r in rows.items():
        summary = json.loads(
            (out / "evals" / _eval_dir(model) / stage / "TOFU_SUMMARY.json").read_text()
        )
        assert _finite(summary["model_utility"])
        if model != "retain_model":
            assert _finite(r["forget_quality"]) and 0.0 <= r["forget_quality"] <= 1.0
    # ALTER: one forget expert per author (the rows' subdomain), not k-means clusters.
    for stage, n_authors in (("forget01", 2), ("forget05", 10)):
        cfg = json.loads(
            (out / "runs" / "independent" / "alter" / stage / "adapter_config.json").read_text()
        )
        assert cfg["subdomains"] == [f"author{a}" for a in range(200 - n_authors, 200)]
    lines = (out / "table.md").read_text().splitlines()
    assert len(lines) == 2 + 8 and lines[2].startswith("| forget01 |")
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(result))

    before = _stamps(out)
    seq.main(argv)
    assert _stamps(out) == before

    with pytest.raises(SystemExit):  # ALTER's adapter cannot be chained
        seq.main([*argv, "--chained"])
    chained = seq.main(
        [*[a for a in argv if not a.startswith("--methods")], "--methods=gd", "--chained"]
    )
    assert [r["model"] for r in chained["rows"] if r["stage"] == "forget05"][-1] == "gd (chained)"
    cfg = json.loads(
        (out / "runs" / "chained" / "gd" / "forget05" / "resolved_config.json").read_text()
    )
    assert Path(cfg["model"]) == out / "runs" / "chained" / "gd" / "forget01"

    # The figure reads every evaluation on disk: both invocations, one panel per stage.
    plot = _script("plot_tradeoff")
    stages = plot.sequential_points(out)
    assert list(stages) == ["forget01", "forget05"]
    assert set(stages["forget05"]) == {"target", "alter", "gd", "chained gd"}
    assert stages["forget05"]["gd"] == (
        rows[("forget05", "gd")]["model_utility"],
        rows[("forget05", "gd")]["forget_quality"],
    )
    assert plot.main(["--sequential", str(out), "--out", str(tmp_path / "seq.png")]) == 8
    for key, stamp in before.items():  # the target, retain model and their evaluations are reused
        if key.startswith(("target", "retain_model", "evals/target", "evals/retain_model")):
            assert (out / key).stat().st_mtime_ns == stamp

    # A --set variant runs next to the defaults under METHOD+VARIANT, and keeps its options.
    base = [a for a in argv if not a.startswith(("--methods", "--stages"))]
    variant = [*base, "--methods=alter", "--stages=forget01", "--variant=fit"]
    result = seq.main([*variant, "--set=router_fit_steps=5"])
    assert [r["model"] for r in result["rows"]] == ["retain_model", "target", "alter+fit"]
    run = out / "runs" / "independent" / "alter+fit" / "forget01"
    assert json.loads((run / "resolved_config.json").read_text())["train"]["router_fit_steps"] == 5
    assert json.loads((run / "summary.json").read_text())["router_fit"]["steps"] == 5
    assert (
        out / "evals" / "independent" / "alter+fit" / "forget01" / "TOFU_SUMMARY.json"
    ).is_file()
    assert json.loads((out / "variants.json").read_text()) == {"fit": {"router_fit_steps": 5}}
    with pytest.raises(SystemExit):  # the same name with other options
        seq.main([*variant, "--set=router_fit_steps=6"])
    with pytest.raises(SystemExit):  # --set without a name
        seq.main([*base, "--methods=alter", "--set=router_fit_steps=5"])


def _eval_dir(model: str) -> str:
    return model if model in ("retain_model", "target") else f"independent/{model}"


def test_method_footprint_runs_each_method_in_its_own_process(tmp_path, shared_data):
    from alter.models import load_model
    from alter.runs import COMPLETE_MARKER

    target = tmp_path / "tofu-mini" / "target"
    model, tok = load_model("tiny-llama")
    model.save_pretrained(target)
    tok.save_pretrained(target)
    (target / COMPLETE_MARKER).write_text("{}")
    fp = _script("method_footprint")
    out = tmp_path / "fp"
    argv = [
        f"--tofu-mini={tmp_path / 'tofu-mini'}",
        f"--data={shared_data}",
        "--methods=ga,alter",
        "--steps=2",
        f"--out={out}",
    ]
    result = fp.main(argv)
    assert list(result["methods"]) == ["ga", "alter"]
    for m, r in result["methods"].items():
        assert r["tokens_per_second"] > 0, m
        assert r["peak_rss_mb"] > 100, m  # torch and the model are resident
        metrics = (out / "runs" / m / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == (4 if m == "alter" else 2)  # ALTER: 2 Stage I + 2 Stage II steps
    assert len((out / "table.md").read_text().splitlines()) == 2 + 2
    markers = sorted(out.rglob(COMPLETE_MARKER))
    before = [p.stat().st_mtime_ns for p in markers]
    assert len(markers) == 2 and fp.main(argv) == result  # finished methods are read, not rerun
    assert [p.stat().st_mtime_ns for p in markers] == before
    with pytest.raises(SystemExit):
        fp.main([*argv[:-1], f"--out={tmp_path / 'fp2'}", "--steps=1"])


@pytest.mark.parametrize("log", [True, False])
def test_tradeoff_scatter_keeps_every_point_in_view(log):
    """Points decades apart (forget quality 3e-7 .. 0.8) and coincident points all lie inside the
    axes' limits, on a log and on a linear axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = _script("plot_tradeoff")
    points = {
        "rmu": (0.375, 2.9e-7),
        "target": (0.375, 2.9e-7),
        "lora": (0.281, 7.3e-7),
        "asymlora": (0.096, 0.82),
        "ga": (0.0, 0.12),
    }
    fig, ax = plt.subplots()
    if log:
        plot.tofu_axes(ax)
    plot.scatter(ax, points, keep_y=[1.5])  # a reference line above every point
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert y1 > 1.5
    for x, y in points.values():
        assert x0 < x < x1 and y0 < y < y1, (x, y, ax.get_xlim(), ax.get_ylim())
    drawn = sorted(tuple(map(float, c.get_offsets()[0])) for c in ax.collections)  # the dots
    expected = sorted(set(points.values()))
    assert [v for xy in drawn for v in xy] == pytest.approx([v for xy in expected for v in xy])
    labels = [t.get_text() for t in ax.texts]
    assert "rmu, target" in labels and len(labels) == 4
    plt.close(fig)


@pytest.mark.parametrize(
    ("benchmark", "splits"), [("tofu", ("forget", "retain")), ("muse", ("forget_verbmem",))]
)
def test_refluency_reproduces_a_perplexity_under_the_same_model(
    tmp_path, shared_data, benchmark, splits
):
    """Re-scoring an evaluation's stored generations under the model they were scored under
    gives its stored fluency perplexities back; under another model they change."""
    from alter.evals.runner import EvalOptions, run_eval
    from alter.models import load_model

    out = tmp_path / "eval"
    run_eval(
        "tiny-gpt2",
        None,
        benchmark,
        shared_data,
        out,
        limit=3,
        options=EvalOptions(max_new_tokens=6, progress=False),
    )
    ev = json.loads((out / f"{benchmark.upper()}_EVAL.json").read_text())
    refl = _script("refluency")
    res = refl.main([str(out), "--model", "tiny-gpt2", "--out", str(tmp_path / "r.json")])[str(out)]
    assert set(res) == set(splits)
    for split in splits:
        assert res[split]["stored_ppl"] == ev[f"{split}_fluency_ppl"]["agg_value"]
        assert res[split]["ppl"] == pytest.approx(res[split]["stored_ppl"], rel=1e-5)
    other = tmp_path / "other"  # the same architecture with other weights
    model, tok = load_model("tiny-gpt2", seed=1)
    model.save_pretrained(other)
    tok.save_pretrained(other)
    res2 = refl.main([str(out), "--model", str(other)])[str(out)]
    assert res2[splits[-1]]["ppl"] != pytest.approx(res[splits[-1]]["ppl"], rel=1e-3)
    assert json.loads((tmp_path / "r.json").read_text())["evals"][str(out)] == res
    with pytest.raises(SystemExit):
        refl.main([str(tmp_path), "--model", "tiny-gpt2"])  # not an evaluation


def test_protocol_check_compares_the_data_root_as_an_absolute_path(tmp_path, monkeypatch):
    """The same data reached by a relative path from another directory is the same protocol;
    another value of any option is not."""
    P = _script("_protocol")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    P.check_protocol(out, {"data": str(tmp_path / "shared" / "data"), "epochs": 5.0})
    monkeypatch.chdir(tmp_path / "a")
    P.check_protocol(out, {"data": "../shared/data", "epochs": 5.0})
    with pytest.raises(SystemExit, match="epochs=5.0"):
        P.check_protocol(out, {"data": "../shared/data", "epochs": 3.0})
    with pytest.raises(SystemExit, match="data="):
        P.check_protocol(out, {"data": "../other", "epochs": 5.0})


def test_sequential_variant_options_read_numbers_as_alter_unlearn_does(tmp_path):
    """`--set lr_B=5e-3` is a number (YAML 1.1 alone reads it as a string), the same variant
    written 0.005 is the same options, and a variants.json from before (the string) still
    matches; another value does not."""
    seq = _script("sequential")
    args = seq.parse_args(["--set=lr_B=5e-3", "--set=layers=upper", "--variant=v"])
    assert args.overrides == {"lr_B": 0.005, "layers": "upper"}
    assert seq.parse_args(["--set=lr_B=0.005", "--variant=v"]).overrides == {"lr_B": 0.005}
    (tmp_path / "variants.json").write_text(json.dumps({"v": {"lr_B": "5e-3"}}))
    P = _script("_protocol")
    P.check_variant(tmp_path, "v", {"lr_B": 0.005})
    with pytest.raises(SystemExit, match="variant 'v' was run with"):
        P.check_variant(tmp_path, "v", {"lr_B": 0.003})
    P.check_variant(tmp_path, "w", {"lr_B": 0.003})
    assert json.loads((tmp_path / "variants.json").read_text())["w"] == {"lr_B": 0.003}


def test_tofu_mini_references_then_an_alter_variant(tmp_path, shared_data):
    """tofu_mini.py with no method builds the references (target, retain model, their
    evaluations); tofu_alter_sweep.py then unlearns and evaluates a variant against them, with
    its answers' fluency under the target."""
    out = tmp_path / "tofu"
    small = [f"--data={shared_data}", "--retain-items=4", "--max-new-tokens=4"]
    _script("tofu_mini").main(
        ["--model=tiny-llama", *small, "--methods=", "--attacks=", "--ft-epochs=1", f"--out={out}"]
    )
    rows = (out / "table.md").read_text().splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["retain_model", "target"]
    assert sorted(p.name for p in (out / "evals").iterdir()) == ["retain_model", "target"]
    assert not (out / "runs").exists()

    sweep = tmp_path / "sweep"
    variant = "authors,expert_lr_total=0.01,stage1_max_steps=1"
    _script("tofu_alter_sweep").main(
        [
            f"--tofu-mini={out}",
            *small,
            "--epochs=1",
            "--generate",
            f"--variants={variant}",
            f"--out={sweep}",
        ]
    )
    name = "authors+expert_lr_total0.01+stage1_max_steps1"
    summary = json.loads((sweep / "runs" / name / "summary.json").read_text())
    assert summary["subdomains"] == ["author198", "author199"]
    # 20 rows per author, batches of 4, one epoch: 5 steps per expert
    assert summary["expert_lr"] == pytest.approx([0.002, 0.002])
    ev = json.loads((sweep / "evals" / name / "TOFU_EVAL.json").read_text())
    assert ev["retain_fluency_ppl"]["model"] == str(out / "target")
    assert f"| {name} |" in (sweep / "sweep.md").read_text()


def test_inference_probe_layouts_name_the_routing_layer():
    """`--layouts upper:5` is adapters from block 5 up with the route read at block 5; a bare
    layout keeps the default routing layer; anything else stops with a message."""
    ip = _script("inference_probe")
    assert ip.parse_layout("upper:5") == ("upper:5", "upper", 5)
    assert ip.parse_layout(" all ") == ("all", "all", None)
    for bad in ("middle", "upper:x", "all:-1", "upper:"):
        with pytest.raises(SystemExit, match="LAYERS"):
            ip.parse_layout(bad)
