"""``run_eval``: one model (+ adapter) on one benchmark, written as ``<BENCH>_EVAL/SUMMARY.json``.

Benchmarks (literal-dict dispatch, :data:`BENCHMARKS`):

* ``tofu``: the forget split (``forget01`` by default) + ``retain_perturbed`` + ``real_authors``
  + ``world_facts`` from the local TOFU files (:mod:`alter.evals.tofu`). Forget quality needs a
  retain reference: our retain model's ``TOFU_EVAL.json`` (or its run directory), or a TOFU eval
  log such as ``llama2-7b_retain99_wd0.01_eval_log_aggregated.json`` (retain99 is the reference
  of forget01). The reference's forget items are matched to ours by index and, where it records
  them, by question, so a log of another forget split is refused instead of compared.
* ``muse``: MUSE-News VerbMem, KnowMem forget / retain and PrivLeak (:mod:`alter.evals.muse`).
  The reference is the retrained model's PrivLeak AUC: our retain model's ``MUSE_SUMMARY.json``
  (or run directory), or MUSE's ``auc.json`` (key ``forget_holdout_Min-40%``).
* ``mcq``: zero-shot WMDP bio / chem and MMLU subjects (:mod:`alter.evals.mcq`).
* ``synthetic``: the built-in benchmark's forget / retain / holdout QA metrics and the MIA AUCs
  forget vs holdout (+ PrivLeak with a reference ``SYNTHETIC_SUMMARY.json``).

``limit`` keeps the first ``limit`` rows of every split (every MMLU subject / WMDP subset).
With ``fluency`` the generations also get :mod:`alter.evals.fluency` measures, perplexity
under the *original* model: the base model with the adapter switched off, or ``original``. With
``entropy`` the high/low entropy split of the original and the evaluated model is compared
(:mod:`alter.evals.entropy_stability`).

Under ``accelerate launch`` every process loads the model on its device and runs the benchmark
with :func:`alter.distributed.sharded_eval`: the answer likelihoods and greedy generations of
:mod:`alter.evals.qa` (the synthetic benchmark's QA metrics, TOFU's probabilities, truth ratios
and generations) are split across the processes and gathered; the rest (MIA token statistics,
fluency perplexity, MUSE, MCQ, entropy stability) is computed by every process, in full. Only
rank 0 writes.

Everything the user can get wrong (benchmark, data directory, reference, output directory,
options) is checked before the model is loaded and raises :class:`EvalError` (or another
:class:`~alter.errors.AlterError`); results are written with :func:`alter.runs.atomic_dir`, so an
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch

from alter.adapters.config import INFERENCE_MODES
from alter.data.benchmarks import MMLU_SUBJECTS, WMDP_SUBSETS, default_data_dir
from alter.data.schema import DataError, RowSet
from alter.distributed import launch_runtime, sharded_eval
from alter.errors import AlterError, ConfigError
from alter.evals import fluency as flu
from alter.evals.results import entry, write_results
from alter.runs import check_out_dir, run_dir, write_json

TOFU_FORGET_SPLITS = ("forget01", "forget05", "forget10")
# WMDP's paper reports these MMLU subjects next to WMDP (auxiliary knowledge close to the hazard).
DEFAULT_MMLU_SUBJECTS = (
    "college_biology",
    "virology",
    "college_computer_science",
    "computer_security",
)
DEFAULT_WMDP_SUBSETS = ("bio", "chem")
NO_TOFU_REFERENCE = (
    "no retain reference: forget quality not computed (pass --reference: a retain model's "
    "TOFU_EVAL.json or a TOFU eval log of the same forget split)"
)
ENTROPY_FILE = "ENTROPY_STABILITY.json"
CONFIG_FILE = "eval_config.json"


class EvalError(AlterError, ValueError):
    """An evaluation cannot run as asked; the message says why."""


@dataclass
class EvalOptions:
    """Everything ``run_eval`` can be told besides model, adapter, benchmark, data and output."""

    forget_split: str = field(
        default="forget01", metadata={"help": "TOFU forget split: forget01, forget05, forget10."}
    )
    batch_size: int = field(default=8, metadata={"help": "Rows per forward / generate batch."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Cap every generation (default per benchmark: TOFU 200, synthetic 48, "
            "MUSE VerbMem 128 / KnowMem 32)."
        },
    )
    generate: bool = field(
        default=True,
        metadata={"help": "Generate answers (ROUGE, fluency); off = likelihoods only."},
    )
    fluency: bool = field(default=True, metadata={"help": "Fluency of the generations."})
    entropy: bool = field(
        default=False, metadata={"help": "High/low entropy split stability (numbers + PNG)."}
    )
    original: str | None = field(
        default=None,
        metadata={
            "help": "The model before unlearning (fluency perplexity, entropy base); default: "
            "the evaluated model with its adapter off."
        },
    )
    mmlu_subjects: tuple[str, ...] = field(
        default=DEFAULT_MMLU_SUBJECTS, metadata={"help": "MMLU subjects of the mcq benchmark."}
    )
    wmdp_subsets: tuple[str, ...] = field(
        default=DEFAULT_WMDP_SUBSETS, metadata={"help": "WMDP subsets of the mcq benchmark."}
    )
    privleak_max_length: int = field(
        default=2048, metadata={"help": "Tokens scored per MUSE PrivLeak document."}
    )
    seed: int = field(default=0, metadata={"help": "Seed (for the synthetic data and torch)."})
    allow_other_base: bool = field(
        default=False, metadata={"help": "Load an adapter on a model whose weights differ."}
    )
    inference: str | None = field(
        default=None,
        metadata={"help": "How an ALTER adapter routes: prepass | probe (default: as saved)."},
    )
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})
    base_dtype: str = field(
        default="float32",
        metadata={
            "help": "float32 | bfloat16: dtype of the model's weights (and --original's); "
            "adapters stay float32."
        },
    )

    def __post_init__(self) -> None:
        from alter.models import check_base_dtype

        check_base_dtype(self.base_dtype)
        self.mmlu_subjects = tuple(self.mmlu_subjects)
        self.wmdp_subsets = tuple(self.wmdp_subsets)
        if self.forget_split not in TOFU_FORGET_SPLITS:
            raise ValueError(
                f"unknown TOFU forget split '{self.forget_split}'; choose from "
                f"{', '.join(TOFU_FORGET_SPLITS)}"
            )
        for name in ("batch_size", "privleak_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inference is not None and self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be prepass or probe, got {self.inference!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.mmlu_subjects == ("all",):
            self.mmlu_subjects = MMLU_SUBJECTS
        bad = [s for s in self.mmlu_subjects if s not in MMLU_SUBJECTS]
        if bad:
            raise ValueError(f"unknown MMLU subject(s) {', '.join(bad)}; see `alter.data`")
        bad = [s for s in self.wmdp_subsets if s not in WMDP_SUBSETS]
        if bad:
            raise ValueError(
                f"unknown WMDP subset(s) {', '.join(bad)}; choose from {', '.join(WMDP_SUBSETS)}"
            )


# --------------------------------------------------------------------------------- the model


@dataclass
class Loaded:
    """The evaluated model and how to get the original one (for fluency and entropy)."""

    model: torch.nn.Module
    tokenizer: object
    original: torch.nn.Module
    original_context: Callable[[], contextlib.AbstractContextManager] | None
    original_name: str


def _load(model_spec: str, adapter, opts: EvalOptions) -> Loaded:
    from alter.models import BASE_DTYPES, load_model

    if opts.inference is not None and adapter is None:
        raise ConfigError(f"inference={opts.inference} needs an ALTER adapter (--adapter)")
    dtype = BASE_DTYPES[opts.base_dtype]
    model, tok = load_model(model_spec, seed=opts.seed, dtype=dtype)
    original, ctx, name = model, None, "the evaluated model itself (no adapter, no --original)"
    if adapter is not None:
        from alter.adapters.io import load_adapter

        model = load_adapter(
            model, adapter, allow_other_base=opts.allow_other_base, inference=opts.inference
        )
        if opts.original is None:
            name = f"{model_spec} (adapter off)"
            if hasattr(model, "adapters_disabled"):
                original, ctx = model, model.adapters_disabled
            elif hasattr(model, "disable_adapter"):  # a peft model
                original, ctx = model, model.disable_adapter
            else:
                original = load_model(model_spec, seed=opts.seed, dtype=dtype)[0]
    if opts.original is not None:
        original = load_model(opts.original, seed=opts.seed, dtype=dtype)[0]
        ctx, name = None, opts.original
    return Loaded(model, tok, original, ctx, name)


def _fluency(
    lm: Loaded,
    prefix: str,
    contexts: Sequence[str],
    generations: Sequence[str],
    opts: EvalOptions,
    *,
    add_special_tokens: bool = False,
) -> tuple[dict, dict]:
    """EVAL and SUMMARY entries ``<prefix>_fluency_ppl``, ``_repetition_rate``, ``_distinct_1/2``."""
    from alter.evals.muse import model_max_length

    with lm.original_context() if lm.original_context else contextlib.nullcontext():
        items = flu.evaluate_fluency(
            generations,
            model=lm.original,
            tokenizer=lm.tokenizer,
            contexts=contexts,
            batch_size=opts.batch_size,
            max_length=model_max_length(lm.original),
            add_special_tokens=add_special_tokens,
            progress=opts.progress,
        )
    agg = flu.fluency_summary(items)
    ev, sm = {}, {}
    for key, name in (
        ("ppl", "fluency_ppl"),
        ("repetition_rate", "repetition_rate"),
        ("distinct_1", "distinct_1"),
        ("distinct_2", "distinct_2"),
    ):
        ev[f"{prefix}_{name}"] = entry(agg[key], [getattr(it, key) for it in items])
        sm[f"{prefix}_{name}"] = agg[key]
    ev[f"{prefix}_fluency_ppl"]["model"] = lm.original_name
    sm[f"{prefix}_empty_generations"] = agg["n_empty"]
    n = len(items)
    reasons = {
        "fluency_ppl": f"all {n} generations are empty",
        "repetition_rate": f"no generation has {flu.REPETITION_N} or more words",
        "distinct_1": f"none of the {n} generations has a word",
        "distinct_2": "no generation has 2 or more words",
    }
    for name, reason in reasons.items():
        if sm[f"{prefix}_{name}"] is None:
            sm[f"{prefix}_{name}_reason"] = ev[f"{prefix}_{name}"]["reason"] = reason
    return ev, sm


def _continuation(tokenizer, generation: str) -> str:
    """How a stripped answer followed its prompt (collate's plain format puts a space first)."""
    if not generation or getattr(tokenizer, "chat_template", None):
        return generation
    return " " + generation


# ------------------------------------------------------------------------------- references


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EvalError(f"{path}: cannot read the reference ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: reference is not valid JSON (line {e.lineno}: {e.msg})") from None


def _reference_path(reference, tag: str) -> Path:
    path = Path(reference).expanduser()
    if path.is_dir() and (path / f"{tag}_SUMMARY.json").is_file():
        return path / f"{tag}_SUMMARY.json"
    if not path.exists():
        raise EvalError(f"{path}: no such reference file")
    return path


def tofu_reference(reference, forget_rows: Sequence[Mapping]) -> list[float]:
    """The retain model's forget truth ratios, aligned with ``forget_rows`` (by index).

    ``reference``: our ``TOFU_EVAL.json`` (or a run directory holding one) or a TOFU eval log
    (``eval_log_aggregated.json`` or a directory of its four files).
    """
    from alter.evals import tofu

    if not isinstance(reference, str | Path):
        raise EvalError(f"a TOFU reference is a file or directory, got {reference!r}")
    path = Path(reference).expanduser()
    if path.is_dir() and (path / "TOFU_EVAL.json").is_file():
        path = path / "TOFU_EVAL.json"
    if not path.exists():
        raise EvalError(f"{path}: no such reference file")
    data = _read_json(path) if path.is_file() else None
    if isinstance(data, dict) and "forget_truth_ratio" in data:
        try:
            by_index = data["forget_truth_ratio"]["value_by_index"]
            ratios = {int(i): float(v["score"]) for i, v in by_index.items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise EvalError(
                f"{path}: forget_truth_ratio has no value_by_index of {{'score': R}}"
            ) from None
        rouge = data.get("forget_Q_A_ROUGE", {}).get("value_by_index", {})
        questions = {int(i): v.get("input") for i, v in rouge.items() if isinstance(v, dict)}
    else:
        try:
            log = tofu.load_reference_log(path)
        except DataError as e:
            raise EvalError(
                f"{e} (a TOFU reference is a TOFU_EVAL.json or a TOFU eval log)"
            ) from None
        if tofu.LOG_KEYS["forget"] not in log:
            raise EvalError(f"{path}: the TOFU eval log has no {tofu.LOG_KEYS['forget']}")
        items = tofu.items_from_log(log[tofu.LOG_KEYS["forget"]])
        values = tofu.item_truth_ratios(items)
        ratios = {it["index"]: r for it, r in zip(items, values, strict=True)}
        questions = {it["index"]: it.get("input") for it in items}
    out = []
    for i, row in enumerate(forget_rows):
        if i not in ratios:
            raise EvalError(
                f"{path}: the retain reference has no forget item {i} ({len(ratios)} items); "
                "it was evaluated on fewer or other forget questions"
            )
        q = questions.get(i)
        if q and row["question"].strip() not in q:
            raise EvalError(
                f"{path}: forget item {i} of the reference is another question ({q[:60]!r}); "
                "it was evaluated on another forget split (TOFU's logs: retain99 for forget01, "
                "retain95 for forget05, retain90 for the first 300 of forget10)"
            )
        out.append(ratios[i])
    return out


def auc_reference(reference, tag: str, attack: str = "min_k") -> float:
    """The retrained model's MIA AUC (forget = members) for PrivLeak.

    ``reference``: a number, our ``<TAG>_SUMMARY.json`` / ``<TAG>_EVAL.json`` (or a run
    directory), or MUSE's ``auc.json`` (``forget_holdout_Min-40%``, holdout labelled 1 there, so
    ``1 - value`` here).
    """
    if isinstance(reference, int | float) and not isinstance(reference, bool):
        value, where = float(reference), "reference AUC"
    else:
        path = _reference_path(reference, tag)
        data = _read_json(path)
        where = str(path)
        key = f"mia_{attack}"
        value = None
        if isinstance(data, dict):
            if isinstance(data.get(key), int | float):
                value = float(data[key])
            elif isinstance(data.get(key), dict):
                value = data[key].get("agg_value")
            elif isinstance(data.get("forget_holdout_Min-40%"), int | float):
                if attack != "min_k":
                    raise EvalError(f"{path}: MUSE's auc.json gives Min-40% AUCs, not {attack}")
                value = 1.0 - float(data["forget_holdout_Min-40%"])
        if not isinstance(value, int | float):
            raise EvalError(
                f"{path}: no {key} AUC (expected a {tag}_SUMMARY.json / {tag}_EVAL.json of a "
                "retain model, or MUSE's auc.json)"
            )
    if not 0.0 < value < 1.0 or math.isnan(value):
        raise EvalError(f"{where}: the reference AUC must be in (0, 1), got {value}")
    return float(value)


# ------------------------------------------------------------------------------- benchmarks


def _cap(rows: Sequence, limit: int | None) -> list:
    rows = list(rows)
    return rows[:limit] if limit is not None else rows


def _max_new(opts: EvalOptions, default: int) -> int:
    return opts.max_new_tokens if opts.max_new_tokens is not None else default


class Benchmark(Protocol):
    """What every benchmark class provides (no shared implementation)."""

    tag: str

    @classmethod
    def prepare(cls, data: Path | None, reference, limit: int | None, opts: EvalOptions):
        """Load and check the rows and the reference, before any model is loaded."""

    def run(self, lm: Loaded, opts: EvalOptions) -> tuple[dict, dict]:
        """``(EVAL json, SUMMARY json)`` of the loaded model."""


@dataclass
class Tofu:
    rows: dict[str, list]
    reference: list[float] | None
    tag: str = "TOFU"

    @classmethod
    def prepare(cls, data: Path | None, reference, limit, opts: EvalOptions) -> Tofu:
        from alter.data.benchmarks import load_tofu
        from alter.evals.tofu import DATA_SPLITS

        splits = {**DATA_SPLITS, "forget": f"{opts.forget_split}_perturbed"}
        rows = {kind: _cap(load_tofu(split, data).rows, limit) for kind, split in splits.items()}
        ref = tofu_reference(reference, rows["forget"]) if reference is not None else None
        return cls(rows=rows, reference=ref)

    @property
    def entropy_rows(self) -> dict[str, list]:
        return {"forget": self.rows["forget"], "retain": self.rows["retain"]}

    def run(self, lm: Loaded, opts: EvalOptions) -> tuple[dict, dict]:
        from alter.data.collate import format_prompt
        from alter.evals.tofu import evaluate_tofu

        result = evaluate_tofu(
            lm.model,
            lm.tokenizer,
            self.rows,
            retain_forget_truth_ratios=self.reference,
            batch_size=opts.batch_size,
            max_new_tokens=_max_new(opts, 200),
            generate=opts.generate,
            progress=opts.progress,
        )
        if self.reference is None and "forget" in result.summary.splits:
            result.summary.forget_quality_reason = NO_TOFU_REFERENCE
        ev, sm = result.to_eval_json(), result.to_summary_json()
        if opts.generate and opts.fluency:
            for kind in ("forget", "retain"):
                items = result.items[kind]
                contexts = [format_prompt(lm.tokenizer, it["input"]) for it in items]
                gens = [_continuation(lm.tokenizer, it["generation"]) for it in items]
                e, s = _fluency(lm, kind, contexts, gens, opts)
                ev.update(e)
                sm.update(s)
        return ev, sm


@dataclass
class Muse:
    splits: dict[str, list]
    reference_auc: float | None
    tag: str = "MUSE"

    @classmethod
    def prepare(cls, data: Path | None, reference, limit, opts: EvalOptions) -> Muse:
        from alter.evals.muse import load_muse_splits

        splits = load_muse_splits(data, limit)
        ref = auc_reference(reference, "MUSE") if reference is not None else None
        return cls(splits=splits, reference_auc=ref)

    @property
    def entropy_rows(self) -> dict[str, list]:
        return {"forget": self.splits["knowmem_forget"], "retain": self.splits["knowmem_retain"]}

    def run(self, lm: Loaded, opts: EvalOptions) -> tuple[dict, dict]:
        from alter.evals import muse

        metrics = muse.MUSE_METRICS if opts.generate else ("privleak",)
        result = muse.evaluate_muse(
            lm.model,
            lm.tokenizer,
            self.splits,
            metrics=metrics,
            reference_auc=self.reference_auc,
            verbmem_max_new_tokens=_max_new(opts, muse.VERBMEM_MAX_NEW_TOKENS),
            knowmem_max_new_tokens=_max_new(opts, muse.KNOWMEM_MAX_NEW_TOKENS),
            batch_size=opts.batch_size,
            privleak_max_length=opts.privleak_max_length,
            progress=opts.progress,
        )
        ev, sm = result.to_eval_json(), result.summary()
        if opts.generate and opts.fluency:
            for prefix, items in (
                ("forget_verbmem", result.verbmem),
                ("forget_knowmem", result.knowmem_forget),
            ):
                contexts = [it.get("prompt", it["input"]) for it in items]
                gens = [it["generation"] for it in items]
                e, s = _fluency(lm, prefix, contexts, gens, opts, add_special_tokens=True)
                ev.update(e)
                sm.update(s)
        return ev, sm


@dataclass
class Mcq:
    items: dict[str, list]
    tag: str = "MCQ"

    @classmethod
    def prepare(cls, data: Path | None, reference, limit, opts: EvalOptions) -> Mcq:
        from alter.data.benchmarks import load_mmlu, load_wmdp

        if reference is not None:
            raise EvalError("--reference is not used by the mcq benchmark (accuracy needs none)")
        items = {f"wmdp_{s}": _cap(load_wmdp(s, data / "wmdp"), limit) for s in opts.wmdp_subsets}
        for s in opts.mmlu_subjects:
            items[f"mmlu_{s}"] = _cap(load_mmlu(s, "test", data / "mmlu"), limit)
        return cls(items=items)

    def run(self, lm: Loaded, opts: EvalOptions) -> tuple[dict, dict]:
        from alter.evals.mcq import evaluate_mcq
        from alter.evals.muse import model_max_length

        ev, sm = {}, {}
        mmlu_correct: list[bool] = []
        for name, items in self.items.items():
            res = evaluate_mcq(
                lm.model,
                lm.tokenizer,
                items,
                batch_size=opts.batch_size,
                max_length=model_max_length(lm.model),
                progress=opts.progress,
            )
            per_item = [
                {
                    "prediction": r.prediction,
                    "answer": r.answer,
                    "correct": r.correct,
                    "loglikelihoods": r.loglikelihoods,
                }
                for r in res.items
            ]
            ev[f"{name}_acc"] = entry(res.accuracy, per_item, n=res.n)
            sm[f"{name}_acc"] = res.accuracy
            if name.startswith("mmlu_"):
                mmlu_correct += [r.correct for r in res.items]
        if mmlu_correct:
            # lm-eval's MMLU group accuracy is the size-weighted mean: pool the items.
            sm["mmlu_acc"] = sum(mmlu_correct) / len(mmlu_correct)
            ev["mmlu_acc"] = entry(sm["mmlu_acc"], n=len(mmlu_correct))
        return ev, sm


@dataclass
class Synthetic:
    rows: dict[str, list]
    reference_auc: float | None
    tag: str = "SYNTHETIC"

    @classmethod
    def prepare(cls, data: Path | None, reference, limit, opts: EvalOptions) -> Synthetic:
        from alter.data.schema import load_rows
        from alter.data.synthetic import SPLITS, SyntheticConfig, make_synthetic

        if data is None:
            bench = make_synthetic(SyntheticConfig(seed=opts.seed))
            rows = {s: bench.split(s).rows for s in SPLITS}
        else:
            rows = {s: load_rows(data / f"{s}.jsonl", kind="qa").rows for s in SPLITS}
        rows = {s: _cap(r, limit) for s, r in rows.items()}
        ref = auc_reference(reference, "SYNTHETIC") if reference is not None else None
        return cls(rows=rows, reference_auc=ref)

    @property
    def entropy_rows(self) -> dict[str, list]:
        return {"forget": self.rows["forget"], "retain": self.rows["retain"]}

    def run(self, lm: Loaded, opts: EvalOptions) -> tuple[dict, dict]:
        from alter.data.collate import format_prompt
        from alter.evals import mia
        from alter.evals.muse import privleak_result
        from alter.evals.qa import qa_metrics, summarise

        ev, sm = {}, {}
        for split, rows in self.rows.items():
            res = qa_metrics(
                lm.model,
                lm.tokenizer,
                rows,
                generate=opts.generate,
                batch_size=opts.batch_size,
                max_new_tokens=_max_new(opts, 48),
                progress=opts.progress,
            )
            agg = summarise(res)
            ev[f"{split}_Q_A_Prob"] = entry(
                agg["prob"], [{"prob": r.prob, "avg_loss": r.nll} for r in res]
            )
            sm[f"{split}_Q_A_Prob"] = agg["prob"]
            sm[f"{split}_avg_loss"] = agg["nll"]
            if opts.generate:
                ev[f"{split}_Q_A_ROUGE"] = entry(
                    agg["rougeL_recall"],
                    [
                        {
                            "rougeL_recall": r.rougeL_recall,
                            "fact_recall": r.fact_recall,
                            "input": row["question"],
                            "ground_truth": row["answer"],
                            "generation": r.generation,
                        }
                        for r, row in zip(res, rows, strict=True)
                    ],
                )
                sm[f"{split}_Q_A_ROUGE"] = agg["rougeL_recall"]
                if "fact_recall" in agg:
                    sm[f"{split}_fact_recall"] = agg["fact_recall"]
                if opts.fluency and split in ("forget", "retain"):
                    contexts = [format_prompt(lm.tokenizer, row["question"]) for row in rows]
                    gens = [_continuation(lm.tokenizer, r.generation or "") for r in res]
                    e, s = _fluency(lm, split, contexts, gens, opts)
                    ev.update(e)
                    sm.update(s)
        report = mia.mia_report(
            lm.model,
            lm.tokenizer,
            RowSet(self.rows["forget"], "synthetic:forget", "qa"),
            RowSet(self.rows["holdout"], "synthetic:holdout", "qa"),
            batch_size=opts.batch_size,
            progress=opts.progress,
        )
        for attack in mia.ATTACKS:
            ev[f"mia_{attack}"] = entry(report[attack], k=report["k"])
            sm[f"mia_{attack}"] = report[attack]
        leak, reason = privleak_result(report, self.reference_auc)
        sm["privleak"] = leak
        ev["privleak"] = entry(leak, reference_auc=self.reference_auc)
        if leak is None:
            sm["privleak_reason"] = ev["privleak"]["reason"] = reason
        return ev, sm


BENCHMARKS: dict[str, type[Benchmark]] = {
    "tofu": Tofu,
    "muse": Muse,
    "mcq": Mcq,
    "synthetic": Synthetic,
}


# ------------------------------------------------------------------------------------ data


def resolve_data_dir(benchmark: str, data_dir, opts: EvalOptions | None = None) -> Path | None:
    """The folder a benchmark reads: ``data_dir`` may be the data root or the benchmark's folder.

    Without ``data_dir``, ``$ALTER_DATA_DIR`` (:func:`alter.data.benchmarks.default_data_dir`);
    the synthetic benchmark then generates its data instead.
    """
    opts = opts or EvalOptions()
    if data_dir is None:
        if benchmark == "synthetic":
            return None
        data_dir = default_data_dir()
        if data_dir is None:
            raise EvalError(
                f"no data directory for {benchmark}: pass --data DIR or set ALTER_DATA_DIR"
            )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise EvalError(f"{root}: no such data directory")
    # (candidate folders, a file or folder that must be inside)
    layouts = {
        "tofu": ([root / "tofu", root], f"{opts.forget_split}_perturbed.json"),
        "muse": ([root / "muse" / "news", root / "news", root], "knowmem"),
        "mcq": ([root], "wmdp"),
        "synthetic": ([root], "forget.jsonl"),
    }
    candidates, marker = layouts[benchmark]
    for folder in candidates:
        if (folder / marker).exists():
            if benchmark == "mcq" and not (folder / "mmlu").is_dir():
                break
            return folder
    what = {
        "tofu": f"TOFU files (tofu/{marker})",
        "muse": "MUSE-News files (muse/news/knowmem, verbmem, privleak)",
        "mcq": "wmdp/ and mmlu/ folders",
        "synthetic": "forget.jsonl / retain.jsonl / holdout.jsonl (see `alter data synth`)",
    }[benchmark]
    raise EvalError(f"{root}: holds no {what}")


# ----------------------------------------------------------------------------------- runner


def run_eval(
    model_spec: str,
    adapter: str | Path | None = None,
    benchmark: str = "tofu",
    data_dir: str | Path | None = None,
    out_dir: str | Path = "runs/eval",
    reference: str | Path | float | None = None,
    limit: int | None = None,
    *,
    options: EvalOptions | None = None,
    overwrite: bool = False,
) -> dict:
    """Evaluate ``model_spec`` (+ ``adapter``) on ``benchmark``; write results to ``out_dir``.

    Returns the SUMMARY dict. ``out_dir`` receives ``<BENCH>_EVAL.json``,
    ``<BENCH>_SUMMARY.json``, ``eval_config.json``, with ``options.entropy`` also
    ``ENTROPY_STABILITY.json`` and two histograms, and ``run_complete.json`` last.
    """
    opts = options or EvalOptions()
    name = str(benchmark).lower()
    if name not in BENCHMARKS:
        raise EvalError(f"unknown benchmark '{benchmark}'; choose from {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    if opts.entropy and name == "mcq":
        raise EvalError("entropy stability needs QA answers: use tofu, muse or synthetic")
    if opts.entropy and adapter is None and opts.original is None:
        raise EvalError(
            "entropy stability compares two models: pass --adapter (the base is the model "
            "with the adapter off) or --original MODEL"
        )
    out = check_out_dir(out_dir, overwrite=overwrite)
    if adapter is not None and not Path(adapter).expanduser().is_dir():
        raise EvalError(f"{adapter}: no such adapter directory")
    data = resolve_data_dir(name, data_dir, opts)
    bench = BENCHMARKS[name].prepare(data, reference, limit, opts)

    rt = launch_runtime("no")  # evaluation needs no autocast, whatever the launcher says
    if not rt.is_main and opts.progress:
        opts = replace(opts, progress=False)
    torch.manual_seed(opts.seed)
    t0 = time.perf_counter()
    lm = _load(model_spec, adapter, opts)
    for m in {id(lm.model): lm.model, id(lm.original): lm.original}.values():
        if next(m.parameters()).device != rt.device:
            m.to(rt.device)
    config = {
        "benchmark": name,
        "model": model_spec,
        "adapter": None if adapter is None else str(adapter),
        "data_dir": None if data is None else str(data),
        "reference": None if reference is None else str(reference),
        "limit": limit,
        "original_model": lm.original_name,
        "options": asdict(opts),
    }
    with run_dir(out, rt, overwrite=overwrite, meta={"command": "eval", **config}) as tmp:
        with sharded_eval(rt):
            ev, summary = bench.run(lm, opts)
            if opts.entropy:
                summary.update(_entropy(lm, bench, opts, tmp if rt.is_main else None))
        if rt.is_main:
            ev["meta"] = {**ev.get("meta", {}), **config}
            write_results(tmp, name, ev, summary)
            config["eval_seconds"] = round(time.perf_counter() - t0, 2)
            config["processes"] = rt.world
            write_json(tmp / CONFIG_FILE, config)
    rt.barrier()  # the others return once rank 0 has put the results in place
    return summary


def _entropy(lm: Loaded, bench, opts: EvalOptions, out: Path | None) -> dict:
    """Entropy stability; ``out`` None computes without writing (non-main processes)."""
    from alter.evals.entropy_stability import entropy_stability

    cfg = getattr(lm.model, "cfg", None)
    q = float(getattr(cfg, "entropy_q", 1.0))
    threshold = getattr(lm.model, "threshold", None)
    report = entropy_stability(
        lm.original,
        lm.model,
        lm.tokenizer,
        bench.entropy_rows,
        q=q,
        threshold=None if threshold is None else float(threshold),
        base_context=lm.original_context,
        out_dir=out,
        batch_size=opts.batch_size,
        progress=opts.progress,
    )
    report["original_model"] = lm.original_name
    if out is not None:
        write_json(out / ENTROPY_FILE, report)
    stab = report["splits"]["all"]["stability"]
    return {
        "entropy_threshold": report["threshold"],
        "entropy_high_stay": stab["high_stay"],
        "entropy_low_stay": stab["low_stay"],
        "entropy_agreement": stab["agreement"],
    }
