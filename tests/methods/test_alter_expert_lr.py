"""``expert_lr_total``: each forget expert's learning rate follows the Stage II steps it gets."""

import pytest

from alter.methods.alter import (
    AlterTrainConfig,
    expert_learning_rates,
    stage_two_optimizer,
    stage_two_plan,
    unlearn_alter,
)
from alter.models import load_model


def test_expert_learning_rates_divide_the_total_by_each_experts_steps():
    plan = [(0, [0], [0])] * 10 + [(1, [1], [1])] * 2
    tcfg = AlterTrainConfig(expert_lr_total=0.02, lr_B=1e-3)
    assert expert_learning_rates(3, plan, tcfg) == pytest.approx([0.002, 0.01, 1e-3])
    assert expert_learning_rates(3, plan, AlterTrainConfig(lr_B=1e-3)) == [1e-3] * 3


def test_expert_lr_total_must_be_positive():
    with pytest.raises(ValueError, match="expert_lr_total"):
        AlterTrainConfig(expert_lr_total=0.0)


def _uneven(bench):
    """Forget rows where one subdomain has twice the rows (and so twice the steps) of another."""
    names = sorted({r["subdomain"] for r in bench.forget})[:2]
    big = [r for r in bench.forget if r["subdomain"] == names[0]]
    small = [r for r in bench.forget if r["subdomain"] == names[1]][: len(big) // 2]
    assert len(small) >= 1 and len(big) == 2 * len(small)
    return big + small


def test_each_expert_trains_at_the_total_over_its_steps(bench, target):
    model, tok = load_model(str(target))
    forget = _uneven(bench)
    tcfg = AlterTrainConfig(
        expert_lr_total=0.012,
        forget_batch_size=1,
        epochs=2,
        stage1_max_steps=1,
        checkpoint_every=None,
    )
    am, summary = unlearn_alter(model, tok, forget, bench.retain, train_cfg=tcfg, progress=False)
    labels = summary["forget_labels"]
    steps = [labels.count(d) * 2 for d in range(2)]  # batch 1, two epochs
    assert steps[0] == 2 * steps[1]
    assert summary["expert_lr"] == pytest.approx([0.012 / s for s in steps])

    # The optimizer holds every expert's parameters once, in a group at that expert's rate.
    plan = stage_two_plan(labels, len(bench.retain), tcfg)
    opt = stage_two_optimizer(am, tcfg, plan)
    for d, lr in enumerate(summary["expert_lr"]):
        ids = {id(p) for p in am.expert_parameters(d)}
        (group,) = [g for g in opt.param_groups if ids & {id(p) for p in g["params"]}]
        assert {id(p) for p in group["params"]} == ids and group["lr"] == pytest.approx(lr)
    all_ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == sum(len(v) for v in am.parameter_groups().values())


def test_a_total_of_lr_B_times_the_steps_trains_exactly_like_lr_B(bench, target):
    """Equal steps per expert and a total of lr_B x steps: the same adapter as the default (one
    B_f group at lr_B), so results measured at lr_B hold for that total."""
    adapters = []
    for total in (None, 1e-3 * 2 * 2):  # 2 rows per subdomain, batch 1, two epochs: 4 steps
        model, tok = load_model(str(target))
        tcfg = AlterTrainConfig(
            expert_lr_total=total, forget_batch_size=1, epochs=2, stage1_max_steps=1
        )
        am, summary = unlearn_alter(
            model, tok, bench.forget, bench.retain, train_cfg=tcfg, progress=False
        )
        labels = summary["forget_labels"]
        assert all(labels.count(d) == 2 for d in set(labels))
        assert summary["expert_lr"] == pytest.approx([1e-3] * len(set(labels)))
        adapters.append(am.adapter_state_dict())
    moved = [k for k in adapters[0] if "B_f" in k and adapters[0][k].any()]
    assert moved and all(adapters[0][k].equal(adapters[1][k]) for k in adapters[0])
