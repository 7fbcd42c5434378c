"""Helpers the baselines share: forward passes, frozen references, LoRA wrapping, saving.

Shared maths lives in :mod:`alter.losses`; this module only moves tensors and models around.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from alter.data.collate import IGNORE_INDEX, Collator, Encoded, to_device
from alter.losses import (
    batch_mean,
    inverse_hinge,
    masked_mean,
    npo_loss,
    ratio_mean,
    sequence_nll,
    shift,
)

FORGET_LOSSES = ("ga", "npo", "ihl")


def logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def freeze_except(model: torch.nn.Module, keep) -> list[torch.nn.Parameter]:
    """Freeze every parameter of ``model`` whose name ``keep(name)`` rejects; return the others."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))
        if p.requires_grad:
            params.append(p)
    return params


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """One frozen copy of ``model`` (the reference of full-parameter methods), made once."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@torch.no_grad()
def sequence_logprobs(
    model, encoded: list[Encoded], pad_id: int, *, batch_size: int = 8
) -> torch.Tensor:
    """Summed answer log-probability of every row ``(N,)``, indexed like ``encoded``.

    Computed once before training: NPO's reference needs nothing else, so no frozen copy of the
    model is kept for it.
    """
    was_training = model.training
    model.eval()
    out = torch.zeros(len(encoded))
    collate = Collator(pad_id)
    device = next(model.parameters()).device
    for s in range(0, len(encoded), batch_size):
        b = to_device(collate(encoded[s : s + batch_size]), device)
        nll, _ = sequence_nll(logits(model, b), b["labels"])
        out[s : s + len(nll)] = -nll.float()
    model.train(was_training)
    return out


def forget_term(
    kind: str,
    lg: torch.Tensor,
    batch: dict[str, torch.Tensor],
    *,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.1,
) -> torch.Tensor:
    """The forget loss of GA-style methods on one batch (a scalar to minimise).

    ``ga``: minus the mean answer-token NLL; ``npo``: mean NPO loss over sequences (``ref_logp``
    ``(N,)`` from :func:`sequence_logprobs`, indexed by ``batch['index']``); ``ihl``: mean inverse
    hinge loss over answer tokens.
    """
    labels = batch["labels"]
    if kind == "ga":
        nll, count = sequence_nll(lg, labels)
        return -ratio_mean(nll, count)
    if kind == "npo":
        nll, _ = sequence_nll(lg, labels)
        ref = ref_logp[batch["index"].cpu()].to(device=nll.device, dtype=nll.dtype)
        return batch_mean(npo_loss(-nll, ref, beta))
    if kind == "ihl":
        return masked_mean(inverse_hinge(lg, labels), shift(lg, labels)[1] != IGNORE_INDEX)
    raise ValueError(f"unknown forget loss {kind!r}; choose from: {', '.join(FORGET_LOSSES)}")


def retain_nll(lg: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    nll, count = sequence_nll(lg, batch["labels"])
    return ratio_mean(nll, count)


def save_full_model(model, tokenizer, out: Path, meta: dict) -> None:
    """A full-parameter result is a plain model directory: ``alter ... --model RUN_DIR`` loads it."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {**meta, "kind": "full"}
    (out / "alter_method.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def save_peft_adapter(model, out: Path, method: str, fingerprint: dict) -> None:
    """A peft adapter result (LoRA, ELM): ``adapter_model.safetensors`` + ``adapter_config.json``
    + ``alter_method.json`` (``method``, kind ``peft``, the base ``fingerprint``). Under FSDP the adapters are whole on every
    process and only they are written, so this needs no gather of the sharded base: rank 0 calls
    it alone."""
    from alter.distributed import unsharded_class

    base = type(model.get_base_model())
    own = unsharded_class(base)
    if own is not base:
        # FSDP2 swaps in a subclass of the model's class, whose name peft would record in
        # adapter_config.json: record the model's own class, as a single process does.
        model._get_base_model_class = lambda is_prompt_tuning=False: own
    model.save_pretrained(out, safe_serialization=True)
    meta = {"method": method, "kind": "peft", **fingerprint}
    (out / "alter_method.json").write_text(json.dumps(meta, indent=2) + "\n")
