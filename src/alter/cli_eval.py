"""The ``alter eval`` and ``alter report`` commands (registered on the main app by :func:`register`).

Errors follow :mod:`alter.cli`: user mistakes raise :class:`~alter.errors.AlterError` subclasses,
which ``alter.cli.main`` prints as one ``error: ...`` line with exit code 1; nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alter.errors import ConfigError

# Defined here (not imported from alter.cli) so this module imports on its own.
ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="alias (see `alter models`), local HF directory, or hub id"),
]


def _options(**kw):
    from alter.evals.runner import EvalOptions

    try:
        return EvalOptions(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _show(summary: dict) -> None:
    """``metric: value`` lines; a missing value prints its reason, never ``None``."""
    from alter.report import fmt

    width = max((len(k) for k in summary if not k.endswith("_reason")), default=0)
    for key, value in summary.items():
        if key.endswith("_reason"):
            continue
        text = fmt(value)
        if value is None:
            text = summary.get(f"{key}_reason") or "not computed"
        typer.echo(f"{key:{width}s}  {text}")


def eval_cmd(
    benchmark: Annotated[
        str, typer.Option("--benchmark", "-b", help="tofu | muse | mcq | synthetic")
    ],
    out: Annotated[Path, typer.Option(help="output directory (<BENCH>_EVAL/SUMMARY.json, ...)")],
    model: ModelOpt = "smollm2-135m",
    adapter: Annotated[
        Path | None, typer.Option(help="adapter directory to load on MODEL (the unlearned model)")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="data root (holding tofu/, muse/news/, mmlu/, wmdp/) or the "
            "benchmark's folder; default $ALTER_DATA_DIR"
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="retain reference: TOFU_EVAL.json or a TOFU eval log (tofu), "
            "<BENCH>_SUMMARY.json of a retain model or MUSE auc.json (muse, synthetic)"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="first N rows of every split")] = None,
    forget_split: Annotated[str, typer.Option(help="TOFU forget split")] = "forget01",
    batch_size: Annotated[int, typer.Option(help="rows per batch")] = 8,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="cap every generation (default: per benchmark)")
    ] = None,
    generate: Annotated[
        bool, typer.Option("--generate/--no-generate", help="generate answers (ROUGE, fluency)")
    ] = True,
    fluency: Annotated[
        bool, typer.Option("--fluency/--no-fluency", help="fluency of the generations")
    ] = True,
    entropy: Annotated[
        bool, typer.Option(help="entropy split stability, original vs evaluated model (+ PNG)")
    ] = False,
    original: Annotated[
        str | None,
        typer.Option(help="the model before unlearning (default: MODEL with the adapter off)"),
    ] = None,
    mmlu: Annotated[
        list[str] | None, typer.Option(help="MMLU subject for mcq (repeat; 'all' for every one)")
    ] = None,
    wmdp: Annotated[list[str] | None, typer.Option(help="WMDP subset for mcq (repeat)")] = None,
    allow_other_base: Annotated[
        bool, typer.Option(help="load the adapter even if MODEL's weights differ from its base")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    inference: Annotated[
        str | None,
        typer.Option(help="how an ALTER adapter routes: prepass | probe (default: as saved)"),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="progress bars")
    ] = True,
    base_dtype: Annotated[
        str,
        typer.Option(
            help="float32 | bfloat16: dtype of MODEL's (and --original's) weights; adapters "
            "stay float32"
        ),
    ] = "float32",
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
):
    """Evaluate MODEL (+ ADAPTER) on a benchmark; writes <BENCH>_EVAL.json and <BENCH>_SUMMARY.json."""
    from alter.evals.runner import DEFAULT_MMLU_SUBJECTS, DEFAULT_WMDP_SUBSETS, run_eval

    opts = _options(
        forget_split=forget_split,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        generate=generate,
        fluency=fluency,
        entropy=entropy,
        original=original,
        mmlu_subjects=tuple(mmlu) if mmlu else DEFAULT_MMLU_SUBJECTS,
        wmdp_subsets=tuple(wmdp) if wmdp else DEFAULT_WMDP_SUBSETS,
        seed=seed,
        allow_other_base=allow_other_base,
        inference=inference,
        progress=progress,
        base_dtype=base_dtype,
    )
    summary = run_eval(
        model,
        adapter,
        benchmark,
        data,
        out,
        reference=reference,
        limit=limit,
        options=opts,
        overwrite=overwrite,
    )
    from alter.distributed import is_main_process

    if is_main_process():
        _show(summary)
        typer.echo(f"saved {out}")


def report_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="directories written by `alter eval`")],
    out: Annotated[Path, typer.Option(help="Markdown file to write (figures go beside it)")],
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="PNG bar charts")] = True,
    overwrite: Annotated[bool, typer.Option(help="replace an existing report")] = False,
):
    """Compare evaluation runs side by side: a Markdown table per benchmark and PNG bar charts."""
    from alter.report import build_report

    path = build_report(run_dirs, out, plots=plots, overwrite=overwrite)
    typer.echo(f"saved {path}")


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``report`` to the ``alter`` app."""
    app.command("eval")(eval_cmd)
    app.command("report")(report_cmd)
