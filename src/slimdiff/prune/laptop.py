"""One-shot budgeted layer pruning (LAPTOP-Diff, METHODS.md section 3).

    student, result = laptop_prune(teacher, OutputLossCriterion(calib), Budget.parse("params=0.5"))

1. candidates: every ResNet and Transformer unit whose removal alone is accepted;
2. score each candidate once with a criterion (`slimdiff.prune.criteria`);
3. cost of each candidate under the budget metric (the budget accounting below);
4. choose the set minimising the summed score while removing at least `ratio` of the whole
   U-Net's metric: exact 0/1 knapsack (`slimdiff.prune.knapsack`), checked and repaired with
   `check_removal` (structural; no tensor copied);
5. remove it, and measure the budget actually removed.

Budget accounting. A budget is a pruning ratio of one metric of the WHOLE U-Net (stem and
samplers included, so a ratio the candidates cannot reach raises `BudgetError`):
- `params`: parameter count. cost(u) = parameters of unit u.
- `flops`: FLOPs (2 x MACs, attention matmuls included) of one forward at the model's sample
  size and `context_length` text tokens, counted by `slimdiff.profile.profile_unet`.
  cost(u) = the FLOPs counted inside unit u.
- `latency`: milliseconds predicted by the latency lookup table (`slimdiff.profile.LatencyLUT`).
  cost(u) = the table's entry for unit u (`lut.breakdown`); the total includes the stem overhead.
predicted ratio = sum_{u in S} cost(u) / total (what the knapsack assumed: additive costs);
measured ratio  = 1 - metric(model - S) / metric(model), the metric recomputed on the edited
network (for latency: the table's prediction for it; with `wallclock=True` the timed ratio is
added as `measured_other["latency_wallclock"]`). They differ when removals interact (a unit
whose input changes, a skip no longer stored). Both go in the recipe.
Costs can be injected (`BudgetAccount(...)`) so the search is testable without a profiler.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

from slimdiff.profile import LatencyLUT, ProfileSettings, model_latencies, profile_unet
from slimdiff.unet import check_removal, remove_units, resolve_source, text_width
from slimdiff.sample import load_pipeline

from . import knapsack
from .criteria import Criterion, as_slim, removable_units

METRICS = ("params", "flops", "latency")


@dataclasses.dataclass(frozen=True)
class Budget:
    metric: str = "params"  # one of METRICS
    ratio: float = 0.5  # fraction of the whole U-Net's metric to remove, in (0, 1)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"budget metric {self.metric!r} is not one of {list(METRICS)}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"budget ratio must be in (0, 1), got {self.ratio}")

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """`"params=0.5"` -> Budget("params", 0.5)."""
        metric, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"budget {text!r} must look like METRIC=RATIO, e.g. params=0.5 (metrics: {list(METRICS)})")
        try:
            ratio = float(value)
        except ValueError:
            raise ValueError(f"budget {text!r}: ratio {value!r} is not a number") from None
        return cls(metric.strip(), ratio)

    def __str__(self) -> str:
        return f"{self.metric}={self.ratio:g}"


def model_flops(model, context_length: int = 77) -> tuple[float, dict[str, float]]:
    """(total FLOPs, FLOPs per unit and per inner block) of one forward at the model's sample size (`slimdiff.profile`)."""
    p = next(model.parameters())
    size = model.config.sample_size
    size = size if isinstance(size, int) else size[0]
    settings = ProfileSettings(latent_size=size, measure_latency=False, context_length=context_length,
                               device=p.device.type, dtype=str(p.dtype).removeprefix("torch."))
    result = profile_unet(model, settings)
    return float(result.total.flops), {r.name: float(r.flops) for r in result.units + result.inner}


def metric_function(metric: str, lut=None, context_length: int = 77) -> Callable[[object], float]:
    """model -> value of `metric` for a whole U-Net (params; FLOPs; LUT-predicted ms)."""
    if metric == "params":
        return lambda m: float(m.num_parameters())
    if metric == "flops":
        return lambda m: model_flops(m, context_length)[0]
    if metric == "latency":
        if lut is None:
            raise ValueError("a latency budget needs a latency lookup table (slimdiff.profile.LatencyLUT)")
        return lambda m: float(lut.predict(m))
    raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")


@dataclasses.dataclass
class BudgetAccount:
    """What removing each candidate saves, and the whole model's total, in one metric."""

    metric: str
    total: float  # metric of the whole U-Net
    unit_costs: dict[str, float]  # unit -> what removing it alone saves

    def __post_init__(self):
        if self.total <= 0:
            raise ValueError(f"total {self.metric} must be > 0, got {self.total}")

    def required(self, ratio: float) -> float:
        """The cost to remove for a pruning ratio: ratio * total."""
        return ratio * self.total

    def predicted_ratio(self, removed: Sequence[str]) -> float:
        """sum_{u in S} cost(u) / total (additive prediction)."""
        missing = [u for u in removed if u not in self.unit_costs]
        if missing:
            raise ValueError(f"no {self.metric} cost for units {missing}")
        return sum(self.unit_costs[u] for u in removed) / self.total

    @classmethod
    def build(cls, model, metric: str, candidates: Sequence[str], lut=None,
              context_length: int = 77) -> "BudgetAccount":
        """Per-unit costs of `candidates` in `metric` (module docstring)."""
        model = as_slim(model)
        if metric == "params":
            per_unit = {u.name: float(u.params) for u in model.units(inner=True)}
            total = float(model.num_parameters())
        elif metric == "flops":
            total, per_unit = model_flops(model, context_length)
        elif metric == "latency":
            if lut is None:
                raise ValueError("a latency budget needs a latency lookup table (slimdiff.profile.LatencyLUT)")
            per_unit = lut.breakdown(model, inner=True)  # ms per unit name (and inner block), plus "other"
            total = float(lut.predict(model))
        else:
            raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")
        missing = [u for u in candidates if u not in per_unit]
        if missing:
            raise ValueError(f"no {metric} figure for candidate units {missing}")
        return cls(metric, total, {u: per_unit[u] for u in candidates})


def measure_ratio(model, pruned, metric: str, lut=None, context_length: int = 77) -> float:
    """1 - metric(pruned) / metric(model): the ratio really removed."""
    f = metric_function(metric, lut, context_length)
    return 1.0 - f(pruned) / f(model)


def lut_wallclock_ms(models: dict, lut) -> dict[str, float]:
    """Measured median ms of one whole forward per model, with the lookup table's settings
    (latent, text length, batch, threads, warm-up, repeats), all timed round-robin."""
    s = lut.settings
    first = next(iter(models.values()))
    return model_latencies(models, s.latent, text_width(first), batch=s.batch,
                           context_length=s.context_length, warmup=s.warmup, repeats=s.repeats,
                           clock=s.clock, threads=s.threads)


def measure_wallclock_ratio(model, pruned, lut) -> float:
    """1 - time(pruned) / time(model), timed together with the lookup table's settings."""
    ms = lut_wallclock_ms({"model": model, "pruned": pruned}, lut)
    return 1.0 - ms["pruned"] / ms["model"]


@dataclasses.dataclass
class LaptopResult:
    """Everything the search decided, for recipe.json and the report."""

    budget: str  # e.g. "params=0.5"
    criterion: dict  # the criterion's settings
    candidates: list[str]
    scores: dict[str, float]  # criterion score per candidate (lower = removed first)
    costs: dict[str, float]  # budget-metric cost per candidate
    total: float  # the whole model's budget metric
    removed: list[str]  # units removed (knapsack choice, after repairs)
    predicted_ratio: float  # sum of removed costs / total
    measured_ratio: float  # 1 - metric(student) / metric(teacher)
    score_sum: float  # sum of removed scores (the knapsack objective)
    quantum: float  # knapsack cost discretisation step, in the metric's unit
    repairs: list[dict]  # refused choices and the unit kept to repair each
    measured_other: dict[str, float] = dataclasses.field(default_factory=dict)  # ratios of other metrics

    def to_recipe(self) -> dict:
        """The `search` entry of recipe.json."""
        b = Budget.parse(self.budget)
        return {
            "method": "laptop",
            "budget": {
                "spec": self.budget,
                "metric": b.metric,
                "ratio": b.ratio,
                "total": self.total,
                "required": b.ratio * self.total,
                "predicted_ratio": self.predicted_ratio,
                "measured_ratio": self.measured_ratio,
                "measured_other": self.measured_other,
            },
            "criterion": self.criterion,
            "candidates": self.candidates,
            "scores": self.scores,
            "costs": self.costs,
            "removed": self.removed,
            "score_sum": self.score_sum,
            "knapsack": {"solver": "exact DP over discretised costs", "quantum": self.quantum},
            "repairs": self.repairs,
        }


def laptop_select(
    model,
    criterion: Criterion | Mapping[str, float],
    budget: Budget,
    candidates: Sequence[str] | None = None,
    account: BudgetAccount | None = None,
    lut=None,
    context_length: int = 77,
    resolution: int = knapsack.DEFAULT_RESOLUTION,
    measure: bool = True,
    wallclock: bool = False,
):
    """Steps 1-5 of the module docstring. Returns (student, LaptopResult).

    `criterion` may be a precomputed {unit: score} dict (e.g. scores reused across budgets);
    `account` injects the costs. `lut`: the latency table (latency budgets). `context_length`:
    text tokens for FLOPs counting. `measure=False` skips measuring the edited network (the
    measured ratio is then NaN); `wallclock=True` also times teacher and student (latency).
    """
    model = as_slim(model)
    # 1. candidates
    if candidates is None:
        candidates = removable_units(model)
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no removable units: every unit's removal is refused")
    # 2. scores
    if isinstance(criterion, Criterion):
        scores, crit_info = criterion(model, candidates), criterion.describe()
    else:
        scores, crit_info = {u: float(criterion[u]) for u in candidates}, {"name": "given"}
    # 3. costs
    if account is None:
        account = BudgetAccount.build(model, budget.metric, candidates, lut, context_length)
    # 4. knapsack, checked by the real edit
    sol = knapsack.solve_valid(
        {u: scores[u] for u in candidates},
        {u: account.unit_costs[u] for u in candidates},
        account.required(budget.ratio),
        validate=lambda names: check_removal(model, names),  # structural: no tensor is copied
        resolution=resolution,
    )
    # 5. edit and measure
    student = remove_units(model, sol.chosen)
    measured, other = float("nan"), {"params": measure_ratio(model, student, "params")}
    if measure:
        measured = measure_ratio(model, student, budget.metric, lut, context_length)
    if wallclock and lut is not None:
        other["latency_wallclock"] = measure_wallclock_ratio(model, student, lut)
    result = LaptopResult(
        budget=str(budget),
        criterion=crit_info,
        candidates=candidates,
        scores=dict(scores),
        costs=dict(account.unit_costs),
        total=account.total,
        removed=list(sol.chosen),
        predicted_ratio=account.predicted_ratio(sol.chosen),
        measured_ratio=measured,
        score_sum=sol.score,
        quantum=sol.quantum,
        repairs=sol.repairs,
        measured_other=other,
    )
    return student, result


laptop_prune = laptop_select  # the name the issue and the CLI use


def context_length_for(source) -> int:
    """Text tokens the model sees: its pipeline tokenizer's max length, else CLIP's 77."""
    if resolve_source(source)[0] != "pipeline":
        return 77
    return int(load_pipeline(source).tokenizer.model_max_length)


def latency_table(model, path=None, context_length: int = 77, repeats: int = 3, progress: bool = False):
    """The latency lookup table for `model`: loaded from `path` (extended with any missing unit),
    or built on `model` at its sample size with the profile defaults (float32, CPU)."""
    if path is not None:
        lut = LatencyLUT.load(path)
        lut.extend(model, progress=progress)
        return lut
    size = model.config.sample_size
    size = size if isinstance(size, int) else size[0]
    settings = ProfileSettings(latent_size=size, repeats=repeats, context_length=context_length)
    return LatencyLUT.build(model, settings, progress=progress)
