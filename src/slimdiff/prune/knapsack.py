"""Exact 0/1 knapsack for one-shot layer pruning (LAPTOP-Diff, METHODS.md section 3).

Given a score per candidate unit (lower = less harmful to remove) and a cost per unit (the
parameters, FLOPs or milliseconds its removal saves), choose the set S that

    minimises  sum_{u in S} score(u)   subject to   sum_{u in S} cost(u) >= budget

("removing at least the budget"). This is the covering form of the 0/1 knapsack; it is solved
exactly by dynamic programming over discretised costs.

Cost discretisation (stated, and conservative):
    quantum q = 1                          when every cost is an integer and total_cost <= resolution,
              = total_cost / resolution    otherwise
    item cost  c_i = floor(cost_i / q)       (rounded down)
    budget     B   = ceil(budget / q)        (rounded up)
Any set whose discretised cost reaches B really removes >= budget (floor/ceil only
under-count), so the returned set meets the real budget; `solve` checks that it does on the
real costs and raises otherwise. With q = 1 the solution is exactly optimal; otherwise it is
optimal among the sets whose rounded-down cost reaches the rounded-up budget, which can miss
a real optimum only when that optimum's slack is below n * q (n = number of candidates).

Ties: among sets of equal summed score, the one removing the least cost wins; among those, the
one that leaves out later candidates (in the given order). So the result is deterministic.

Well-formedness: some sets are not removable together (dependent units). `solve_valid` takes a
`validate(names)` callable (normally `slimdiff.unet.check_removal` on the model: a structural
check that builds nothing) and repairs a
refused choice: it finds the unit whose addition first makes the set refused (adding units in
the chosen order), keeps that unit (takes it out of the candidates) and solves again. Each
repair removes one candidate, so at most n solves happen; every repair is recorded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

DEFAULT_RESOLUTION = 20_000  # integer cost cells across the total cost (DP table: n x resolution)


class BudgetError(ValueError):
    """The budget cannot be met by removing any set of the candidates."""


@dataclasses.dataclass
class KnapsackSolution:
    chosen: list[str]  # the units to remove, in candidate order
    score: float  # sum of their scores
    cost: float  # sum of their real (undiscretised) costs
    budget: float  # the real budget that had to be reached
    quantum: float  # the cost discretisation step q
    repairs: list[dict] = dataclasses.field(default_factory=list)  # filled by solve_valid


def cost_quantum(costs: Sequence[float], resolution: int) -> float:
    """The discretisation step q of the module docstring (1 for small integer costs)."""
    total = float(sum(costs))
    all_int = all(float(c).is_integer() for c in costs)
    if all_int and total <= resolution:
        return 1.0
    return total / resolution


def check_instance(scores: Mapping[str, float], costs: Mapping[str, float], resolution: int) -> None:
    """ValueError unless `scores` and `costs` name the same units, costs are finite and >= 0, scores
    finite, and `resolution` >= 1."""
    names = list(scores)
    if set(names) != set(costs):
        raise ValueError(
            f"scores and costs must name the same units; only in scores: {sorted(set(names) - set(costs))}, "
            f"only in costs: {sorted(set(costs) - set(names))}"
        )
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    bad = {n: costs[n] for n in names if not (costs[n] >= 0 and math.isfinite(costs[n]))}
    if bad:
        raise ValueError(f"costs must be finite and >= 0, got {bad}")
    bad = {n: scores[n] for n in names if not math.isfinite(scores[n])}
    if bad:
        raise ValueError(f"scores must be finite, got {bad}")


def solve(
    scores: Mapping[str, float],
    costs: Mapping[str, float],
    budget: float,
    resolution: int = DEFAULT_RESOLUTION,
) -> KnapsackSolution:
    """Choose the units to remove: minimal summed score with summed cost >= `budget`.

    `scores` and `costs` map the same unit names; their order (that of `scores`) is the
    candidate order used for tie-breaking. Costs must be >= 0. Raises `BudgetError` naming the
    budget and the largest reachable cost when no set reaches the budget.
    """
    # 1. validate the instance
    check_instance(scores, costs, resolution)
    names = list(scores)
    cost_list = [float(costs[n]) for n in names]
    total = sum(cost_list)
    if budget <= 0:
        return KnapsackSolution([], 0.0, 0.0, float(budget), 1.0)
    if total < budget:
        raise BudgetError(
            f"budget {budget:g} cannot be met: removing all {len(names)} candidates saves only {total:g}"
        )

    # 2. discretise: item costs rounded down, budget rounded up (see module docstring)
    q = cost_quantum(cost_list, resolution)
    w = [int(math.floor(c / q)) for c in cost_list]  # no tolerance: a float error may only under-count
    need = int(math.ceil(budget / q))
    cap = sum(w)
    if cap < need:
        raise BudgetError(
            f"budget {budget:g} cannot be met after cost discretisation (quantum {q:g}): the "
            f"rounded-down costs reach {cap * q:g}; raise `resolution` (now {resolution})"
        )

    # 3. DP: best[c] = minimal summed score of a subset of the first i items with cost exactly c
    #    take[i, c] = item i is in that subset. Ties keep the subset without item i.
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    take = np.zeros((len(names), cap + 1), dtype=bool)
    for i, (wi, name) in enumerate(zip(w, names)):
        s = float(scores[name])
        cand = np.full(cap + 1, np.inf)
        cand[wi:] = best[: cap + 1 - wi] + s
        better = cand < best
        take[i] = better
        best = np.where(better, cand, best)

    # 4. the answer: minimal score over cost >= need; ties -> least cost (first index)
    tail = best[need:]
    c = need + int(np.argmin(tail))  # argmin returns the first (smallest-cost) minimum

    # 5. reconstruct backwards
    chosen = []
    for i in range(len(names) - 1, -1, -1):
        if take[i, c]:
            chosen.append(names[i])
            c -= w[i]
    assert c == 0, "knapsack reconstruction did not return to cost 0"
    chosen.reverse()
    # 6. the real costs of the choice meet the real budget (what the discretisation guarantees)
    real = float(sum(costs[n] for n in chosen))
    if real < budget:
        raise RuntimeError(f"knapsack chose {chosen} costing {real!r} < budget {budget!r} (quantum {q!r}): "
                           "the discretisation under-counted; please report this instance")
    return KnapsackSolution(
        chosen=chosen,
        score=float(sum(scores[n] for n in chosen)),
        cost=real,
        budget=float(budget),
        quantum=q,
    )


def find_culprit(chosen: Sequence[str], validate: Callable[[list[str]], None]) -> str:
    """The first unit of `chosen` whose addition (in order) makes the prefix refused.

    `validate(names)` raises a `ValueError` (e.g. `UNetEditError`) when `names` cannot be
    removed together. Called only for a set already known to be refused.
    """
    prefix: list[str] = []
    for name in chosen:
        try:
            validate(prefix + [name])
        except ValueError:
            return name
        prefix.append(name)
    raise RuntimeError(f"validate refused {list(chosen)} but accepted every prefix of it, in order")


def solve_valid(
    scores: Mapping[str, float],
    costs: Mapping[str, float],
    budget: float,
    validate: Callable[[list[str]], None],
    resolution: int = DEFAULT_RESOLUTION,
) -> KnapsackSolution:
    """`solve`, then check the choice with `validate` and repair until it is accepted.

    Repair (module docstring): keep the culprit unit (drop it from the candidates) and solve
    again. Raises `BudgetError` when, after the repairs, the budget can no longer be met.
    """
    scores = dict(scores)
    costs = dict(costs)
    repairs: list[dict] = []
    while True:
        try:
            sol = solve(scores, costs, budget, resolution)
        except BudgetError as e:
            if not repairs:
                raise
            kept = [r["kept"] for r in repairs]
            raise BudgetError(f"{e} (after keeping {kept}, whose removal together with others was refused)") from None
        try:
            validate(list(sol.chosen))
        except ValueError as e:
            culprit = find_culprit(sol.chosen, validate)
            repairs.append({"refused": list(sol.chosen), "kept": culprit, "reason": str(e)})
            del scores[culprit], costs[culprit]
            continue
        sol.repairs = repairs
        return sol
