"""The notebook-friendly API: ``alter.unlearn(...)`` and ``alter.load(...)``.

import alter
am, tok = alter.unlearn("runs/target", forget="forget.jsonl", retain="retain.jsonl", out="runs/alter")
am, tok = alter.load("runs/target", adapter="runs/alter")
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from alter.errors import ConfigError

__all__ = [
    "load",
    "parse_set",
    "parse_set_value",
    "resolve_baseline_configs",
    "resolve_configs",
    "unlearn",
]

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_set_value(raw: str):
    """YAML scalar parsing for ``--set key=value`` (numbers, booleans, null, strings).

    YAML 1.1 reads ``5e-3`` (no dot in the mantissa) as a string; it is a number here, so a
    run's recorded options say ``0.005`` whichever way the user wrote it."""
    import yaml

    if _SCIENTIFIC.fullmatch(raw.strip()):
        return float(raw)
    return yaml.safe_load(raw)


def parse_set(items: list[str]) -> dict:
    """``--set key=value`` items to ``{key: value}`` (values by :func:`parse_set_value`)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = parse_set_value(raw)
    return out


def _coerce(key: str, value, type_name: str):
    """Convert a YAML/CLI value to the field's type (YAML reads ``3e-3`` as a string)."""
    optional = "None" in type_name
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty")
    base = type_name.split("|")[0].strip()
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number ({base}), got {value!r}") from None
    if base == "str" and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def resolve_configs(overrides: dict | None = None, method: str = "alter"):
    """Split flat ``key: value`` overrides between the adapter and the training config."""
    from alter.adapters.config import AlterConfig
    from alter.methods.alter import AlterTrainConfig

    overrides = dict(overrides or {})
    a_fields = {f.name for f in dataclasses.fields(AlterConfig)}
    t_fields = {f.name for f in dataclasses.fields(AlterTrainConfig)}
    unknown = sorted(set(overrides) - a_fields - t_fields - {"method"})
    if unknown:
        raise ConfigError(
            f"unknown option(s) for method '{method}': {', '.join(unknown)}. "
            f"Adapter options: {', '.join(sorted(a_fields))}. Training options: {', '.join(sorted(t_fields))}"
        )
    types = {
        f.name: str(f.type)
        for f in (*dataclasses.fields(AlterConfig), *dataclasses.fields(AlterTrainConfig))
    }
    overrides = {k: _coerce(k, v, types.get(k, "")) for k, v in overrides.items()}
    try:
        a_cfg = AlterConfig(**{k: v for k, v in overrides.items() if k in a_fields})
        t_cfg = AlterTrainConfig(**{k: v for k, v in overrides.items() if k in t_fields})
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return a_cfg, t_cfg


def resolve_baseline_configs(method: str, overrides: dict | None = None):
    """Split flat overrides between the shared :class:`~alter.methods.loop.UnlearnConfig` and the
    method's own ``Config``; returns ``(shared, method_cfg)``."""
    from alter.methods import METHODS, check_method
    from alter.methods.loop import UnlearnConfig

    cls = METHODS[check_method(method)]
    overrides = dict(overrides or {})
    shared = {f.name: f for f in dataclasses.fields(UnlearnConfig)}
    own = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(overrides) - set(shared) - set(own) - {"method"})
    if unknown:
        raise ConfigError(
            f"unknown option(s) for method '{method}': {', '.join(unknown)}. "
            f"Shared options: {', '.join(shared)}. "
            f"{method} options: {', '.join(own) or '(none)'}"
        )
    fields = {**shared, **own}
    values = {k: _coerce(k, v, str(fields[k].type)) for k, v in overrides.items() if k != "method"}
    try:
        u_cfg = UnlearnConfig(**{k: v for k, v in values.items() if k in shared})
        m_cfg = cls.Config(**{k: v for k, v in values.items() if k in own})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{method}: {e}") from None
    return u_cfg, m_cfg


def unlearn(
    model: str,
    *,
    forget,
    retain,
    out: str | Path | None = None,
    method: str = "alter",
    overwrite: bool = False,
    progress: bool = True,
    **overrides,
):
    """Unlearn ``forget`` from ``model`` while keeping ``retain``; returns ``(wrapped model, tokenizer)``.

    ``forget`` / ``retain`` are paths, hub ids or :class:`~alter.data.schema.RowSet` objects;
    ``overrides`` are any field of :class:`~alter.adapters.AlterConfig` or
    :class:`~alter.methods.alter.AlterTrainConfig` (e.g. ``epochs=2, lr_B=5e-4``;
    ``base_dtype="bfloat16"`` loads the frozen base in bf16, adapter methods only). With ``out``,
    the run directory (config, adapter, subdomains, logs) is written atomically.
    """
    from alter.pipeline import unlearn_and_save

    return unlearn_and_save(
        model,
        forget,
        retain,
        out=out,
        method=method,
        overrides=overrides,
        overwrite=overwrite,
        progress=progress,
    )


def load(
    model: str,
    adapter: str | Path | None = None,
    *,
    allow_other_base: bool = False,
    inference: str | None = None,
    base_dtype: str = "float32",
):
    """Load ``model`` (alias, directory or hub id) and optionally wrap it with a saved adapter;
    ``inference`` (``prepass`` | ``probe``) sets how an ALTER adapter routes; ``base_dtype``
    (``float32`` | ``bfloat16``) is the dtype of the model's weights (adapters load in float32
    either way, whatever base they were trained on)."""
    from alter.adapters.config import INFERENCE_MODES
    from alter.adapters.io import load_adapter
    from alter.models import check_base_dtype, load_model

    if inference is not None and inference not in INFERENCE_MODES:
        raise ConfigError(f"inference must be 'prepass' or 'probe', got {inference!r}")
    if inference is not None and adapter is None:
        raise ConfigError(f"inference={inference} needs an ALTER adapter (--adapter)")
    m, tok = load_model(model, dtype=check_base_dtype(base_dtype))
    if adapter is None:
        return m, tok
    return load_adapter(m, adapter, allow_other_base=allow_other_base, inference=inference), tok
