"""Architecture evolving (SnapFusion Algorithm 1, METHODS.md section 5).

    score = toy_alignment_score(num_images=32)                        # or any score_fn(unet) -> float
    train = robust_trainer(stochastic_depth=0.1, out="runs/robust")   # or None: the model is robust already
    student, result = evolve(teacher, score, lut, EvolveConfig(target_latency_ms=40.0), train_fn=train)

(`slimdiff.prune.run_search` wires these up from one `SearchConfig`.) Algorithm 1 interleaves
robust training (stochastic depth: every ResNet and cross-attention unit skipped with some
probability, so the network tolerates losing any of them) with architecture actions. Each round:

0. robust training of the current network (`train_fn`; Algorithm 1's "perform robust
   training" at every iteration), then its score is measured again;
1. evaluate every remove action A-_u on the current network:
       dScore(u)   = score(net) - score(net - u)        (score lost; score: higher is better)
       dLatency(u) = LUT(net)   - LUT(net - u)          (ms saved, from the lookup table)
   and rank units by dScore+ / dLatency, dScore+ = dScore when it exceeds `score_tolerance`,
   else 0 (score lost per ms saved);
2. if LUT(net) > target: remove argmin dScore+ / dLatency (the least useful per ms);
   else: add a copy of argmax dScore+ / dLatency (the most useful per ms), inserted right
   after the unit it copies.
After the last action, `train_fn` runs once more, so the result is trained in its final form.

Interpretations (the paper leaves them open; each is a parameter or stated here):
- Only units whose removal saves time (dLatency > 0) are ranked.
- A negative dScore (the score rose without the unit) is measurement noise on a finite prompt
  set, not a reason to prefer the unit: it counts as 0, like any dScore <= `score_tolerance`.
  Dividing it by dLatency would rank the unit saving the fewest milliseconds first.
- Ties (e.g. several units at dScore+ = 0) go to the unit saving the most milliseconds for a
  removal, and to the cheapest copy for an add; then forward order.
- Only useful units (dScore+ > 0) are copied. An add must keep LUT(net) <= target (so adds
  never undo the target); the next best unit is tried when a copy is refused by `insert_unit`
  or does not fit. A copy is first assumed to cost what removing its source saves (same
  signature, same table entry), which skips hopeless copies without building them; a built copy
  is then checked with the table itself. When no add fits, the search stops: the target is met
  and no useful unit can be afforded. The loop also stops after `max_rounds`, and raises when
  the network is over target and no removal saves time.
- Unit names are positional (an edit can renumber a layer's units), so each action also
  records the teacher unit it concerns (`unit_sources` of the edited network).
- `allow_add=False` gives the remove-only variant.
- Replace actions (issue 22; `EvolveConfig.replace`, option names of
  `slimdiff.modules.mobilediffusion.REPLACEMENTS`): besides A-_u, every plain unit u may become a cheaper
  type k (MobileDiffusion's blocks); the action `u:k` is scored like a removal, dScore = score(net) -
  score(net with u replaced), dLatency = LUT(net) - LUT(net with u replaced) (the table is extended with
  the new unit's signature when it lacks it), and ranked with the removals by the same dScore+ / dLatency.

The network edits go through an `Editor` (default: `slimdiff.unet`'s `remove_units` and
`insert_unit`), so the loop runs unchanged on a fake editor in tests.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from slimdiff.distill import DistillConfig, distill
from slimdiff.modules.mobilediffusion import REPLACEMENTS, apply_replacements, replacement_options
from slimdiff.profile.lut import LUTMissError
from slimdiff.sample import resolve_pipeline
from slimdiff.eval.evaluation import evaluate
from slimdiff.unet import insert_unit, remove_units

from .criteria import CANDIDATE_KINDS, as_slim


@dataclasses.dataclass
class EvolveConfig:
    target_latency_ms: float  # the latency objective S of Algorithm 1 (ms, as the LUT predicts)
    max_rounds: int = 100  # architecture actions at most
    allow_add: bool = True  # SnapFusion adds copies of useful units when under target
    kinds: tuple[str, ...] = CANDIDATE_KINDS  # unit kinds the actions touch (paper: ResNet, cross-attn)
    score_tolerance: float = 0.0  # a dScore at or below this counts as 0 (the score's noise level)
    replace: tuple[str, ...] = ()  # replace actions: cheaper unit types (REPLACEMENTS names); (): remove/add only

    def __post_init__(self):
        if not self.target_latency_ms > 0:
            raise ValueError(f"target_latency_ms must be > 0, got {self.target_latency_ms}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if not self.score_tolerance >= 0:
            raise ValueError(f"score_tolerance must be >= 0, got {self.score_tolerance}")
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in CANDIDATE_KINDS]
        if bad:
            raise ValueError(f"kinds {bad} are not action kinds; valid: {list(CANDIDATE_KINDS)}")
        self.replace = tuple(self.replace)
        bad = [o for o in self.replace if o not in REPLACEMENTS]
        if bad:
            raise ValueError(f"replace options {bad} are unknown; valid: {list(REPLACEMENTS)}")


@dataclasses.dataclass
class Action:
    round: int
    action: str  # "remove" | "add" | "replace:<option>"
    unit: str  # the unit removed, copied or replaced (name in the network of that round)
    teacher_unit: str  # the teacher unit it comes from (names are positional and shift with edits)
    d_score: float  # score(net) - score(net - unit), measured this round
    d_latency: float  # LUT(net) - LUT(net - unit), ms
    latency_before: float
    latency_after: float
    score_before: float


@dataclasses.dataclass
class EvolveResult:
    target_latency_ms: float
    actions: list[Action]
    rounds: list[dict]  # per round: {unit: {"d_score", "d_latency", "ratio"}} (ratio: the ranked dScore+ / dLatency)
    initial_latency: float
    final_latency: float
    initial_score: float
    final_score: float
    stop_reason: str
    evolve_config: dict = dataclasses.field(default_factory=dict)  # the EvolveConfig
    trainings: int = 0  # robust-training runs (train_fn calls)
    measured_latency_ms: float | None = None  # wall-clock of the result, when measured

    def to_recipe(self) -> dict:
        """The `search` entry of recipe.json."""
        return {"method": "evolve", **dataclasses.asdict(self)}


class Editor(Protocol):
    def candidates(self, model) -> list[str]: ...
    def remove(self, model, unit: str): ...
    def copy(self, model, unit: str): ...


class UNetEditor:
    """Edits through `slimdiff.unet`: candidates are the units of `kinds` (those whose removal
    `remove_units` refuses are skipped by the loop); `copy` inserts a copy of a unit (weights
    included) right after it; `replace_actions` / `replace`: the cheaper types of `replace`
    (`slimdiff.modules.mobilediffusion`), action keys "unit:option"."""

    def __init__(self, kinds: Sequence[str] = CANDIDATE_KINDS, replace: Sequence[str] = ()):
        self.kinds, self.options = tuple(kinds), tuple(replace)

    def replace_actions(self, model) -> list[str]:
        if not self.options:
            return []
        kinds = {u.name: u.kind for u in model.units()}
        return [f"{u}:{o}" for u, opts in replacement_options(model, options=self.options).items()
                if kinds[u] in self.kinds for o in opts]

    def replace(self, model, action: str):
        unit, option = action.split(":")
        return apply_replacements(model, {unit: replacement_options(model, [unit], (option,))[unit][option]})

    def candidates(self, model) -> list[str]:
        return [u.name for u in model.units() if u.kind in self.kinds]

    def remove(self, model, unit: str):
        return remove_units(model, [unit])

    def copy(self, model, unit: str):
        return insert_unit(model, unit, after=unit)


def _ratio(d_score: float, d_latency: float, tolerance: float) -> float:
    """dScore+ / dLatency: score lost per ms saved, a gain (noise) or a loss <= tolerance as 0."""
    return (d_score if d_score > tolerance else 0.0) / d_latency


def removal_effects(model, editor: Editor, score_fn, lut, latency: float, score: float,
                    tolerance: float) -> dict[str, dict]:
    """Step 1 of a round: for every candidate whose removal is well formed, {unit: {"d_score",
    "d_latency", "ratio"}} (dScore+ / dLatency, None when removing it saves no time)."""
    evals: dict[str, dict] = {}
    for u in editor.candidates(model):
        try:
            pruned = editor.remove(model, u)
        except ValueError:  # UNetEditError: removing u alone is ill formed
            continue
        d_l = latency - float(lut.predict(pruned))
        d_s = score - float(score_fn(pruned))
        evals[u] = {"d_score": d_s, "d_latency": d_l, "ratio": _ratio(d_s, d_l, tolerance) if d_l > 0 else None}
    for key in getattr(editor, "replace_actions", lambda m: [])(model):  # replace actions "unit:option"
        swapped = editor.replace(model, key)
        d_l = latency - _predict(lut, swapped)
        d_s = score - float(score_fn(swapped))
        evals[key] = {"d_score": d_s, "d_latency": d_l, "ratio": _ratio(d_s, d_l, tolerance) if d_l > 0 else None,
                      "action": "replace"}
    return evals


def _predict(lut, model) -> float:
    """LUT(model), measuring the signatures the table lacks first (a replaced unit's new type)."""
    try:
        return float(lut.predict(model))
    except LUTMissError:
        lut.extend(model)
        return float(lut.predict(model))


def best_addition(model, editor: Editor, lut, evals: dict[str, dict], latency: float, target: float):
    """Step 2b of a round (under target): (the model with a copy of the most useful unit that still
    fits under `target`, that unit); ties: the cheapest, then forward order. (None, None): none fits."""
    order = {u: k for k, u in enumerate(evals)}
    worth = [n for n, e in evals.items() if e["ratio"] is not None and e["ratio"] > 0  # worth nothing: no copy
             and e.get("action") != "replace"]
    for cand in sorted(worth, key=lambda n: (-evals[n]["ratio"], evals[n]["d_latency"], order[n])):
        if latency + evals[cand]["d_latency"] > target:  # a copy costs what removing u saves
            continue
        try:
            trial = editor.copy(model, cand)
        except ValueError:  # UNetEditError: this unit cannot follow itself
            continue
        if float(lut.predict(trial)) <= target:
            return trial, cand
    return None, None


def evolve(
    model,
    score_fn: Callable[[object], float],
    lut,
    config: EvolveConfig,
    editor: Editor | None = None,
    train_fn: Callable[[object], object] | None = None,
    progress: Callable[[Action], None] | None = None,
):
    """Run Algorithm 1 (module docstring) as numbered steps per round. Returns (model, EvolveResult).

    `score_fn(model) -> float` (higher is better; e.g. `toy_alignment_score(...)`);
    `lut.predict(model) -> ms`; `train_fn(model) -> model` robust-trains the network at the start
    of every round and after the last action (None: the model was robust-trained beforehand);
    `progress(action)` is called per action.
    """
    if editor is None:
        editor = UNetEditor(config.kinds, config.replace)
    if isinstance(editor, UNetEditor):
        model = as_slim(model)
    target, tol = config.target_latency_ms, config.score_tolerance
    actions: list[Action] = []
    rounds: list[dict] = []
    trainings = 0

    def train(net):
        nonlocal trainings
        trainings += 1
        return train_fn(net)

    initial_latency, initial_score = float(lut.predict(model)), float(score_fn(model))
    latency, score = initial_latency, initial_score
    stop = f"max_rounds ({config.max_rounds}) reached"
    untrained_edit = False  # an action since the last robust training
    for r in range(config.max_rounds):
        if latency <= target and not config.allow_add:
            stop = "target met"
            break
        # 0. robust training of the current network, then its score again
        if train_fn is not None:
            model = train(model)
            score, untrained_edit = float(score_fn(model)), False
        # 1. evaluate every remove action on the current network
        evals = removal_effects(model, editor, score_fn, lut, latency, score, tol)
        rounds.append(evals)
        order = {u: k for k, u in enumerate(evals)}
        useful = [u for u, e in evals.items() if e["ratio"] is not None]
        # 2a. over target: remove the least useful unit per ms; ties: the most ms saved
        if latency > target:
            if not useful:
                raise ValueError(f"latency {latency:.3f} ms is over the target {target:.3f} ms and no removable "
                                 f"unit saves time (candidates: {list(evals)})")
            u = min(useful, key=lambda n: (evals[n]["ratio"], -evals[n]["d_latency"], order[n]))
            if evals[u].get("action") == "replace":
                new, kind = editor.replace(model, u), "replace:" + u.split(":")[1]
            else:
                new, kind = editor.remove(model, u), "remove"
        # 2b. under target: add a copy of the most useful unit that still fits; ties: the cheapest
        else:
            new, u = best_addition(model, editor, lut, evals, latency, target)
            if new is None:
                stop = "target met; no addition fits under it"
                break
            kind = "add"
        # 3. execute and re-measure
        new_latency, new_score = _predict(lut, new), float(score_fn(new))
        unit = u.split(":")[0]
        teacher_unit = getattr(model, "unit_sources", {}).get(unit, unit)
        act = Action(r, kind, unit, teacher_unit, evals[u]["d_score"], evals[u]["d_latency"], latency, new_latency, score)
        actions.append(act)
        if progress is not None:
            progress(act)
        model, latency, score, untrained_edit = new, new_latency, new_score, True
    else:
        if latency > target:
            stop += f"; target not met ({latency:.3f} ms > {target:.3f} ms)"
    # 4. the result in its final form gets its robust training too
    if train_fn is not None and untrained_edit:
        model = train(model)
        score = float(score_fn(model))
    result = EvolveResult(target, actions, rounds, initial_latency, latency, initial_score, score, stop,
                          evolve_config=dataclasses.asdict(config), trainings=trainings)
    return model, result


def robust_train(model, stochastic_depth: float, out, pipeline: str = "toy", progress: bool = True,
                 **config_kwargs):
    """Robust training (SnapFusion): distil a copy of `model` from `model` itself with every
    removable ResNet and cross-attention unit skipped with probability `stochastic_depth` per
    step (`slimdiff.distill`'s `stochastic_depth` setting; a skipped unit computes what its
    removal does). `pipeline` provides tokenizer / text encoder / VAE / schedule; `config_kwargs`
    go to `DistillConfig` (e.g. `max_steps`, `batch_size`, `data`). Returns the trained copy (eval mode)."""
    if not 0.0 < stochastic_depth < 1.0:
        raise ValueError(f"stochastic_depth must be in (0, 1), got {stochastic_depth}")
    model = as_slim(model)
    cfg = DistillConfig(teacher=None, student=None, pipeline=pipeline, out=str(out),
                        stochastic_depth=stochastic_depth, **config_kwargs)
    result = distill(cfg, teacher=model, student=copy.deepcopy(model), progress=progress)
    return result.student.eval()


@dataclasses.dataclass
class RobustTrainer:
    """`train_fn` for `evolve`: robust training (`robust_train`) of `first_steps` optimiser steps
    on the first call (before round 0) and `steps` on every later one (between rounds), each run
    in its own directory `out/train_<k>`. `distill` holds further `DistillConfig` settings."""

    stochastic_depth: float  # skip probability per unit and step (SnapFusion gives no value)
    out: str  # work directory of the training runs
    pipeline: str = "toy"  # tokenizer / text encoder / VAE / schedule source
    first_steps: int = 200  # before the first architecture round
    steps: int = 50  # before every later round and after the last action
    distill: dict = dataclasses.field(default_factory=dict)  # e.g. {"batch_size": 8, "data": "toy", "seed": 0}
    progress: bool = False
    calls: int = 0  # training runs so far

    def __post_init__(self):
        if not 0.0 < self.stochastic_depth < 1.0:
            raise ValueError(f"stochastic_depth must be in (0, 1), got {self.stochastic_depth}")
        for name in ("first_steps", "steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RobustTrainer.{name} must be an integer >= 1, got {getattr(self, name)!r}")

    def __call__(self, model):
        steps = self.first_steps if self.calls == 0 else self.steps
        out = Path(self.out) / f"train_{self.calls}"
        self.calls += 1
        kwargs = {"checkpoint_every": 0, **self.distill, "max_steps": steps}
        return robust_train(model, self.stochastic_depth, out, pipeline=self.pipeline, progress=self.progress,
                            **kwargs)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "progress"}


SCORE_KEYS = ("alignment_score", "alignment")  # the judge's continuous alignment first, else the fraction


@dataclasses.dataclass
class ToyAlignmentScore:
    """score_fn(unet) -> the toy judge's text alignment of images that `base` (a pipeline name or
    directory) generates with `unet` in place (`slimdiff.eval.evaluate`, fixed prompts and seeds).

    The score is the continuous `alignment_score` (the judge's mean probability of the caption's
    attributes) when the judge gives it, else the fraction of attributes found (`alignment`),
    which saturates: a search on it sees many ties at dScore = 0. Defaults: the validation split
    (the test split stays unseen by the search), 32 images, 20 sampler steps, fixed seed."""

    base: str = "toy"
    split: str = "validation"
    num_images: int = 32
    steps: int = 20
    seed: int = 0
    key: str | None = None  # the result key used (set by the first call)

    def __post_init__(self):
        if self.num_images < 1 or self.steps < 1:
            raise ValueError(f"num_images and steps must be >= 1, got {self.num_images}, {self.steps}")
        self._pipe = None

    def __call__(self, unet) -> float:
        if self._pipe is None:
            self._pipe = resolve_pipeline(self.base)  # loaded once; each call swaps its U-Net
        self._pipe.unet = unet
        out = evaluate(self._pipe, split=self.split, num_images=self.num_images, steps=self.steps, seed=self.seed,
                       progress=False)
        self.key = next(k for k in SCORE_KEYS if k in out)
        return float(out[self.key])

    def to_dict(self) -> dict:
        return {"name": "toy_alignment", **dataclasses.asdict(self)}


def toy_alignment_score(base="toy", split: str = "validation", num_images: int = 32, steps: int = 20,
                        seed: int = 0) -> ToyAlignmentScore:
    """`ToyAlignmentScore(base, split, num_images, steps, seed)`: the default evolve score."""
    return ToyAlignmentScore(str(base), split, num_images, steps, seed)


def describe_score(score_fn) -> dict[str, Any]:
    """The recipe entry of a score function: its `to_dict()`, else its name."""
    if hasattr(score_fn, "to_dict"):
        return score_fn.to_dict()
    return {"name": getattr(score_fn, "__qualname__", type(score_fn).__name__), "settings": "not recorded"}
