"""The measurements behind docs/SCALING.md, all on CPU with random models built from configs
(nothing is downloaded; only ``--smollm2`` loads the embedded SmolLM2):

    python bench/scaling_measure.py > docs/scaling_measure.json
    python bench/scaling_measure.py --smollm2 > docs/scaling_smollm2.json   # the fits vs SmolLM2

1. ``adapters``: ALTER adapter parameters, counted on Llama-3.2-1B / 3.1-8B / 3.1-70B shaped
   models built on the meta device (no memory), next to the closed-form count of SCALING.md.
2. ``activations``: bytes saved for backward (``saved_tensors_hooks``, parameters excluded) by
   one ALTER Stage II micro-step (forget + retain pass) and one GD step, on small Llama shapes,
   with and without gradient checkpointing; SCALING.md fits its per-token formulas to these.
   ``fit``: bytes per token of each pass as ``c_LH L H + c_LI L I + c_V V + c_H H + c_0``,
   solved on five shapes that vary one of H, I, L, V at a time, then checked on a held-out
   shape and on twice the tokens.
3. ``prepass``: peak RSS of one base pre-pass batch (``base_cache``) with a 128,256-token
   vocabulary, in units of one float32 ``rows x tokens x vocab`` logits tensor.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

LLAMA = {  # public Llama 3 shapes (config.json of the meta-llama repositories)
    "llama-3.2-1b": dict(
        hidden=2048, inter=8192, layers=16, heads=32, kv=8, vocab=128256, tie=True
    ),
    "llama-3.1-8b": dict(hidden=4096, inter=14336, layers=32, heads=32, kv=8, vocab=128256),
    "llama-3.1-70b": dict(hidden=8192, inter=28672, layers=80, heads=64, kv=8, vocab=128256),
}


def llama_config(hidden, inter, layers, heads, kv, vocab, tie=False):
    """A Llama config of the given shape (``tie``: input and output embeddings shared)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
    )


def adapter_formula(hidden, inter, layers, heads, kv, r, d) -> int:
    """Closed form of SCALING.md: the seven projections of every block get A (r x d_in), B_r
    (d_out x r) and D experts B_f (d_out x r); the router is (H + 2) x (D + 1)."""
    kv_dim = kv * hidden // heads
    shapes = [
        (hidden, hidden),
        (hidden, kv_dim),
        (hidden, kv_dim),
        (hidden, hidden),
        (hidden, inter),
        (hidden, inter),
        (inter, hidden),
    ]
    per_layer = sum(r * d_in + (1 + d) * r * d_out for d_in, d_out in shapes)
    return layers * per_layer + (hidden + 2) * (d + 1)


def adapters(d: int = 4) -> dict:
    from transformers import AutoModelForCausalLM

    from alter.adapters.config import AlterConfig
    from alter.adapters.model import AlterModel, count_adapter_parameters

    out = {}
    for name, s in LLAMA.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(llama_config(**s))
        cfg = AlterConfig(n_forget_experts=d)
        counts = count_adapter_parameters(AlterModel(model, cfg))
        formula = adapter_formula(
            s["hidden"], s["inter"], s["layers"], s["heads"], s["kv"], cfg.r, d
        )
        assert counts["adapter"] == formula, (name, counts, formula)
        out[name] = {**counts, "formula": formula, "r": cfg.r, "D": d}
    return out


# -- activations ---------------------------------------------------------------------------------


def _saved_bytes(fn, params) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while ``fn`` runs."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _batch(b, t, vocab, gen):
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    labels = ids.clone()
    labels[:, : t // 4] = -100  # a prompt, as in QA rows
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "index": torch.arange(b),
    }


def activations(shape: dict, b: int, t: int, gc: bool, make_model=None) -> dict:
    """Saved-for-backward bytes of one ALTER Stage II micro-step and one GD step on a model of
    ``shape`` (random weights from its config, or ``make_model()``: e.g. the real SmolLM2)."""
    from transformers import AutoModelForCausalLM

    from alter.adapters.config import AlterConfig
    from alter.adapters.model import AlterModel
    from alter.distributed import Part, Runtime
    from alter.methods.alter import _stage_two_terms
    from alter.methods.gd import GD
    from alter.models import enable_gradient_checkpointing

    gen = torch.Generator().manual_seed(0)
    if make_model is None:
        cfg = llama_config(**shape, tie=True)

        def make_model():
            return AutoModelForCausalLM.from_config(cfg)

    res = {}
    torch.manual_seed(0)
    # ALTER Stage II: forget pass (oracle expert) + retain pass + router, the base frozen.
    model = make_model()
    am = AlterModel(model, AlterConfig(n_forget_experts=2), threshold=1.0)
    if gc:
        am.enable_gradient_checkpointing()
    am.train()
    fb, rb = _batch(b, t, shape["vocab"], gen), _batch(b, t, shape["vocab"], gen)
    for x in (fb, rb):
        x["entropy"] = torch.rand(b, t, generator=gen) * 2
        x["struct"] = torch.rand(b, t, generator=gen)
        x["hidden"] = torch.randn(b, t, shape["hidden"], generator=gen)
    res["alter_stage2"] = _saved_bytes(
        lambda: _stage_two_terms(am, fb, rb, 0, Runtime(), Part([0], [0])),
        list(am.parameters()),
    )
    # GD: one full-parameter step (forget + retain forward).
    model = make_model()
    if gc:
        enable_gradient_checkpointing(model)
    gd = GD()

    class Ctx:
        pass

    ctx = Ctx()
    ctx.model = model
    gd.setup(ctx)
    res["gd"] = _saved_bytes(lambda: gd.loss(fb, rb), list(model.parameters()))
    return res


ACT_SHAPES = [  # small Llama shapes: H, I and V varied one at a time
    dict(hidden=64, inter=256, layers=2, heads=4, kv=2, vocab=512),
    dict(hidden=128, inter=256, layers=2, heads=4, kv=2, vocab=512),
    dict(hidden=64, inter=512, layers=2, heads=4, kv=2, vocab=512),
    dict(hidden=64, inter=256, layers=4, heads=4, kv=2, vocab=512),
    dict(hidden=64, inter=256, layers=2, heads=4, kv=2, vocab=2048),
    dict(hidden=64, inter=256, layers=2, heads=4, kv=2, vocab=512, _t=128),
    dict(hidden=256, inter=1024, layers=3, heads=8, kv=4, vocab=1024),  # held out for the check
]


# -- pre-pass ------------------------------------------------------------------------------------

PREPASS_CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, "bench")
from scaling_measure import llama_config
from transformers import AutoModelForCausalLM
from alter.data.collate import Encoded
from alter.methods.alter import base_cache
rows, tokens, vocab = (int(x) for x in sys.argv[1:4])
model = AutoModelForCausalLM.from_config(
    llama_config(hidden=64, inter=256, layers=2, heads=4, kv=2, vocab=vocab, tie=True)
).eval()
enc = [Encoded(list(range(1, tokens + 1)), [-100] + list(range(2, tokens + 1)), i) for i in range(rows)]
small = [Encoded([1, 2, 3], [-100, 2, 3], 0)]
base_cache(model, small, 0, layer=1, q=1.0, q_struct=0.5, progress=False)  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = base_cache(model, enc, 0, layer=1, q=1.0, q_struct=0.5, batch_size=rows, progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache_bytes = sum(c.entropy.nbytes + c.struct.nbytes + c.hidden.nbytes for c in cache)
print(json.dumps({"peak_kib": after - before, "cache_bytes": cache_bytes}))
"""


def prepass(rows: int, tokens: int, vocab: int = 128256) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", PREPASS_CHILD, str(rows), str(tokens), str(vocab)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(res.stdout.strip().splitlines()[-1])
    unit = rows * tokens * vocab * 4  # one float32 logits tensor
    return {
        "rows": rows,
        "tokens": tokens,
        "vocab": vocab,
        "peak_bytes": got["peak_kib"] * 1024,
        "peak_in_logits_units": round(got["peak_kib"] * 1024 / unit, 2),
        "cache_bytes_per_token": got["cache_bytes"] / (rows * tokens),
    }


FEATURES = ("L*H", "L*I", "V", "H", "1")


def _features(a: dict) -> list[float]:
    return [a["layers"] * a["hidden"], a["layers"] * a["inter"], a["vocab"], a["hidden"], 1.0]


def fit(acts: list[dict], key: str, gc: bool) -> dict:
    """Bytes per token (of each of the step's two passes) from the shapes' features."""
    import numpy as np

    rows = [a for a in acts if a["gc"] == gc]
    train, t2, held = rows[:5], rows[5], rows[6]
    x = np.array([_features(a) for a in train])
    y = np.array([a[key] / (a["B"] * a["T"]) for a in train])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]

    def predict(a):
        return float(np.dot(coef, _features(a)) * a["B"] * a["T"])

    return {
        "coef_bytes_per_token": dict(
            zip(FEATURES, (round(float(c), 2) for c in coef), strict=True)
        ),
        "held_out_predicted_over_measured": round(predict(held) / held[key], 4),
        "twice_tokens_predicted_over_measured": round(predict(t2) / t2[key], 4),
    }


def smollm2(fits: dict, b: int = 2, t: int = 128) -> dict:
    """The activation formulas (``fits``: the ``fit`` of a full run) against the real
    SmolLM2-135M-Instruct (its weights and config; the embedded default model), both passes of
    ``b`` rows x ``t`` tokens, with and without gradient checkpointing."""
    import numpy as np

    from alter.models import load_model

    def make_model():
        return load_model("smollm2-135m")[0]

    c = make_model().config
    shape = dict(
        hidden=c.hidden_size,
        inter=c.intermediate_size,
        layers=c.num_hidden_layers,
        heads=c.num_attention_heads,
        kv=c.num_key_value_heads,
        vocab=c.vocab_size,
    )
    out = {"shape": shape, "B": b, "T": t}
    for gc in (False, True):
        measured = activations(shape, b, t, gc, make_model)
        for key, value in measured.items():
            name = f"{key}{'_gc' if gc else ''}"
            coef = fits[name]["coef_bytes_per_token"]
            predicted = float(np.dot([coef[f] for f in FEATURES], _features(shape))) * b * t
            out[name] = {
                "measured_bytes": value,
                "predicted_bytes": round(predicted),
                "predicted_over_measured": round(predicted / value, 4),
            }
    return out


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--smollm2"]:
        # The formulas of the last full run, checked on the embedded model.
        fits = json.loads(Path("docs/scaling_measure.json").read_text())["fit"]
        print(json.dumps(smollm2(fits), indent=1))
        return
    out = {"adapters": adapters()}
    acts = []
    for shape in ACT_SHAPES:
        shape = dict(shape)
        t = shape.pop("_t", 64)
        for gc in (False, True):
            acts.append({**shape, "B": 2, "T": t, "gc": gc, **activations(shape, 2, t, gc)})
    out["activations"] = acts
    out["fit"] = {
        f"{key}{'_gc' if gc else ''}": fit(acts, key, gc)
        for key in ("alter_stage2", "gd")
        for gc in (False, True)
    }
    out["prepass"] = [prepass(2, 128), prepass(2, 256), prepass(4, 128)]
    out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
