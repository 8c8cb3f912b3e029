"""Searches that replace, not only remove: LAPTOP-Diff's knapsack as a multiple-choice knapsack
(issue 22; MobileDiffusion's cheaper block types, seed 001, METHODS.md sections 3 and 6).

    from slimdiff.prune import Budget, OutputLossCriterion
    from slimdiff.prune.choices import laptop_choose
    student, result = laptop_choose(teacher, OutputLossCriterion(calib), Budget.parse("latency=0.6"), lut=lut)

Per unit u, exactly one choice: keep (score 0, saves 0), remove (LAPTOP's output loss L({u}), saves
cost(u)), or replace by a cheaper type k (`slimdiff.modules.mobilediffusion.REPLACEMENTS`:
"separable", "cross_only", "trim"; score L of the network with u replaced, saves cost(u) - cost(u_k)).
The search chooses

    minimise  sum_u score(u, choice_u)   subject to   sum_u saved(u, choice_u) >= ratio * total

exactly, by dynamic programming over discretised costs (the multiple-choice form of
`knapsack.solve`, same discretisation: item costs rounded down, budget rounded up, so the real
budget is met). Costs come from the same accounting as LAPTOP (`laptop.BudgetAccount`): parameters,
counted FLOPs, or the latency table's entries; a replacement's cost is read from a network with every
such unit replaced (one per option: units' costs depend on their own inputs only). Removals that
cannot happen together are repaired as in `knapsack.solve_valid`: the culprit's "remove" option is
dropped and the problem solved again. Ties: keep first, then removal, then the options in order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from slimdiff.modules.mobilediffusion import REPLACEMENTS, apply_replacements, replacement_options
from slimdiff.profile.lut import LUTMissError
from slimdiff.unet import check_removal, remove_units

from . import knapsack
from .criteria import as_slim, removable_units
from .laptop import Budget, BudgetAccount, measure_ratio, measure_wallclock_ratio, model_flops

REMOVE = "remove"  # the choice name of a removal; "keep" is implicit


@dataclasses.dataclass
class ChoiceSolution:
    chosen: dict[str, str]  # unit -> "remove" | a replacement option (kept units are absent)
    score: float
    cost: float  # real (undiscretised) saved cost
    budget: float
    quantum: float
    repairs: list[dict] = dataclasses.field(default_factory=list)


def solve_choices(options: Mapping[str, Mapping[str, tuple[float, float]]], budget: float,
                  resolution: int = knapsack.DEFAULT_RESOLUTION) -> ChoiceSolution:
    """`options`: unit -> {choice: (score, saved cost)}; keep (0, 0) is implicit. Exact DP (module docstring).
    Raises `knapsack.BudgetError` when even the most-saving choice of every unit misses `budget`."""
    units = list(options)
    flat = [(u, c, float(s), float(w)) for u in units for c, (s, w) in options[u].items()]
    bad = [(u, c) for u, c, s, w in flat if not (math.isfinite(s) and math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"choices need finite scores and finite costs >= 0; bad: {bad}")
    if budget <= 0:
        return ChoiceSolution({}, 0.0, 0.0, float(budget), 1.0)
    most = [max([w for _, (_, w) in options[u].items()], default=0.0) for u in units]
    if sum(most) < budget:
        raise knapsack.BudgetError(f"budget {budget:g} cannot be met: the most-saving choice of every unit saves "
                                   f"only {sum(most):g}")
    # 1. discretise as knapsack.solve: quantum q, costs rounded down, budget rounded up
    q = knapsack.cost_quantum(most, resolution)
    need = int(math.ceil(budget / q))
    w = {(u, c): int(math.floor(float(options[u][c][1]) / q)) for u in units for c in options[u]}
    cap = sum(max([w[(u, c)] for c in options[u]], default=0) for u in units)
    if cap < need:
        raise knapsack.BudgetError(f"budget {budget:g} cannot be met after cost discretisation (quantum {q:g}); "
                                   f"raise `resolution` (now {resolution})")
    # 2. DP: best[c] = minimal score with discretised saved cost exactly c; pick[g, c] = choice index (0: keep)
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    pick = np.zeros((len(units), cap + 1), dtype=np.int32)
    for g, u in enumerate(units):
        new, choice = best.copy(), np.zeros(cap + 1, dtype=np.int32)
        for k, c in enumerate(options[u], start=1):
            wk = w[(u, c)]
            cand = np.full(cap + 1, np.inf)
            cand[wk:] = best[: cap + 1 - wk] + float(options[u][c][0])
            better = cand < new
            new, choice = np.where(better, cand, new), np.where(better, k, choice)
        best, pick[g] = new, choice
    # 3. the answer: minimal score over cost >= need (ties: the least cost), reconstructed backwards
    c = need + int(np.argmin(best[need:]))
    chosen: dict[str, str] = {}
    for g in range(len(units) - 1, -1, -1):
        k = int(pick[g, c])
        if k:
            name = list(options[units[g]])[k - 1]
            chosen[units[g]] = name
            c -= w[(units[g], name)]
    assert c == 0, "multiple-choice knapsack reconstruction did not return to cost 0"
    chosen = {u: chosen[u] for u in units if u in chosen}
    real = sum(float(options[u][ch][1]) for u, ch in chosen.items())
    if real < budget:
        raise RuntimeError(f"choices {chosen} save {real!r} < budget {budget!r} (quantum {q!r}); please report")
    return ChoiceSolution(chosen, sum(float(options[u][ch][0]) for u, ch in chosen.items()), real, float(budget), q)


def solve_choices_valid(options: Mapping[str, Mapping[str, tuple[float, float]]], budget: float,
                        validate: Callable[[list[str]], None],
                        resolution: int = knapsack.DEFAULT_RESOLUTION) -> ChoiceSolution:
    """`solve_choices`, then `validate(removed units)`; a refused set loses its culprit's "remove" option."""
    options = {u: dict(o) for u, o in options.items()}
    repairs: list[dict] = []
    while True:
        sol = solve_choices(options, budget, resolution)
        removed = [u for u, ch in sol.chosen.items() if ch == REMOVE]
        try:
            validate(removed)
        except ValueError as e:
            culprit = knapsack.find_culprit(removed, validate)
            repairs.append({"refused": removed, "kept": culprit, "reason": str(e)})
            del options[culprit][REMOVE]
            continue
        sol.repairs = repairs
        return sol


def replacement_costs(model, metric: str, replacements: dict[str, dict[str, tuple[str, dict]]], lut=None,
                      context_length: int = 77) -> dict[str, dict[str, float]]:
    """{unit: {option: what replacing it saves in `metric`}}, read from one network per option with every
    unit of that option replaced (latency: the table, extended with the new units' signatures)."""
    base = _unit_metric(model, metric, lut, context_length)
    out: dict[str, dict[str, float]] = {u: {} for u in replacements}
    for option in dict.fromkeys(o for opts in replacements.values() for o in opts):
        swapped = apply_replacements(model, {u: o[option] for u, o in replacements.items() if option in o})
        after = _unit_metric(swapped, metric, lut, context_length)
        for u, opts in replacements.items():
            if option in opts:
                out[u][option] = base[u] - after[u]
    return out


def _unit_metric(model, metric: str, lut, context_length: int) -> dict[str, float]:
    if metric == "params":
        return {u.name: float(u.params) for u in model.units()}
    if metric == "flops":
        return model_flops(model, context_length)[1]
    try:
        return lut.breakdown(model)
    except LUTMissError:
        lut.extend(model)
        return lut.breakdown(model)


def apply_choices(model, chosen: Mapping[str, str], repl: dict | None = None):
    """The student `chosen` ({unit: "remove" | a replacement option}, as `ChoiceResult.chosen` and
    recipe.json's `search.chosen` hold it) describes: replacements first (names unchanged), then removals.
    The same choices apply to any U-Net of the same structure (a toy twin, sd15-arch)."""
    model = as_slim(model)
    options = tuple(dict.fromkeys(c for c in chosen.values() if c != REMOVE))
    repl = replacement_options(model, options=options) if repl is None else repl
    bad = [(u, c) for u, c in chosen.items() if c != REMOVE and c not in repl.get(u, {})]
    if bad:
        raise ValueError(f"units cannot take these replacements: {bad} (options: {list(REPLACEMENTS)})")
    swapped = apply_replacements(model, {u: repl[u][c] for u, c in chosen.items() if c != REMOVE})
    return remove_units(swapped, [u for u, c in chosen.items() if c == REMOVE])


@dataclasses.dataclass
class ChoiceResult:
    """What the multiple-choice search decided (the `search` entry of recipe.json)."""

    budget: str
    criterion: dict
    options: dict[str, dict[str, dict]]  # unit -> choice -> {"score", "saved"}
    total: float
    chosen: dict[str, str]  # unit -> "remove" | option
    predicted_ratio: float
    measured_ratio: float
    score_sum: float
    quantum: float
    repairs: list[dict]
    measured_other: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_recipe(self) -> dict:
        return {"method": "laptop-choices", **dataclasses.asdict(self),
                "removed": [u for u, c in self.chosen.items() if c == REMOVE],
                "replaced": {u: c for u, c in self.chosen.items() if c != REMOVE},
                "knapsack": {"solver": "exact multiple-choice DP over discretised costs", "quantum": self.quantum}}


def laptop_choose(model, criterion, budget: Budget, options: tuple[str, ...] = tuple(REPLACEMENTS), lut=None,
                  context_length: int = 77, resolution: int = knapsack.DEFAULT_RESOLUTION, measure: bool = True,
                  wallclock: bool = False, scores: Mapping[tuple[str, str], float] | None = None,
                  no_removal: tuple[str, ...] = ()):
    """Keep / remove / replace per unit under `budget` (module docstring). Returns (student, ChoiceResult).

    `criterion`: an `OutputLossCriterion` (removal scores L({u}); replacement scores L of the network with
    u replaced), or None with `scores` {(unit, choice): score} given (e.g. scored on a smaller twin of the
    same structure while the costs come from `model`'s table). `no_removal`: units that may be kept or
    replaced but never removed (e.g. the highest-resolution transformers, whose cross-attention a design
    keeps). A numbered-step orchestration (1-5).
    """
    model = as_slim(model)
    # 1. the choices: removals LAPTOP accepts (none of `no_removal`), the replacements each plain unit can take
    names = {u.name for u in model.units()}
    unknown = [u for u in no_removal if u not in names]
    if unknown:
        raise ValueError(f"no_removal names units the model does not have: {unknown}")
    candidates = [u for u in removable_units(model) if u not in no_removal]
    repl = replacement_options(model, options=options)
    account = BudgetAccount.build(model, budget.metric, candidates, lut, context_length)
    saved_repl = replacement_costs(model, budget.metric, repl, lut, context_length)
    # 2. scores: the criterion's output loss for every removal and every replacement
    if scores is None:
        removal = criterion(model, candidates)
        scores = {(u, REMOVE): s for u, s in removal.items()}
        for u, opts in repl.items():
            for o, r in opts.items():
                scores[(u, o)] = criterion.loss_of_model(model, apply_replacements(model, {u: r}))
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for u in dict.fromkeys(candidates + list(repl)):
        table[u] = {REMOVE: (scores[(u, REMOVE)], account.unit_costs[u])} if u in candidates else {}
        table[u] |= {o: (scores[(u, o)], max(0.0, saved_repl[u][o])) for o in repl.get(u, {})}
    # 3. the multiple-choice knapsack, removals checked by the real edit
    sol = solve_choices_valid(table, account.required(budget.ratio), lambda names: check_removal(model, names),
                              resolution)
    # 4. edit: replacements first (names unchanged), then removals
    student = apply_choices(model, sol.chosen, repl)
    # 5. measure
    measured, other = float("nan"), {"params": measure_ratio(model, student, "params")}
    if measure:
        if budget.metric == "latency":
            _unit_metric(student, "latency", lut, context_length)  # extend the table if needed
        measured = measure_ratio(model, student, budget.metric, lut, context_length)
    if wallclock and lut is not None:
        other["latency_wallclock"] = measure_wallclock_ratio(model, student, lut)
    result = ChoiceResult(
        budget=str(budget), criterion=criterion.describe() if criterion is not None else {"name": "given"},
        options={u: {c: {"score": s, "saved": w} for c, (s, w) in o.items()} for u, o in table.items()},
        total=account.total, chosen=dict(sol.chosen), predicted_ratio=sol.cost / account.total,
        measured_ratio=measured, score_sum=sol.score, quantum=sol.quantum, repairs=sol.repairs, measured_other=other)
    return student, result
