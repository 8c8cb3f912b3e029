"""Searches that replace (issue 22): the exact multiple-choice knapsack, LAPTOP with keep / remove /
replace under a latency budget (a valid, loadable student mixing both), evolving with replace actions,
and the latency table's prediction for a replaced unit."""

import itertools

import pytest
import torch

from slimdiff.modules import MDTricks, apply_md_tricks
from slimdiff.modules.mobilediffusion import replacement_options
from slimdiff.prune import Budget, OutputLossCriterion
from slimdiff.prune.choices import REMOVE, apply_choices, laptop_choose, solve_choices, solve_choices_valid
from slimdiff.prune.criteria import removable_units
from slimdiff.prune.evolve import EvolveConfig, evolve
from slimdiff.prune.knapsack import BudgetError
from slimdiff.profile import LatencyLUT, ProfileSettings, profile_unet
from slimdiff.unet import SlimUNet2DConditionModel, list_units, load_unet, to_slim


class ParamsLUT:
    """A deterministic stand-in for the latency table: 1 ms per 1,000 parameters of a unit, 1 ms of stem."""

    def breakdown(self, model, inner: bool = False):  # (LatencyLUT's signature; no inner blocks here)
        return {u.name: u.params / 1000 for u in model.units()} | {"other": 1.0}

    def predict(self, model):
        return sum(self.breakdown(model).values())

    def extend(self, model):
        return []


def test_multiple_choice_knapsack_is_exact():
    options = {"a": {"remove": (5.0, 4.0), "sep": (1.0, 2.0)}, "b": {"remove": (3.0, 3.0)},
               "c": {"remove": (4.0, 5.0), "trim": (0.5, 1.0), "cross": (2.0, 3.0)}, "d": {"sep": (0.2, 1.0)}}
    for budget in (1, 3, 5, 7, 9, 11, 13):
        best = None
        for combo in itertools.product(*[[None, *opts] for opts in options.values()]):
            picks = {u: c for u, c in zip(options, combo) if c}
            saved = sum(options[u][c][1] for u, c in picks.items())
            score = sum(options[u][c][0] for u, c in picks.items())
            if saved >= budget and (best is None or score < best):
                best = score
        sol = solve_choices(options, budget)
        assert sol.score == pytest.approx(best) and sol.cost >= budget
    with pytest.raises(BudgetError, match="budget 14 cannot be met"):
        solve_choices(options, 14)


def test_refused_removals_are_repaired():
    options = {"a": {"remove": (1.0, 5.0), "sep": (2.0, 3.0)}, "b": {"remove": (1.0, 5.0), "sep": (3.0, 3.0)}}

    def validate(removed):
        if set(removed) == {"a", "b"}:
            raise ValueError("a and b cannot both go")

    sol = solve_choices_valid(options, 8, validate)  # best (remove both) is refused: b keeps its removal off
    assert sol.chosen == {"a": "remove", "b": "sep"} and sol.repairs[0]["kept"] == "b" and sol.score == 4.0


def test_laptop_with_replacements_under_a_latency_budget_gives_a_loadable_mixed_student(tiny_slim, tmp_path):
    # removals score 1, replacements 0.01: the cheap replacements go first, the budget then needs removals
    lut = ParamsLUT()
    scores = {}
    for u in removable_units(tiny_slim):
        scores[(u, REMOVE)] = 1.0
    for u, opts in replacement_options(tiny_slim).items():
        scores |= {(u, o): 0.01 for o in opts}
    student, result = laptop_choose(tiny_slim, None, Budget("latency", 0.7), lut=lut, scores=scores)
    removed = [u for u, c in result.chosen.items() if c == REMOVE]
    replaced = {u: c for u, c in result.chosen.items() if c != REMOVE}
    assert removed and replaced
    assert result.predicted_ratio >= 0.7 and result.measured_ratio >= 0.7 - 1e-9
    assert 1 - lut.predict(student) / lut.predict(tiny_slim) == pytest.approx(result.measured_ratio)
    types = {u.name: u.type for u in list_units(student)}
    assert {"md_resnet", "md_attn"} & set(types.values())
    student.save_pretrained(tmp_path)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path)
    x, ehs = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 16)
    with torch.no_grad():
        assert torch.allclose(back(x, 3, ehs).sample, student(x, 3, ehs).sample, atol=1e-6)


def test_protected_units_are_replaced_or_kept_never_removed_and_the_choices_rebuild_the_student(tiny_slim):
    # every removal scores 0 and every replacement 1, so without protection the level-0 transformers would go;
    # `no_removal` withholds their "remove" option; `apply_choices` rebuilds the same student from the choices
    lut = ParamsLUT()
    protect = tuple(u.name for u in tiny_slim.units() if u.kind == "attn" and u.level == 0)
    scores = {(u, REMOVE): 0.0 for u in removable_units(tiny_slim)}
    for u, opts in replacement_options(tiny_slim).items():
        scores |= {(u, o): 1.0 for o in opts}
    _, free = laptop_choose(tiny_slim, None, Budget("latency", 0.5), lut=lut, scores=scores)
    assert any(free.chosen.get(u) == REMOVE for u in protect)
    student, result = laptop_choose(tiny_slim, None, Budget("latency", 0.5), lut=lut, scores=scores,
                                    no_removal=protect)
    assert protect and all(result.chosen.get(u) != REMOVE for u in protect)
    assert all(REMOVE not in result.options[u] for u in protect if u in result.options)
    again = apply_choices(tiny_slim, result.chosen)
    assert [u.name for u in again.units()] == [u.name for u in student.units()]
    x, ehs = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 16)
    with torch.no_grad():
        assert torch.equal(again(x, 3, ehs).sample, student(x, 3, ehs).sample)
    with pytest.raises(ValueError, match=r"no_removal names units the model does not have: \['down.9.attn'\]"):
        laptop_choose(tiny_slim, None, Budget("latency", 0.5), lut=lut, scores=scores, no_removal=("down.9.attn",))
    resnet = next(u.name for u in tiny_slim.units() if u.kind == "resnet")
    with pytest.raises(ValueError, match=rf"cannot take these replacements: \[\('{resnet}', 'cross_only'\)\]"):
        apply_choices(tiny_slim, {resnet: "cross_only"})


def test_laptop_with_replacements_and_a_real_latency_table(tiny_slim):
    # the table is extended with every replacement's new signatures; timings are noise at this size,
    # so only validity is checked: the budget met by the table's prediction, the student runs
    lut = LatencyLUT.build(tiny_slim, ProfileSettings(latent_size=8, repeats=1, warmup=0, threads=1, context_length=6))
    scores = {(u, REMOVE): 1.0 for u in removable_units(tiny_slim)}
    for u, opts in replacement_options(tiny_slim).items():
        scores |= {(u, o): 0.5 for o in opts}
    student, result = laptop_choose(tiny_slim, None, Budget("latency", 0.3), lut=lut, scores=scores)
    assert result.chosen and result.predicted_ratio >= 0.3
    assert result.measured_ratio == pytest.approx(1 - lut.predict(student) / lut.predict(tiny_slim))
    with torch.no_grad():
        assert student(torch.randn(1, 4, 8, 8), 3, torch.randn(1, 6, 16)).sample.shape == (1, 4, 8, 8)


def test_laptop_with_replacements_scores_with_the_output_loss(tiny_slim, tiny_calibration):
    crit = OutputLossCriterion(tiny_calibration)
    student, result = laptop_choose(tiny_slim, crit, Budget("params", 0.3), options=("separable",))
    opts = result.options["down.0.layer.0.resnet"]
    swapped = apply_md_tricks(tiny_slim, MDTricks(separable_levels=(0,), units=("down.0.layer.0.resnet",)))
    assert opts["separable"]["score"] == pytest.approx(crit.loss_of_model(tiny_slim, swapped))
    assert opts["remove"]["score"] == pytest.approx(crit.loss(tiny_slim, ["down.0.layer.0.resnet"]))
    assert 1 - student.num_parameters() / tiny_slim.num_parameters() >= 0.3


def test_evolve_takes_replace_actions(tiny_slim):
    # the score counts units: a removal loses 1, a replacement 0, so per ms saved replacements rank first
    score = lambda m: float(len(m.units()))  # noqa: E731
    lut = ParamsLUT()
    target = 0.97 * lut.predict(tiny_slim)
    student, result = evolve(tiny_slim, score, lut, EvolveConfig(target_latency_ms=target, allow_add=False,
                                                                 replace=("separable", "trim")))
    kinds = [a.action for a in result.actions]
    assert kinds and all(k.startswith("replace:") for k in kinds)
    assert result.final_latency <= target and lut.predict(student) == pytest.approx(result.final_latency)
    with pytest.raises(ValueError, match=r"replace options \['bigger'\] are unknown"):
        EvolveConfig(target_latency_ms=1.0, replace=("bigger",))


def test_the_latency_table_learns_a_replaced_unit_with_the_network_running():
    # the timing itself (prediction within 10% of a fresh measurement) is a bench on a shared machine:
    # `python bench/bench_md.py --lut-only`, docs/bench/md.md "Latency table vs a fresh profile"
    teacher = to_slim(load_unet("toy")).eval()
    settings = ProfileSettings(latent_size=8, repeats=1, warmup=0, threads=1, context_length=8)
    lut = LatencyLUT.build(teacher, settings)
    before = dict(lut.units)
    unit = "down.0.layer.0.resnet"
    student = apply_md_tricks(teacher, MDTricks(separable_levels=(0,), units=(unit,))).eval()
    new = lut.extend(student)
    assert len(new) == 1 and "SeparableResnetBlock2D(dw3x3+pw)" in new[0]  # only the new signature is timed
    assert lut.breakdown(student)[unit] == lut.units[new[0]] and all(lut.units[k] == v for k, v in before.items())
