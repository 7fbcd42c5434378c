"""The ``alter`` command line.

Every user mistake (bad data, unknown model, unusable output directory, invalid option) is printed
as one ``error: ...`` line with exit code 1; nothing is written in that case.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from alter import __version__
from alter.api import parse_set
from alter.errors import AlterError, ConfigError

app = typer.Typer(
    name="alter",
    help="Unlearning for large language models: ALTER, baselines, benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Check and generate forget / retain / holdout data.", no_args_is_help=True
)
app.add_typer(data_app, name="data")

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="alias (see `alter models`), local HF directory, or hub id"),
]
BaseDtypeOpt = Annotated[
    str,
    typer.Option(
        help="float32 | bfloat16: dtype of the model's weights (half the memory in bf16); "
        "adapters stay float32"
    ),
]


def _version(value: bool):
    if value:
        typer.echo(f"alter {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
):
    """alter: make a model forget chosen knowledge and keep everything else."""


def _config(cls, **kw):
    """Build a config dataclass, turning its validation errors into one-line user errors."""
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


@app.command("models")
def models_cmd():
    """List the built-in model aliases and whether each is ready to use offline."""
    from alter.models import alter_home, model_status

    typer.echo(f"cache: {alter_home()}  (set ALTER_HOME to move it)")
    for m in model_status():
        typer.echo(f"\n{m['name']}\n  {m['description']}\n  status: {m['status']}")


@data_app.command("validate")
def data_validate(
    file: Annotated[str, typer.Argument(help="a .json/.jsonl/.csv file, or a hub dataset id")],
    retain: Annotated[
        str | None, typer.Option(help="also check this retain set against FILE as a forget set")
    ] = None,
    config: Annotated[str | None, typer.Option(help="hub dataset config name")] = None,
    split: Annotated[str, typer.Option(help="hub dataset split")] = "train",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
):
    """Check a data file against the schema and print its counts (exit 1 on bad input)."""
    from alter.data.schema import check_forget_retain, duplicate_warnings, load_rows, warn_all

    rows = load_rows(file, config=config, split=split)
    summary = {"forget" if retain else "data": rows.summary()}
    if retain:
        ret = load_rows(retain, config=config, split=split)
        summary["retain"] = ret.summary()
        warn_all(check_forget_retain(rows, ret))
    else:
        warn_all(duplicate_warnings(rows))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for role, s in summary.items():
        extra = "".join(
            f", {k.removeprefix('with_')}: {v}" for k, v in s.items() if k.startswith("with_")
        )
        typer.echo(f"ok  {role}: {s['source']}: {s['rows']} {s['kind']} rows{extra}")
        for name, n in s.get("subdomains", {}).items():
            typer.echo(f"      subdomain {name}: {n}")


@data_app.command("synth")
def data_synth(
    out: Annotated[
        Path, typer.Option(help="directory to write forget/retain/holdout/train .jsonl")
    ],
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    entities_per_subdomain: Annotated[int, typer.Option(help="entities in each subdomain")] = 8,
    facts_per_entity: Annotated[int, typer.Option(help="QA facts per entity")] = 4,
    forget_entities_per_subdomain: Annotated[
        int, typer.Option(help="entities to forget in each forget subdomain")
    ] = 2,
    overwrite: Annotated[bool, typer.Option(help="replace an existing synth directory")] = False,
):
    """Write the built-in fictitious-knowledge benchmark (forget / retain / holdout)."""
    from alter.data.synthetic import SyntheticConfig, make_synthetic

    cfg = _config(
        SyntheticConfig,
        seed=seed,
        entities_per_subdomain=entities_per_subdomain,
        facts_per_entity=facts_per_entity,
        forget_entities_per_subdomain=forget_entities_per_subdomain,
    )
    bench = make_synthetic(cfg)
    try:
        paths = bench.write(out, overwrite=overwrite)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name, rs in (
        ("forget", bench.forget),
        ("retain", bench.retain),
        ("holdout", bench.holdout),
    ):
        subs = ", ".join(f"{k} {v}" for k, v in rs.summary().get("subdomains", {}).items())
        typer.echo(f"{name:8s} {len(rs):4d} rows  ({subs})  -> {paths[name]}")
    typer.echo(
        f"train    {len(bench.train_rows()):4d} rows  (forget + retain: fine-tune the target on this) -> {paths['train']}"
    )


@app.command("finetune")
def finetune_cmd(
    data: Annotated[str, typer.Option(help="training rows (.json/.jsonl/.csv or hub id)")],
    out: Annotated[Path, typer.Option(help="output model directory")],
    model: ModelOpt = "smollm2-135m",
    mode: Annotated[
        str, typer.Option(help="full | lora (LoRA on all linear layers, merged)")
    ] = "full",
    epochs: Annotated[float, typer.Option(help="passes over the data")] = 4.0,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="rows per step")] = 8,
    max_steps: Annotated[int | None, typer.Option(help="stop after N steps")] = None,
    max_length: Annotated[int, typer.Option(help="max tokens per row")] = 256,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="answer NLL before and after")
    ] = True,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="save resumable state every N steps")
    ] = 50,
    grad_accum: Annotated[
        int, typer.Option(help="micro-batches per step (less memory, same step)")
    ] = 1,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="recompute activations in backward (less memory)")
    ] = False,
    mixed_precision: Annotated[
        str | None,
        typer.Option(help="no | bf16 (autocast, for GPUs); default: the accelerate launch setting"),
    ] = None,
    base_dtype: Annotated[
        str,
        typer.Option(
            help="dtype the weights are loaded in: float32 only (fine-tuning changes the "
            "weights; for bf16 compute use --mixed-precision bf16)"
        ),
    ] = "float32",
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
    resume: Annotated[
        bool, typer.Option(help="continue an interrupted run in OUT from its last checkpoint")
    ] = False,
):
    """Teach a model a set of facts (how you make the target model to unlearn from).

    Runs data-parallel under `accelerate launch ... -m alter.cli finetune ...` (docs/SCALING.md).
    """
    from alter.data.schema import duplicate_warnings, load_rows, warn_all
    from alter.train import FinetuneConfig

    cfg = _config(
        FinetuneConfig,
        mode=mode,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_steps=max_steps,
        max_length=max_length,
        seed=seed,
        checkpoint_every=checkpoint_every,
        grad_accum=grad_accum,
        gradient_checkpointing=gradient_checkpointing,
        mixed_precision=mixed_precision,
        base_dtype=base_dtype,
    )
    from alter.runs import check_out_dir

    if not resume:
        check_out_dir(out, overwrite=overwrite)
    rows = load_rows(data)
    warn_all(duplicate_warnings(rows))
    from alter.pipeline import finetune_and_save

    result = finetune_and_save(
        model, rows, cfg, out, overwrite=overwrite, resume=resume, evaluate=evaluate
    )
    from alter.distributed import is_main_process

    if not is_main_process():
        return
    if evaluate:
        b, a = result["eval_before"], result["eval_after"]
        typer.echo(
            f"answer NLL  {b['nll']:.3f} -> {a['nll']:.3f}   answer prob  {b['prob']:.3f} -> {a['prob']:.3f}"
        )
    typer.echo(f"saved {out}  ({result['train_seconds']:.0f} s training)")


def _load_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return data


@app.command("unlearn")
def unlearn_cmd(
    forget: Annotated[str, typer.Option(help="rows to forget (.json/.jsonl/.csv or hub id)")],
    retain: Annotated[str, typer.Option(help="rows to keep")],
    out: Annotated[Path, typer.Option(help="run directory (config, adapter, subdomains, logs)")],
    model: ModelOpt = "smollm2-135m",
    method: Annotated[str, typer.Option(help="unlearning method (see `alter methods`)")] = "alter",
    config: Annotated[Path | None, typer.Option(help="YAML file of option: value")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="passes over the forget set (ALTER: Stage II)")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="cap the unlearning steps")] = None,
    lr: Annotated[
        float | None, typer.Option(help="learning rate (ALTER: lr_B, the experts' rate)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="forget rows and retain rows per step")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="seed")] = None,
    base_dtype: Annotated[
        str | None,
        typer.Option(
            help="float32 (default) | bfloat16: dtype of the frozen base weights; bfloat16 for "
            "alter, lora, asymlora, elm only (adapters stay float32); = --set base_dtype=..."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="override any option, e.g. --set lr_B=5e-4 --set threshold_mode=adaptive"
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    resume: Annotated[
        bool, typer.Option(help="continue an interrupted run in OUT from its last checkpoint")
    ] = False,
):
    """Make MODEL forget the FORGET rows and keep the RETAIN rows; writes the run to OUT.

    Runs data-parallel under `accelerate launch ... -m alter.cli unlearn ...`; grad_accum,
    gradient_checkpointing, mixed_precision and base_dtype are --set options (docs/SCALING.md).
    """
    from alter.pipeline import unlearn_and_save

    overrides = {**(_load_yaml(config) if config else {}), **parse_set(set_ or [])}
    method = overrides.pop("method", method)
    shared = {
        "epochs": epochs,
        "max_steps": max_steps,
        "lr_B" if method == "alter" else "lr": lr,
        "forget_batch_size": batch_size,
        "retain_batch_size": batch_size,
        "seed": seed,
        "base_dtype": base_dtype,
    }
    overrides.update({k: v for k, v in shared.items() if v is not None})
    unlearn_and_save(
        model,
        forget,
        retain,
        out=out,
        method=method,
        overrides=overrides,
        overwrite=overwrite,
        resume=resume,
    )
    from alter.distributed import is_main_process

    if is_main_process():
        typer.echo(f"saved {out}")


@app.command("methods")
def methods_cmd():
    """List the unlearning methods, their defaults and options."""
    from alter.methods import describe_methods

    typer.echo(describe_methods())


InferenceOpt = Annotated[
    str | None,
    typer.Option(
        help="how an ALTER adapter routes: prepass (base pre-pass, exact) or probe (entropy "
        "probe; single pass if trained with layers=upper); default: as saved"
    ),
]


@app.command("generate")
def generate_cmd(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="question(s) to answer")],
    model: ModelOpt = "smollm2-135m",
    adapter: Annotated[
        Path | None,
        typer.Option(help="an unlearning run with an adapter (ALTER, AsymLoRA, LoRA, ELM)"),
    ] = None,
    allow_other_base: Annotated[
        bool, typer.Option(help="load the adapter even if MODEL's weights differ from its base")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 64,
    inference: InferenceOpt = None,
    base_dtype: BaseDtypeOpt = "float32",
):
    """Answer questions greedily (with an adapter: the unlearned model), same prompt format as training."""
    from alter.api import load
    from alter.evals.qa import generate_answers

    m, tok = load(
        model,
        adapter,
        allow_other_base=allow_other_base,
        inference=inference,
        base_dtype=base_dtype,
    )
    for q, a in zip(
        prompt, generate_answers(m, tok, prompt, max_new_tokens=max_new_tokens), strict=True
    ):
        typer.echo(f"Q: {q}\nA: {a}\n")


@app.command("demo")
def demo_cmd(
    model: ModelOpt = "smollm2-135m",
    out: Annotated[Path, typer.Option(help="where the demo writes its data and results")] = Path(
        "runs/demo"
    ),
    epochs: Annotated[float, typer.Option(help="fine-tuning epochs for the target model")] = 5.0,
    lr: Annotated[float, typer.Option(help="fine-tuning learning rate")] = 5e-5,
    max_steps: Annotated[
        int | None, typer.Option(help="cap fine-tuning steps (quick look)")
    ] = None,
    unlearn_steps: Annotated[
        int | None, typer.Option(help="cap ALTER Stage II steps (quick look)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed for data and training")] = 0,
):
    """End to end on the built-in benchmark: target model, ALTER unlearning, before/after table."""
    from alter.pipeline import run_demo

    run_demo(
        model=model,
        out=out,
        epochs=epochs,
        lr=lr,
        max_steps=max_steps,
        unlearn_steps=unlearn_steps,
        seed=seed,
    )


@app.command("attack")
def attack_cmd(
    forget: Annotated[str, typer.Option(help="the forgotten rows (QA)")],
    out: Annotated[Path, typer.Option(help="output directory (ATTACKS.json)")],
    model: ModelOpt = "smollm2-135m",
    adapter: Annotated[
        Path | None, typer.Option(help="an unlearning run with an adapter (see `generate`)")
    ] = None,
    retain: Annotated[
        str | None, typer.Option(help="retain rows: is the model still useful after the attack?")
    ] = None,
    attacks: Annotated[
        str, typer.Option(help="comma-separated: none,relearn,paraphrase,prefix,int8,int4")
    ] = "none,relearn,paraphrase,prefix,int8,int4",
    relearn_steps: Annotated[
        int, typer.Option(help="fine-tuning steps of the relearning attack")
    ] = 6,
    relearn_lr: Annotated[
        float, typer.Option(help="learning rate of the relearning attack")
    ] = 2e-5,
    allow_other_base: Annotated[
        bool, typer.Option(help="load the adapter even if MODEL's weights differ from its base")
    ] = False,
    inference: InferenceOpt = None,
    base_dtype: BaseDtypeOpt = "float32",
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
):
    """Try to bring forgotten knowledge back (relearning, paraphrases, prefixes, quantisation)."""
    from alter.api import load
    from alter.attacks import check_attacks, recovery, run_attacks
    from alter.data.schema import load_rows
    from alter.runs import atomic_dir, check_out_dir, write_json

    names = check_attacks([a.strip() for a in attacks.split(",") if a.strip()])
    check_out_dir(out, overwrite=overwrite)
    forget_rows = load_rows(forget)
    retain_rows = load_rows(retain) if retain else None
    kw = {"allow_other_base": allow_other_base, "inference": inference, "base_dtype": base_dtype}
    load(model, adapter, **kw)  # fail on a bad model/adapter now
    results = run_attacks(
        lambda: load(model, adapter, **kw),
        forget_rows,
        retain_rows,
        names,
        relearn_steps=relearn_steps,
        relearn_lr=relearn_lr,
    )
    rec = recovery(results)
    with atomic_dir(out, overwrite=overwrite, meta={"command": "attack"}) as tmp:
        write_json(
            tmp / "ATTACKS.json",
            {
                "model": model,
                "adapter": str(adapter) if adapter else None,
                "inference": inference,
                "base_dtype": base_dtype,
                "results": results,
                "forget_prob_change": rec,
            },
        )
    for name, res in results.items():
        f = res["forget"]
        extra = f"  (change {rec[name]:+.3f})" if name in rec else ""
        typer.echo(
            f"{name:10s} forget prob {f['prob']:.3f}  fact recall {f.get('fact_recall', float('nan')):.3f}{extra}"
        )
    typer.echo(f"saved {out / 'ATTACKS.json'}")


from alter.cli_eval import register as _register_eval  # noqa: E402

_register_eval(app)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 1.

    typer runs in standalone mode, so a normal run and usage errors (exit 2) end in ``SystemExit``
    with the right code; only our own user errors are turned into a return value here.
    """
    warnings.showwarning = _show_warning
    try:
        app(args=argv)
    except AlterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not _is_out_of_memory(e):
            raise
        print(f"error: out of memory ({type(e).__name__}). {OOM_ADVICE}", file=sys.stderr)
        return 1
    return 0


OOM_ADVICE = (
    "Try fewer rows per step (--batch-size 2 or 1), shorter rows (--set max_length=128), a "
    "smaller model, or a machine with more memory; runs with checkpoints continue with --resume."
)


def _is_out_of_memory(e: BaseException) -> bool:
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())
    )


if __name__ == "__main__":
    sys.exit(main())
