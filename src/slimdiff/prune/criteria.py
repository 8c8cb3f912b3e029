"""Unit-importance criteria: a criterion scores, a search chooses (STYLE.md habit 3).

Every criterion is a callable

    criterion(model, candidates) -> {unit_name: score}

where a LOWER score means the unit is less important (removed first). Criteria never decide
how much to remove; `slimdiff.prune.laptop` (knapsack under a budget) and
`slimdiff.prune.evolve` do. Like Torch-Pruning's `Importance.__call__(group)` vs its pruner.

- `OutputLossCriterion` (LAPTOP-Diff, METHODS.md 3): L({u}) = mean over a calibration set of
  the mean squared difference between the full and the u-removed U-Net's outputs. It also
  evaluates L(S) for any set (used by the additivity study).
- `MagnitudeCriterion` (baseline): L1 norm of the unit's weights.
- `RandomCriterion` (baseline): seeded uniform scores.
`CRITERIA` maps the CLI names (`output`, `magnitude`, `random`) to the classes.
"""

from __future__ import annotations

import abc
import json
from typing import Sequence

import numpy as np
import torch

from slimdiff.train.maths import DEFAULT_GUIDANCE, timestep_cond
from slimdiff.unet import UNetEditError, check_removal, get_module, remove_units, to_slim

from .calibration import CalibrationSet

CANDIDATE_KINDS = ("resnet", "attn")  # LAPTOP-Diff prunes ResNet and Transformer units
# LAPTOP's candidates: a Transformer unit of depth > 1 (SDXL) is one through its inner blocks
# ("tblock"), removing all of which removes the unit
LAPTOP_KINDS = CANDIDATE_KINDS + ("tblock",)


def as_slim(model):
    """The editable `SlimUNet2DConditionModel` for `model` (imported losslessly if diffusers)."""
    return to_slim(model)


def removable_units(model, kinds: Sequence[str] = LAPTOP_KINDS) -> list[str]:
    """Names of the units of `kinds` whose removal alone keeps the network well formed
    (`remove_units` accepts it), in forward order. Refused units are not candidates. When
    "tblock" is among `kinds`, a Transformer unit of depth > 1 is represented by its inner
    blocks only (no candidate contains another, so the knapsack's costs add up).

    Removability depends on the structure only (`check_removal` validates without building),
    and the answer is cached per structure.
    """
    model = as_slim(model)
    key = json.dumps([model.config.blocks, model.base_config(), list(kinds)], sort_keys=True, default=str)
    if key not in _REMOVABLE_CACHE:
        out = []
        infos = model.units(inner="tblock" in kinds)
        deep = {u.parent for u in infos if u.parent}
        for info in infos:
            if info.kind not in kinds or (info.name in deep and "tblock" in kinds):
                continue
            try:
                check_removal(model, [info.name])
            except UNetEditError:
                continue
            out.append(info.name)
        if len(_REMOVABLE_CACHE) >= 16:
            _REMOVABLE_CACHE.pop(next(iter(_REMOVABLE_CACHE)))
        _REMOVABLE_CACHE[key] = out
    return list(_REMOVABLE_CACHE[key])


_REMOVABLE_CACHE: dict[str, list[str]] = {}  # structure -> removable unit names


class Criterion(abc.ABC):
    """Scores units: `criterion(model, candidates) -> {name: score}`, lower = remove first."""

    name: str = "criterion"

    @abc.abstractmethod
    def __call__(self, model, candidates: Sequence[str]) -> dict[str, float]: ...

    def describe(self) -> dict:
        """The criterion's settings, for recipe.json."""
        return {"name": self.name}


class OutputLossCriterion(Criterion):
    """L({u}) = 1/N sum_i mean((eps_full(x_i, t_i, c_i) - eps_{-u}(x_i, t_i, c_i))^2).

    The mean is over the output elements (C*H*W) and the N calibration triples, so scores are
    comparable across resolutions and calibration sizes. `loss(model, S)` gives L(S) for a set.
    Removal is structural (`slimdiff.unet.remove_units`), exactly what the pruned student is.
    """

    name = "output"

    def __init__(self, calibration: CalibrationSet, batch_size: int | None = None, progress: bool = False):
        self.calibration = calibration
        self.batch_size = batch_size or calibration.config.batch_size
        self.progress = progress
        self._ref_model = None  # the model the cached reference outputs belong to (held, so ids stay unique)
        self._ref: list[torch.Tensor] = []

    def describe(self) -> dict:
        return {"name": self.name, "calibration": self.calibration.describe()}

    @torch.no_grad()
    def _outputs(self, model) -> list[torch.Tensor]:
        """The model's outputs on the calibration set: list of (B, C, H, W), fixed batching."""
        model.eval()
        p = next(model.parameters())
        outs = []
        for x, t, c, added in self.calibration.batches(self.batch_size):
            x, c = x.to(p.device, p.dtype), c.to(p.device, p.dtype)
            if added is not None:  # SDXL: pooled text and time ids
                added = {k: v.to(p.device, p.dtype) for k, v in added.items()}
            # a guidance-embedded (LCM-style) U-Net reads w as its pipeline feeds it (default guidance)
            out = model(x, t.to(p.device), encoder_hidden_states=c, added_cond_kwargs=added,
                        timestep_cond=timestep_cond(model, DEFAULT_GUIDANCE, x.shape[0], x), return_dict=False)[0]
            outs.append(out.float())
        return outs

    def reset(self) -> None:
        """Forget the cached reference outputs (after editing the last model's weights in place)."""
        self._ref_model, self._ref = None, []

    def reference(self, model) -> list[torch.Tensor]:
        """eps_full on the calibration set (cached for the last model object seen)."""
        if self._ref_model is not model:
            self._ref = self._outputs(model)
            self._ref_model = model
        return self._ref

    def loss_of_model(self, full, pruned) -> float:
        """L between two models' outputs on the calibration set."""
        ref = self.reference(full)
        outs = self._outputs(pruned)
        total = sum(float(((a - b) ** 2).sum()) for a, b in zip(ref, outs))
        return total / sum(r.numel() for r in ref)

    def loss(self, model, removed: Sequence[str]) -> float:
        """L(S): the output loss of removing the set `removed` from `model`."""
        model = as_slim(model)
        return self.loss_of_model(model, remove_units(model, list(removed)))

    def __call__(self, model, candidates: Sequence[str]) -> dict[str, float]:
        model = as_slim(model)
        names = list(candidates)
        it = names
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(names, desc="output-loss criterion", unit="unit")
        return {u: self.loss(model, [u]) for u in it}


class MagnitudeCriterion(Criterion):
    """||W_u||_1: the L1 norm of the unit's weight tensors (those with ndim >= 2: conv and
    linear weights; biases and norm scales are left out). `reduction="mean"` divides by the
    number of those weights (a per-weight magnitude, not biased toward large units)."""

    name = "magnitude"

    def __init__(self, reduction: str = "sum"):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def describe(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}

    @torch.no_grad()
    def __call__(self, model, candidates: Sequence[str]) -> dict[str, float]:
        out = {}
        for u in candidates:
            ws = [p for p in get_module(model, u).parameters() if p.ndim >= 2]
            if not ws:
                raise ValueError(f"unit {u!r} has no weight tensors (ndim >= 2) to measure")
            total = sum(float(w.detach().abs().sum()) for w in ws)
            if self.reduction == "mean":
                total /= sum(w.numel() for w in ws)
            out[u] = total
        return out


class RandomCriterion(Criterion):
    """Uniform [0, 1) scores from `seed`; a unit's score depends on the seed and its name only
    (not on the candidate order)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed}

    def __call__(self, model, candidates: Sequence[str]) -> dict[str, float]:
        order = sorted(candidates)
        values = np.random.default_rng(self.seed).random(len(order))
        by_name = dict(zip(order, values.tolist()))
        return {u: by_name[u] for u in candidates}


# CLI name -> criterion class
CRITERIA: dict[str, type[Criterion]] = {
    "output": OutputLossCriterion,
    "magnitude": MagnitudeCriterion,
    "random": RandomCriterion,
}
