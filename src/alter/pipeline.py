"""Multi-step workflows behind the CLI: fine-tune and save, unlearn and save, the end-to-end demo.

``finetune_and_save`` and ``unlearn_and_save`` also run under ``accelerate launch`` (see
:mod:`alter.distributed`): every process trains its share, only rank 0 writes the run directory,
the others wait at barriers. ``run_demo`` is single-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from alter import __version__
from alter.distributed import Runtime, launch_runtime, runtime_for, sharded_eval
from alter.evals.qa import as_dicts, qa_metrics, summarise
from alter.memory import PeakRSS
from alter.models import alter_home, check_base_dtype, load_model
from alter.runs import RESUME_DIR, is_complete, partial_dir, run_dir, write_json
from alter.train import FinetuneConfig, finetune, save_model


def _place(model, rt: Runtime):
    """The model on the process's device (a no-op for a plain CPU run)."""
    if next(model.parameters()).device != rt.device:
        model.to(rt.device)
    return model


def finetune_and_save(
    model_name: str,
    rows,
    cfg: FinetuneConfig,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Load ``model_name``, fine-tune on ``rows``, save to ``out`` atomically; return a summary.

    With ``evaluate`` the answer NLL on the training rows is measured before and after (teacher
    forcing only: cheap, and it is what fine-tuning optimises). ``resume`` continues an
    interrupted run from its last checkpoint (see :func:`alter.train.finetune`).
    """
    training = "finetune" if cfg.mode == "full" else "finetune --mode lora"
    dtype = check_base_dtype(cfg.base_dtype, training)  # refuses bfloat16, before any loading
    rt = launch_runtime(cfg.mixed_precision)
    rt = runtime_for(rt, training)
    progress = progress and rt.is_main
    model, tok, loading = rt.load_model(model_name, training, dtype=dtype, seed=cfg.seed)
    if not rt.loads_into_shards(training):  # loaded into shards: filled on the device
        _place(model, rt)
    result: dict = {
        "model": model_name,
        "data": rows.source,
        "rows": len(rows),
        "config": asdict(cfg),
        "processes": rt.world,
        **rt.sharding,
        **loading,
    }

    def evaluate_before(placed) -> None:
        # Run by finetune once the model is placed (under FSDP: sharded, and then every process
        # evaluates every row, as for eval_after), before training or a resumed checkpoint.
        t = time.perf_counter()
        with sharded_eval(rt) if rt.fsdp is None else contextlib.nullcontext():
            result["eval_before"] = summarise(
                qa_metrics(placed, tok, rows, generate=False, progress=progress)
            )
        result["eval_before_seconds"] = time.perf_counter() - t

    meta = {"command": "finetune", "alter": __version__}
    with run_dir(out, rt, overwrite=overwrite, resume=resume, meta=meta) as tmp:
        rt.barrier()  # rank 0 has made the partial directory
        t0 = time.perf_counter()
        model = finetune(
            model,
            tok,
            rows,
            cfg,
            log_path=tmp / "metrics.jsonl",
            resume_dir=tmp / RESUME_DIR,
            progress=progress,
            runtime=rt,
            before_training=evaluate_before if evaluate else None,
        )
        result["train_seconds"] = time.perf_counter() - t0 - result.get("eval_before_seconds", 0)
        if evaluate:
            # An FSDP (or ZeRO-3) model runs the same forwards on every process (each gathers
            # the weights block by block), so there every process evaluates every row.
            with sharded_eval(rt) if not rt.shards_parameters else contextlib.nullcontext():
                result["eval_after"] = summarise(
                    qa_metrics(model, tok, rows, generate=False, progress=progress)
                )
        with rt.full_state_dict(model):  # FSDP: gathered on rank 0 (every process enters)
            if rt.is_main:
                save_model(
                    model,
                    tok,
                    tmp,
                    config=cfg,
                    extra={"base_model": model_name, "data": rows.source},
                )
                write_json(tmp / "finetune_summary.json", result)
    rt.barrier()  # the others return once rank 0 has put the run in place
    return result


DEMO_ALTER_EPOCHS = 10.0


# Options that do not change the fine-tuned model, and options added after targets were first
# cached: both stay out of the cache key (the latter at their defaults), so old keys still hold.
_KEY_EXCLUDED = ("checkpoint_every", "gradient_checkpointing")
_KEY_DEFAULTS = {"grad_accum": 1, "mixed_precision": None, "base_dtype": "float32"}


def _result_fields(ft_cfg: FinetuneConfig) -> dict:
    """The fine-tuning options in the cache key."""
    return {
        k: v
        for k, v in asdict(ft_cfg).items()
        if k not in _KEY_EXCLUDED and _KEY_DEFAULTS.get(k, object()) != v
    }


def _target_key(model: str, synth_cfg, ft_cfg: FinetuneConfig) -> str:
    blob = json.dumps(
        {
            "model": model,
            "synth": asdict(synth_cfg),
            "ft": _result_fields(ft_cfg),
            "alter": __version__,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def synthetic_target(model: str, bench, synth_cfg, ft_cfg: FinetuneConfig, *, echo=print, step=""):
    """The target model fine-tuned on the built-in benchmark's forget + retain rows, cached under
    ``$ALTER_HOME/targets/<hash>`` (keyed by the model, the data and the fine-tuning config)."""
    target_dir = (
        alter_home() / "targets" / f"{Path(model).name}-{_target_key(model, synth_cfg, ft_cfg)}"
    )
    if is_complete(target_dir):
        echo(f"{step} target model: cached at {target_dir}".strip())
        return target_dir
    train_rows = bench.train_rows()
    echo(
        f"{step} fine-tuning the target model on forget + retain ({len(train_rows)} rows) ...".strip()
    )
    t0 = time.perf_counter()
    # An interrupted fine-tuning (the demo was stopped) continues from its last checkpoint.
    resume = (partial_dir(target_dir) / RESUME_DIR).is_dir()
    finetune_and_save(
        model, train_rows, ft_cfg, target_dir, overwrite=not resume, resume=resume, evaluate=False
    )
    echo(f"      done in {time.perf_counter() - t0:.0f} s -> {target_dir}")
    return target_dir


def run_demo(
    *,
    model: str = "smollm2-135m",
    out: Path = Path("runs/demo"),
    epochs: float = 5.0,
    lr: float = 5e-5,
    max_steps: int | None = None,
    unlearn_steps: int | None = None,
    seed: int = 0,
    echo=print,
) -> dict:
    """Built-in benchmark -> fine-tuned target (cached) -> ALTER unlearning -> before/after table.

    The target model is cached under ``$ALTER_HOME/targets/<hash>``, keyed by the model, the data
    and the fine-tuning config; the ALTER run is kept in ``OUT/alter`` and reused when complete.
    """
    from alter.adapters.io import load_adapter
    from alter.data.synthetic import SyntheticConfig, make_synthetic

    synth_cfg = SyntheticConfig(seed=seed)
    bench = make_synthetic(synth_cfg)
    out.mkdir(parents=True, exist_ok=True)
    bench.write(out / "data", overwrite=True)
    echo(
        f"[1/4] built-in benchmark: forget {len(bench.forget)} rows, retain {len(bench.retain)} rows, "
        f"holdout {len(bench.holdout)} rows -> {out / 'data'}"
    )
    ft_cfg = FinetuneConfig(epochs=epochs, lr=lr, max_steps=max_steps, seed=seed)
    target_dir = synthetic_target(model, bench, synth_cfg, ft_cfg, echo=echo, step="[2/4]")

    run_dir = out / "alter"
    # The built-in forget set is 16 rows: the spec's 3 epochs are only 12 Stage II steps, too few
    # for lr_B = 1e-3 (docs/RESULTS.md). 10 epochs = 40 steps.
    overrides = {
        "seed": seed,
        "epochs": DEMO_ALTER_EPOCHS,
        **({"max_steps": unlearn_steps} if unlearn_steps else {}),
    }
    previous = run_dir / "resolved_config.json"
    same = False
    if is_complete(run_dir):
        prev = json.loads(previous.read_text())
        same = prev.get("model") == str(target_dir) and all(
            prev["train"].get(k) == v for k, v in overrides.items()
        )
    t1 = time.perf_counter()
    if same:
        echo(f"[3/4] ALTER unlearning: reusing the finished run in {run_dir}")
        target, tok = load_model(str(target_dir))
        unlearned = load_adapter(load_model(str(target_dir))[0], run_dir)
    else:
        echo("[3/4] ALTER unlearning of the forget set (Stage I + Stage II) ...")
        unlearned, tok = unlearn_and_save(
            str(target_dir),
            bench.forget,
            bench.retain,
            out=run_dir,
            overrides=overrides,
            overwrite=True,
        )
        echo(f"      done in {time.perf_counter() - t1:.0f} s -> {run_dir}")
        target, _ = load_model(str(target_dir))

    echo(
        "[4/4] evaluating the target and the unlearned model (answer prob, ROUGE-L, fact recall) ..."
    )
    results: dict = {
        "model": model,
        "target": str(target_dir),
        "alter_run": str(run_dir),
        "sets": {},
    }
    for label, m in (("target", target), ("alter", unlearned)):
        for split, rs in (
            ("forget", bench.forget),
            ("retain", bench.retain),
            ("holdout", bench.holdout),
        ):
            per_row = qa_metrics(m, tok, rs, max_new_tokens=32, progress=True)
            results["sets"].setdefault(split, {})[label] = summarise(per_row)
            write_json(out / f"eval_{label}_{split}.json", as_dicts(per_row))
    write_json(out / "demo_summary.json", results)
    echo("")
    echo(format_table(results))
    echo("")
    echo(learned_verdict(results))
    echo(unlearned_verdict(results))
    return results


def learned_verdict(results: dict) -> str:
    """One sentence, from the numbers, on whether fine-tuning taught the target the facts."""
    sets = results["sets"]
    hold = sets["holdout"]["target"]["prob"]
    gains = {s: sets[s]["target"]["prob"] - hold for s in ("forget", "retain")}
    if all(g > 0.05 for g in gains.values()):
        return (
            f"The target learned the facts: answer prob on forget/retain exceeds the never-seen "
            f"holdout by {gains['forget']:.2f}/{gains['retain']:.2f}."
        )
    return (
        f"Warning: the target barely learned the facts (answer prob gap to holdout: forget "
        f"{gains['forget']:.2f}, retain {gains['retain']:.2f}); try more --epochs or a higher --lr."
    )


def unlearned_verdict(results: dict) -> str:
    """One sentence, from the numbers, on what unlearning did to forget and retain."""
    sets = results["sets"]
    f0, f1 = sets["forget"]["target"]["prob"], sets["forget"]["alter"]["prob"]
    r0, r1 = sets["retain"]["target"]["prob"], sets["retain"]["alter"]["prob"]
    hold = sets["holdout"]["target"]["prob"]
    return (
        f"ALTER moved forget answer prob {f0:.3f} -> {f1:.3f} (never-seen holdout level: {hold:.3f}) "
        f"and retain answer prob {r0:.3f} -> {r1:.3f}."
    )


def format_table(results: dict) -> str:
    """A plain-text before/after table from :func:`run_demo` results."""
    cols = ("prob", "rougeL_recall", "fact_recall")
    head = f"{'set':8s} {'model':7s} " + " ".join(f"{c:>13s}" for c in cols)
    lines = [head, "-" * len(head)]
    for split, by_model in results["sets"].items():
        for label, s in by_model.items():
            vals = " ".join(f"{s.get(c, float('nan')):13.3f}" for c in cols)
            lines.append(f"{split:8s} {label:7s} {vals}")
    return "\n".join(lines)


def _rows(spec):
    from alter.data.schema import RowSet, load_rows

    return spec if isinstance(spec, RowSet) else load_rows(spec)


def unlearn_and_save(
    model_name: str,
    forget,
    retain,
    *,
    out: Path | str | None = None,
    method: str = "alter",
    overrides: dict | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
):
    """Load data and model, run the method, and (with ``out``) write the run directory atomically.

    Until it finishes, the run lives in ``.<name>.partial`` beside ``out`` with resumable state
    (every ``checkpoint_every`` steps); ``resume=True`` continues an interrupted run from its last
    checkpoint, with the same result as an uninterrupted run. Only ``epochs``, ``max_steps``,
    ``lr`` and ``checkpoint_every`` may differ from the interrupted run's options.

    Every run directory holds ``resolved_config.json``, ``metrics.jsonl`` (one line per step) and
    ``summary.json``, plus the method's artefact: ALTER and AsymLoRA adapters, a peft adapter
    (LoRA, ELM) or a full model directory (GA, GD, NPO, NPO_KL, SimNPO, RMU). Returns the
    unlearned model (ready for evaluation) and the tokenizer.
    """
    import tempfile

    from alter.api import resolve_baseline_configs, resolve_configs
    from alter.data.schema import check_forget_retain, warn_all
    from alter.methods import METHODS, check_method
    from alter.runs import check_out_dir

    check_method(method)
    if method == "alter":
        a_cfg, t_cfg = resolve_configs(overrides, method)
        configs = {"adapter": asdict(a_cfg), "train": asdict(t_cfg)}
        train_cfg = t_cfg
    else:
        u_cfg, m_cfg = resolve_baseline_configs(method, overrides)
        configs = {"train": asdict(u_cfg), "method_config": asdict(m_cfg)}
        train_cfg = u_cfg
    # A full-parameter method with bfloat16 weights is refused here, before anything is loaded.
    dtype = check_base_dtype(train_cfg.base_dtype, method)
    if out is not None and not resume:
        check_out_dir(out, overwrite=overwrite)
    if resume and out is None:
        from alter.errors import ConfigError

        raise ConfigError("resume needs the run directory (out) of the interrupted run")
    forget_rows, retain_rows = _rows(forget), _rows(retain)
    warn_all(check_forget_retain(forget_rows, retain_rows))
    rt = launch_runtime(train_cfg.mixed_precision)
    rt = runtime_for(rt, method)
    progress = progress and rt.is_main
    model, tok, loading = rt.load_model(model_name, method, dtype=dtype)
    if not rt.loads_into_shards(method):  # loaded into shards: filled on the device
        _place(model, rt)
    resolved = {
        "method": method,
        "model": model_name,
        "forget": forget_rows.source,
        "retain": retain_rows.source,
        **configs,
        "alter": __version__,
    }
    if resume:
        _check_resumable(partial_dir(out) / "resolved_config.json", resolved)
    if out is not None:
        meta = {"command": "unlearn", "method": method}
        ctx = run_dir(out, rt, overwrite=overwrite, resume=resume, meta=meta)
    else:  # no output asked for: logs go to a scratch directory
        ctx = contextlib.nullcontext(Path(tempfile.mkdtemp(prefix="alter-unlearn-")))
    with ctx as tmp:
        rt.barrier()  # rank 0 has made (or emptied) the partial directory
        if rt.is_main:
            write_json(tmp / "resolved_config.json", resolved)
        resume_dir = tmp / RESUME_DIR if out is not None else None
        if method == "alter":
            result = _run_alter(
                model,
                tok,
                forget_rows,
                retain_rows,
                a_cfg,
                t_cfg,
                tmp,
                progress,
                model_name,
                resume_dir,
                runtime=rt,
                loading=loading,
            )
        else:
            from alter.methods.loop import run_method

            m = METHODS[method](m_cfg)
            with PeakRSS() as mem:
                summary = run_method(
                    m,
                    model,
                    tok,
                    forget_rows,
                    retain_rows,
                    u_cfg,
                    log_path=tmp / "metrics.jsonl",
                    resume_dir=resume_dir,
                    progress=progress,
                    runtime=rt,
                )
            summary.update(loading)
            summary.update(mem.record())
            # FSDP: a full model is gathered on rank 0 (every process enters); an adapter method
            # writes only its adapters, whole on every process, so the sharded base stays put.
            adapter_only = getattr(m, "saves_adapter_only", False)
            with contextlib.nullcontext() if adapter_only else rt.full_state_dict(m.result()):
                if rt.is_main:
                    m.save(tmp, tok)
                    write_json(tmp / "summary.json", summary)
            result = m.result()
    rt.barrier()  # the others return once rank 0 has put the run in place
    return result, tok


RESUMABLE_CHANGES = (
    "epochs",
    "max_steps",
    "lr",
    "lr_B",
    "checkpoint_every",
    "gradient_checkpointing",
)


# Training options added after runs were first written: an interrupted run that predates them
# resumes when they are at their defaults.
_ADDED_DEFAULTS = {
    "grad_accum": 1,
    "mixed_precision": None,
    "prepass_batch_size": 8,
    "base_dtype": "float32",
}


def _check_resumable(previous: Path, resolved: dict) -> None:
    """A run resumes only with the options it started with (a few may change, see above)."""
    from alter.runs import RunDirError

    if not previous.is_file():
        raise RunDirError(f"{previous.parent}: no resumable state (resolved_config.json missing)")
    prev = json.loads(previous.read_text())

    def strip(cfg: dict) -> dict:
        out = {k: v for k, v in cfg.items() if k not in ("train", "alter")}
        out["train"] = {
            k: v
            for k, v in cfg.get("train", {}).items()
            if k not in RESUMABLE_CHANGES and _ADDED_DEFAULTS.get(k, object()) != v
        }
        return out

    a, b = strip(prev), strip(json.loads(json.dumps(resolved, default=str)))
    if a != b:
        diff = sorted(
            k
            for part in ("train", "adapter", "method_config")
            for k in set(a.get(part, {})) | set(b.get(part, {}))
            if a.get(part, {}).get(k) != b.get(part, {}).get(k)
        ) or sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise RunDirError(
            f"cannot resume {previous.parent}: the interrupted run used other options "
            f"({', '.join(diff)}); only {', '.join(RESUMABLE_CHANGES)} may change"
        )


def _run_alter(
    model,
    tok,
    forget_rows,
    retain_rows,
    a_cfg,
    t_cfg,
    tmp: Path,
    progress,
    model_name,
    resume_dir=None,
    *,
    runtime: Runtime | None = None,
    loading: dict | None = None,
):
    from safetensors.torch import save_file

    from alter.adapters.io import save_adapter
    from alter.methods.alter import unlearn_alter

    with PeakRSS() as mem:
        am, summary = unlearn_alter(
            model,
            tok,
            forget_rows,
            retain_rows,
            adapter_cfg=a_cfg,
            train_cfg=t_cfg,
            log_path=tmp / "metrics.jsonl",
            checkpoint_dir=tmp / "checkpoints",
            resume_dir=resume_dir,
            progress=progress,
            runtime=runtime,
        )
    summary.update(mem.record())
    if runtime is not None and not runtime.is_main:
        return am
    save_adapter(am, tmp, extra={"base_model": model_name})
    save_file({"centroids": am.centroids.contiguous()}, str(tmp / "centroids.safetensors"))
    subdomains = {
        "names": summary["subdomains"],
        "source": summary["subdomain_source"],
        "forget_labels": summary["forget_labels"],
    }
    write_json(tmp / "subdomains.json", subdomains)
    write_json(tmp / "summary.json", {**summary, **(loading or {})})
    return am
