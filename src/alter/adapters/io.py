"""Save and load ALTER adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only safetensors and JSON are read (never pickle). The config records a fingerprint of the base
model's architecture (shapes of the adapted layers) and checksums of a slice of its weights
(:func:`base_fingerprint`): a shape mismatch refuses to load; a weight mismatch (e.g. the adapter
was trained on a fine-tuned target but is loaded on the original base) is refused unless
``allow_other_base=True``.

Adapters are float32 whatever the base weights' dtype, and a bfloat16 copy of the weights an
adapter was trained on counts as the same base (:func:`same_base`): an adapter trained on a
float32 base loads onto its bf16 copy and vice versa. Two float32 bases must match exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alter.adapters.config import AlterConfig
from alter.adapters.model import AlterModel, is_adapter_param
from alter.errors import AlterError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "alter-adapter/1"


class AdapterError(AlterError, ValueError):
    """An adapter directory is missing, corrupted, or does not fit the model."""


def architecture_fingerprint(am: AlterModel) -> str:
    shapes = [(n, m.d_in, m.d_out) for n, m in zip(am.adapted, am.layers(), strict=True)]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def base_fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """What an adapter records of its base weights, from the first 4096 values of every base
    (non-adapter) tensor (cheap and discriminating):

    * ``base_weights``: SHA-256 of those values as stored (as float32);
    * ``base_weights_bf16``: the same of the values rounded to bfloat16, equal for a float32
      model and its bf16 copy;
    * ``base_dtype``: the base weights' dtype (``float32``, ``bfloat16``).

    On an FSDP-sharded model every process must call it (the values are gathered, once)."""
    from alter.distributed import leading_values

    named = [(n, p.detach()) for n, p in model.named_parameters() if not is_adapter_param(n)]
    exact, rounded = hashlib.sha256(), hashlib.sha256()
    for (name, _), head in zip(named, leading_values([p for _, p in named], 4096), strict=True):
        for h, values in ((exact, head.float()), (rounded, head.to(torch.bfloat16).float())):
            h.update(name.encode())
            h.update(values.cpu().numpy().tobytes())
    return {
        "base_weights": exact.hexdigest()[:16],
        "base_weights_bf16": rounded.hexdigest()[:16],
        "base_dtype": str(named[0][1].dtype).removeprefix("torch.") if named else "float32",
    }


def weights_checksum(model: torch.nn.Module) -> str:
    """``base_weights`` of :func:`base_fingerprint`."""
    return base_fingerprint(model)["base_weights"]


def same_base(saved: dict, model: dict) -> bool:
    """Whether an adapter's recorded base (``saved``: the keys of :func:`base_fingerprint`, from
    its config) is ``model``'s (its :func:`base_fingerprint`): the same values, or, when either
    side is bfloat16, the same values once rounded to bfloat16 (the model is a bf16 copy of the
    adapter's base or the other way round). Adapters saved before ``base_weights_bf16`` existed
    match exactly or not at all."""
    if saved.get("base_weights") == model["base_weights"]:
        return True
    bf16 = "bfloat16" in (saved.get("base_dtype"), model["base_dtype"])
    return bf16 and saved.get("base_weights_bf16") == model["base_weights_bf16"]


def other_base_error(path: Path, saved: dict, model: dict) -> AdapterError:
    """The refusal :func:`same_base` calls for, with a hint for adapters predating bf16 checks."""
    hint = ""
    if "base_weights_bf16" not in saved and model["base_dtype"] != "float32":
        hint = (
            f"; this adapter predates bf16 checksums: if the model is a {model['base_dtype']} "
            "copy of its base, pass --allow-other-base"
        )
    return AdapterError(
        f"{path}: adapter was trained on different base weights than this model (pass the model it "
        "was trained on, e.g. the fine-tuned target, or allow_other_base=True / --allow-other-base)"
        + hint
    )


def save_adapter(am: AlterModel, out: str | Path, *, extra: dict | None = None) -> Path:
    """Write the adapter (A, B_r, B_f, router) and its config to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in am.adapter_state_dict().items()}
    meta = {
        "format": FORMAT,
        "config": am.cfg.to_dict(),
        "threshold": am.threshold,
        "routing_layer": am.routing_layer,
        "subdomains": am.subdomains,
        "adapted_modules": am.adapted,
        "architecture": architecture_fingerprint(am),
        **(am.base_fingerprint or base_fingerprint(am)),
        "base_model_type": getattr(am.config, "model_type", None),
        **(extra or {}),
    }
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": FORMAT})
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_adapter_config(path: str | Path) -> dict:
    path = Path(path)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterError(f"{path}: not an ALTER adapter directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: corrupted JSON ({e.msg} at line {e.lineno})") from None
    if meta.get("format") != FORMAT:
        raise AdapterError(
            f"{cfg_path}: unknown adapter format {meta.get('format')!r} (expected {FORMAT})"
        )
    return meta


METHOD_META = "alter_method.json"


def load_adapter(
    model: torch.nn.Module,
    path: str | Path,
    *,
    allow_other_base: bool = False,
    inference: str | None = None,
):
    """Wrap a plain HF ``model`` with the adapter saved in the run directory ``path``.

    Reads every adapter kind ``alter unlearn`` writes: ALTER (outputs match bit for bit),
    AsymLoRA, and peft adapters (LoRA, ELM). A full-parameter run is a model directory, not an
    adapter: it is refused with the command that loads it. ``inference`` (``prepass`` or
    ``probe``) overrides how an ALTER adapter routes at inference (its saved default otherwise).
    """
    path = Path(path)
    if inference is not None:
        am = load_adapter(model, path, allow_other_base=allow_other_base)
        if not isinstance(am, AlterModel):
            raise AdapterError(f"{path}: inference={inference} applies to ALTER adapters only")
        try:
            am.set_inference(inference)
        except AlterError as e:
            raise AdapterError(f"{path}: {e}") from None
        return am
    if not path.is_dir():
        raise AdapterError(f"{path}: no such adapter directory")
    method_meta = _read_json_file(path / METHOD_META) if (path / METHOD_META).is_file() else {}
    kind = method_meta.get("kind")
    if kind == "full":
        raise AdapterError(
            f"{path} holds a full unlearned model ({method_meta.get('method')}), not an adapter: "
            f"load it as the model (--model {path})"
        )
    if kind == "peft":
        return _load_peft(model, path, method_meta, allow_other_base)
    cfg_path = path / CONFIG_NAME
    if cfg_path.is_file() and _read_json_file(cfg_path).get("format") == "asymlora/1":
        from alter.methods.asymlora import load_asymlora

        return load_asymlora(model, path, allow_other_base=allow_other_base)
    return _load_alter(model, path, allow_other_base)


def _read_json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path}: corrupted JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return data


def _load_peft(model, path: Path, meta: dict, allow_other_base: bool):
    from peft import PeftModel

    if not allow_other_base and meta.get("base_weights") is not None:
        fingerprint = base_fingerprint(model)
        if not same_base(meta, fingerprint):
            raise other_base_error(path, meta, fingerprint)
    try:
        # autocast_adapter_dtype (peft's default, explicit here): the LoRA weights are float32
        # on a bf16 base, as they were trained.
        peft_model = PeftModel.from_pretrained(model, str(path), autocast_adapter_dtype=True)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
        raise AdapterError(f"{path}: cannot load the peft adapter ({e})") from None
    peft_model.eval()
    return peft_model


def _load_alter(model: torch.nn.Module, path: Path, allow_other_base: bool) -> AlterModel:
    meta = read_adapter_config(path)
    try:
        cfg = AlterConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise AdapterError(f"{path / CONFIG_NAME}: invalid config ({e})") from None
    am = AlterModel(model, cfg, threshold=meta["threshold"])
    am.subdomains = list(meta.get("subdomains", am.subdomains))
    if architecture_fingerprint(am) != meta["architecture"]:
        raise AdapterError(
            f"{path}: adapter was trained for a different architecture "
            f"({meta.get('base_model_type')}, {len(meta['adapted_modules'])} adapted layers)"
        )
    if not allow_other_base:
        fingerprint = base_fingerprint(am)
        if not same_base(meta, fingerprint):
            raise other_base_error(path, meta, fingerprint)
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError, FileNotFoundError) as e:
        raise AdapterError(f"{path / WEIGHTS_NAME}: cannot read adapter weights ({e})") from None
    params = am.adapter_tensors()
    # Adapters saved before the entropy probe existed have none; they load with an unfitted probe.
    optional = {k for k in params if k.endswith("alter_probe")}
    missing = sorted(set(params) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise AdapterError(
            f"{path / WEIGHTS_NAME}: tensors do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for k, v in tensors.items():
            if params[k].shape != v.shape:
                raise AdapterError(
                    f"{path / WEIGHTS_NAME}: {k} has shape {tuple(v.shape)}, expected {tuple(params[k].shape)}"
                )
            params[k].copy_(v)
    am.eval()
    return am
