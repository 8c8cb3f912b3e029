"""slimdiff.prune: choose what to remove automatically (METHODS.md sections 3 and 5).

    from slimdiff.prune import Budget, OutputLossCriterion, laptop_select, toy_calibration
    crit = OutputLossCriterion(toy_calibration(pipe))                 # LAPTOP-Diff output loss
    student, result = laptop_select(teacher, crit, Budget.parse("params=0.5"))

A criterion scores units (`criteria`: output loss, magnitude, random; `calibration`: the set the
output loss is estimated on); a search chooses under a budget (`laptop`: one-shot exact 0/1
knapsack, `knapsack`; `evolve`: SnapFusion's architecture evolving; `search`: one entry point,
`run_search(SearchConfig(...))`, for both); `additivity` measures
whether one-shot selection is sound; `report` writes the table, plot and recipe fields.
Hand-designed presets live in `slimdiff.unet.presets`.
"""

from .additivity import AdditivityResult, additivity_study, plot_additivity
from .calibration import (
    CalibrationConfig,
    CalibrationSet,
    calibration_for,
    pipeline_calibration,
    random_calibration,
    toy_calibration,
)
from .criteria import CRITERIA, Criterion, MagnitudeCriterion, OutputLossCriterion, RandomCriterion, removable_units
from .evolve import (
    EvolveConfig,
    EvolveResult,
    RobustTrainer,
    ToyAlignmentScore,
    evolve,
    robust_train,
    toy_alignment_score,
)
from .knapsack import BudgetError, KnapsackSolution, solve, solve_valid
from .laptop import Budget, BudgetAccount, LaptopResult, laptop_select, latency_table
from .report import plot_unit_scores, write_search_report
from .search import SearchConfig, run_search, save_search

__all__ = [
    "AdditivityResult", "Budget", "BudgetAccount", "BudgetError", "CRITERIA", "CalibrationConfig",
    "CalibrationSet", "Criterion", "EvolveConfig", "EvolveResult", "KnapsackSolution", "LaptopResult",
    "MagnitudeCriterion", "OutputLossCriterion", "RandomCriterion", "RobustTrainer", "SearchConfig",
    "ToyAlignmentScore", "additivity_study", "calibration_for", "evolve", "laptop_select", "latency_table",
    "pipeline_calibration", "plot_additivity", "plot_unit_scores", "random_calibration", "removable_units",
    "robust_train", "run_search", "save_search", "solve", "solve_valid", "toy_alignment_score",
    "toy_calibration", "write_search_report",
]
