"""ALTER on text rows (MUSE / WMDP corpus style): every token after the first is supervised."""

from alter.adapters import AlterConfig
from alter.data.schema import validate_rows
from alter.data.synthetic import SyntheticConfig, make_synthetic
from alter.evals.mia import token_logprobs
from alter.methods.alter import AlterTrainConfig, unlearn_alter
from alter.models import load_model
from alter.train import FinetuneConfig, finetune


def as_text(rows, name):
    return validate_rows(
        [{"text": f"{r['question']} {r['answer']}", "subdomain": r["subdomain"]} for r in rows],
        name,
        "text",
    )


def mean_logprob(model, tok, rows) -> float:
    stats = token_logprobs(model, tok, rows)
    return sum(float(s.logp.mean()) for s in stats) / len(stats)


def test_alter_unlearns_text_rows():
    bench = make_synthetic(
        SyntheticConfig(
            entities_per_subdomain=4,
            forget_entities_per_subdomain=1,
            holdout_entities_per_subdomain=1,
            facts_per_entity=2,
        )
    )
    forget, retain = as_text(bench.forget, "forget"), as_text(bench.retain, "retain")
    model, tok = load_model("tiny-llama")
    model = finetune(
        model, tok, [*forget, *retain], FinetuneConfig(epochs=20, lr=3e-3), progress=False
    )
    f0, r0 = mean_logprob(model, tok, forget), mean_logprob(model, tok, retain)
    am, summary = unlearn_alter(
        model,
        tok,
        forget,
        retain,
        adapter_cfg=AlterConfig(threshold_mode="adaptive"),
        train_cfg=AlterTrainConfig(epochs=15, lr_B=5e-3),
        progress=False,
    )
    f1, r1 = mean_logprob(am, tok, forget), mean_logprob(am, tok, retain)
    assert f0 - f1 > 0.2, (f0, f1)  # the forget texts became less likely ...
    assert f0 - f1 > r0 - r1, ((f0, f1), (r0, r1))  # ... more than the retain texts
    assert summary["subdomain_source"] == "field"
