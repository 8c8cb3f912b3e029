"""One entry point for the automatic searches: `run_search(SearchConfig(...)) -> (student, recipe)`.

    from slimdiff.prune import SearchConfig, run_search, save_search
    config = SearchConfig(model="toy", method="laptop", budget="params=0.5", out="runs/laptop")
    student, recipe = run_search(config)        # LAPTOP-Diff one-shot (METHODS.md section 3)
    save_search(student, recipe, config)        # student, recipe.json, search.md, unit_scores.png

    config = SearchConfig(model="toy", method="evolve", target_latency_ms=9.5, stochastic_depth=0.1,
                          out="runs/evolve")
    student, recipe = run_search(config)        # SnapFusion architecture evolving (section 5)

`slimdiff prune MODEL --search laptop|evolve ...` maps its flags to a `SearchConfig` and calls
these. What each step does:
1. the teacher, in the editable representation;
2. laptop: the criterion (output loss on a calibration set, magnitude, random), the latency table
   for a latency budget, the knapsack (`laptop_select`);
   evolve: the latency table (`lut`, else built on the teacher), the score (`score_fn`, default
   the toy judge's `ToyAlignmentScore`), robust training interleaved with the rounds
   (`RobustTrainer`, when `stochastic_depth` > 0), the loop (`evolve`), the result's wall-clock;
3. the recipe: the search's own result plus every setting needed to rerun it (this config,
   the score's and the latency table's settings).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from slimdiff.sample import is_toy_pipeline, resolve_pipeline
from slimdiff.unet import load_unet, save_student, to_slim

from slimdiff.modules.mobilediffusion import REPLACEMENTS

from .calibration import CalibrationConfig, calibration_for
from .choices import laptop_choose
from .criteria import CRITERIA, MagnitudeCriterion, OutputLossCriterion, RandomCriterion
from .evolve import EvolveConfig, RobustTrainer, describe_score, evolve, toy_alignment_score
from .laptop import Budget, context_length_for, laptop_select, latency_table, lut_wallclock_ms
from .report import write_search_report

SEARCHES = ("laptop", "evolve")


@dataclasses.dataclass
class SearchConfig:
    model: str  # the teacher: "toy", "sd15-arch", a pipeline or U-Net directory (anything `load_unet` takes)
    method: str = "laptop"  # "laptop" (LAPTOP-Diff one-shot knapsack) | "evolve" (SnapFusion Algorithm 1)
    out: str | None = None  # output directory (save_search); evolve's robust training runs in out/robust
    seed: int = 0  # calibration set, random criterion, score images, robust training
    lut: str | None = None  # latency lookup table JSON (extended with missing units); None: built on the teacher
    lut_repeats: int = 3  # timed rounds per table entry when the table is built
    # --- laptop (METHODS.md section 3)
    budget: str = "params=0.5"  # METRIC=RATIO: fraction of params, flops or latency to remove
    criterion: str = "output"  # "output" (LAPTOP-Diff output loss) | "magnitude" | "random" (baselines)
    calib_size: int = 32  # calibration triples (prompt, timestep, noise) for the output loss
    calib_prompts: list[str] | None = None  # calibration prompts for non-toy pipelines
    # --- both: replace actions (cheaper MobileDiffusion unit types, slimdiff.modules.mobilediffusion.REPLACEMENTS)
    replace: tuple[str, ...] = ()  # e.g. ("separable", "cross_only", "trim"); laptop: a multiple-choice knapsack
    # --- evolve (METHODS.md section 5)
    target_latency_ms: float | None = None  # the latency objective (lookup-table ms); required for evolve
    max_rounds: int = 100  # architecture actions at most
    allow_add: bool = True  # add copies of useful units when under target (SnapFusion); False: remove only
    score_tolerance: float = 0.0  # a dScore at or below this counts as 0 (the score's noise level)
    stochastic_depth: float = 0.0  # robust-training skip probability; 0: no training (model robust already)
    robust_steps: int = 200  # robust-training steps before the first round
    robust_steps_per_round: int = 50  # robust-training steps before every later round and after the last
    robust_batch_size: int = 8  # robust-training batch
    robust_data: str = "toy"  # robust-training data (`DistillConfig.data`)
    score_split: str = "validation"  # toy score: prompts from this split (the test split stays unseen)
    score_images: int = 32  # toy score: images per evaluation
    score_steps: int = 20  # toy score: sampler steps per image

    def __post_init__(self):
        if self.method not in SEARCHES:
            raise ValueError(f"search method {self.method!r} is not one of {list(SEARCHES)}")
        if not self.model:
            raise ValueError("SearchConfig.model: give the teacher ('toy', 'sd15-arch' or a directory)")
        Budget.parse(self.budget)  # raises for a malformed budget
        self.replace = tuple(self.replace)
        bad = [o for o in self.replace if o not in REPLACEMENTS]
        if bad:
            raise ValueError(f"SearchConfig.replace {bad} are unknown; valid: {list(REPLACEMENTS)}")
        if self.replace and self.method == "laptop" and self.criterion != "output":
            raise ValueError(f"replace actions are scored by the output loss; criterion {self.criterion!r} cannot "
                             "score a replacement (use criterion='output')")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion {self.criterion!r} is not one of {list(CRITERIA)}")
        for name in ("calib_size", "lut_repeats", "max_rounds", "robust_steps", "robust_steps_per_round",
                     "robust_batch_size", "score_images", "score_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise ValueError(f"stochastic_depth must be in [0, 1), got {self.stochastic_depth}")
        if self.method == "evolve":
            if self.target_latency_ms is None or not self.target_latency_ms > 0:
                raise ValueError(f"evolve needs target_latency_ms > 0 (lookup-table ms; `slimdiff profile` gives "
                                 f"the teacher's), got {self.target_latency_ms}")
            if self.stochastic_depth > 0 and not self.out:
                raise ValueError("robust training (stochastic_depth > 0) needs out, its work directory")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_search(config: SearchConfig, score_fn: Callable[[Any], float] | None = None, progress: bool = True):
    """Steps 1-3 of the module docstring. Returns (student, recipe), recipe = {"search": {...}}.

    `score_fn(unet) -> float` (evolve; higher is better) replaces the toy judge's score, which
    only the toy world has.
    """
    # 1. teacher, in the editable representation
    teacher = to_slim(load_unet(config.model)).eval()
    # 2. search
    if config.method == "laptop":
        student, search = _laptop(config, teacher, progress)
    else:
        student, search = _evolve(config, teacher, score_fn, progress)
    # 3. the recipe: the result, every setting, the candidates' kinds (for the report)
    search["search_config"] = config.to_dict()
    search["teacher_units"] = {u.name: u.kind for u in teacher.units()}
    return student, {"search": search}


def save_search(student, recipe: dict, config: SearchConfig) -> dict[str, Path]:
    """Write the student and recipe.json (`save_student`), then `search.md` and `unit_scores.png`."""
    if not config.out:
        raise ValueError("SearchConfig.out is not set: say where to save the student")
    written = save_student(student, config.out, source=config.model, recipe=recipe)
    units = recipe["search"]["teacher_units"]
    md, png = write_search_report(config.out, recipe, list(units), units)
    return {**written, "report": md, "plot": png}


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text)


def _criterion(config: SearchConfig, teacher, progress: bool):
    if config.criterion == "magnitude":
        return MagnitudeCriterion()
    if config.criterion == "random":
        return RandomCriterion(config.seed)
    calib = calibration_for(config.model, teacher, CalibrationConfig(size=config.calib_size, seed=config.seed),
                            config.calib_prompts)
    return OutputLossCriterion(calib, progress=progress)


def _lut(config: SearchConfig, teacher):
    lut = latency_table(teacher, config.lut, context_length_for(config.model), repeats=config.lut_repeats)
    return lut, {"path": config.lut, "built_on": "teacher" if config.lut is None else "file, extended",
                 "settings": dataclasses.asdict(lut.settings), "entries": len(lut)}


def _laptop(config: SearchConfig, teacher, progress: bool):
    budget = Budget.parse(config.budget)
    lut, lut_info = _lut(config, teacher) if budget.metric == "latency" else (None, None)
    if config.replace:
        student, r = laptop_choose(teacher, _criterion(config, teacher, progress), budget, config.replace, lut=lut,
                                   context_length=context_length_for(config.model), wallclock=lut is not None)
        _log(progress, f"laptop ({r.budget}, replace {list(config.replace)}): {r.chosen}; {budget.metric} removed: "
                       f"predicted {r.predicted_ratio:.3f}, measured {r.measured_ratio:.3f}")
        return student, {**r.to_recipe(), "lut": lut_info}
    student, r = laptop_select(teacher, _criterion(config, teacher, progress), budget, lut=lut,
                               context_length=context_length_for(config.model), wallclock=lut is not None)
    _log(progress, f"laptop ({r.criterion['name']}, {r.budget}): removed {len(r.removed)} of {len(r.candidates)} "
                   f"units; {budget.metric} removed: predicted {r.predicted_ratio:.3f}, "
                   f"measured {r.measured_ratio:.3f}")
    return student, {**r.to_recipe(), "lut": lut_info}


def _evolve(config: SearchConfig, teacher, score_fn, progress: bool):
    if score_fn is None:
        if not is_toy_pipeline(resolve_pipeline(config.model)):
            raise ValueError(f"evolve scores with the toy judge by default; {config.model!r} is not the toy world: "
                             "pass score_fn (run_search(config, score_fn=...))")
        score_fn = toy_alignment_score(config.model, config.score_split, config.score_images, config.score_steps,
                                       config.seed)
    evolve_config = EvolveConfig(target_latency_ms=config.target_latency_ms, max_rounds=config.max_rounds,
                                 allow_add=config.allow_add, score_tolerance=config.score_tolerance,
                                 replace=config.replace)
    lut, lut_info = _lut(config, teacher)
    train_fn = None
    if config.stochastic_depth > 0:
        train_fn = RobustTrainer(config.stochastic_depth, str(Path(config.out) / "robust"), pipeline=config.model,
                                 first_steps=config.robust_steps, steps=config.robust_steps_per_round,
                                 distill={"batch_size": config.robust_batch_size, "data": config.robust_data,
                                          "seed": config.seed})
    student, result = evolve(teacher, score_fn, lut, evolve_config, train_fn=train_fn,
                             progress=lambda a: _log(progress, f"round {a.round}: {a.action} {a.unit} "
                                                               f"-> {a.latency_after:.3f} ms"))
    result.measured_latency_ms = lut_wallclock_ms({"student": student}, lut)["student"]
    _log(progress, f"evolve: {result.initial_latency:.3f} -> {result.final_latency:.3f} ms predicted "
                   f"({result.measured_latency_ms:.3f} measured; target {config.target_latency_ms}); "
                   f"{len(result.actions)} actions, {result.trainings} robust trainings; {result.stop_reason}")
    robust = train_fn.to_dict() if train_fn is not None else None
    return student, {**result.to_recipe(), "score": describe_score(score_fn), "lut": lut_info,
                     "robust_training": robust}
