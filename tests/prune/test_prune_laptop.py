"""Budget accounting and the one-shot budgeted selection, on the tiny U-Net."""

import pytest

from slimdiff.prune.laptop import Budget, BudgetAccount, laptop_select, measure_ratio
from slimdiff.unet import remove_units


def test_budget_parse_and_validation():
    assert Budget.parse("params=0.5") == Budget("params", 0.5)
    assert str(Budget.parse("latency=0.25")) == "latency=0.25"
    with pytest.raises(ValueError, match="must look like METRIC=RATIO"):
        Budget.parse("0.5")
    with pytest.raises(ValueError, match="budget metric 'macs' is not one of"):
        Budget.parse("macs=0.5")
    with pytest.raises(ValueError, match="budget ratio must be in \\(0, 1\\), got 1.5"):
        Budget("params", 1.5)


def test_injected_account():
    acc = BudgetAccount("flops", total=100.0, unit_costs={"a": 10.0, "b": 30.0})
    assert acc.required(0.25) == 25.0
    assert acc.predicted_ratio(["a", "b"]) == 0.4
    with pytest.raises(ValueError, match="no flops cost for units \\['c'\\]"):
        acc.predicted_ratio(["c"])
    with pytest.raises(ValueError, match="total flops must be > 0"):
        BudgetAccount("flops", 0.0, {})


def test_params_account_matches_the_edited_network(tiny_slim, tiny_candidates):
    acc = BudgetAccount.build(tiny_slim, "params", tiny_candidates)
    assert acc.total == sum(p.numel() for p in tiny_slim.parameters()) == 353964
    assert acc.unit_costs["mid.attn"] == 22176 and acc.unit_costs["down.0.layer.0.resnet"] == 1464
    # parameters are exactly additive: predicted == measured for any set
    S = ["mid.attn", "up.0.layer.1.resnet", "down.0.layer.1.attn"]
    pruned = remove_units(tiny_slim, S)
    assert measure_ratio(tiny_slim, pruned, "params") == pytest.approx(acc.predicted_ratio(S), abs=1e-12)


def test_laptop_select_with_given_scores(tiny_slim, tiny_candidates):
    # every unit scores 1 except three cheap-to-lose big ones: the knapsack takes those first
    scores = {u: 1.0 for u in tiny_candidates}
    scores.update({"up.0.layer.0.resnet": 0.0, "up.0.layer.1.resnet": 0.0, "mid.attn": 0.0})
    student, res = laptop_select(tiny_slim, scores, Budget("params", 0.2), candidates=tiny_candidates)
    # 31040 + 31040 + 22176 = 84256 >= 0.2 * 353964 = 70792.8, at summed score 0
    assert res.removed == ["mid.attn", "up.0.layer.0.resnet", "up.0.layer.1.resnet"]
    assert res.score_sum == 0.0 and res.repairs == []
    assert res.predicted_ratio == pytest.approx(84256 / 353964)
    assert res.measured_ratio == pytest.approx(res.predicted_ratio)
    assert [u.name for u in student.units()] == [u.name for u in remove_units(tiny_slim, res.removed).units()]
    rec = res.to_recipe()
    assert rec["budget"]["required"] == pytest.approx(70792.8) and rec["method"] == "laptop"


def test_laptop_budget_that_cannot_be_met(tiny_slim, tiny_candidates):
    from slimdiff.prune.knapsack import BudgetError

    scores = {u: 1.0 for u in tiny_candidates}
    with pytest.raises(BudgetError, match="cannot be met"):
        laptop_select(tiny_slim, scores, Budget("params", 0.99), candidates=tiny_candidates)
