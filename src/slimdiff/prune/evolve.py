"""Architecture evolving (SnapFusion Algorithm 1, METHODS.md section 5).

    robust = robust_train(teacher, stochastic_depth=0.1, ...)        # or an already robust model
    student, result = evolve(robust, score_fn, lut, EvolveConfig(target_latency_ms=40.0))

Algorithm 1 interleaves robust training (stochastic depth: every ResNet and cross-attention
unit skipped with some probability, so the network tolerates losing any of them) with
architecture actions. Each round:

1. evaluate every remove action A-_u on the current network:
       dScore(u)   = score(net) - score(net - u)        (score lost; score: higher is better)
       dLatency(u) = LUT(net)   - LUT(net - u)          (ms saved, from the lookup table)
   and rank units by dScore / dLatency (score lost per ms saved);
2. if LUT(net) > target: remove argmin dScore / dLatency (the least useful per ms);
   else: add a copy of argmax dScore / dLatency (the most useful per ms), inserted right after
   the unit it copies;
3. optionally run robust training between rounds (`train_fn`).

Interpretations (the paper leaves them open; each is a parameter or stated here):
- Only units whose removal saves time (dLatency > 0) are ranked; ties break by forward order.
- An add must keep LUT(net) <= target (so adds never undo the target); the next best unit is
  tried when a copy is refused by `insert_unit` or does not fit. A copy is first assumed to
  cost what removing its source saves (same signature, same table entry), which skips hopeless
  copies without building them; a built copy is then checked with the table itself. When no
  add fits, the search stops: the target is met and no unit can be afforded. The loop also
  stops after `max_rounds`, and raises when the network is over target and no removal saves time.
- Robust training happens before the search (`robust_train`) or between rounds (`train_fn`);
  the paper interleaves it with every evolving iteration, which `train_fn` reproduces.
- Unit names are positional (an edit can renumber a layer's units), so each action also
  records the teacher unit it concerns (`unit_sources` of the edited network).
- `allow_add=False` gives the remove-only variant.

The network edits go through an `Editor` (default: `slimdiff.unet`'s `remove_units` and
`insert_unit`), so the loop runs unchanged on a fake editor in tests.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

from .criteria import CANDIDATE_KINDS, as_slim


@dataclasses.dataclass
class EvolveConfig:
    target_latency_ms: float  # the latency objective S of Algorithm 1 (ms, as the LUT predicts)
    max_rounds: int = 100  # architecture actions at most
    allow_add: bool = True  # SnapFusion adds copies of useful units when under target
    kinds: tuple[str, ...] = CANDIDATE_KINDS  # unit kinds the actions touch (paper: ResNet, cross-attn)

    def __post_init__(self):
        if not self.target_latency_ms > 0:
            raise ValueError(f"target_latency_ms must be > 0, got {self.target_latency_ms}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        bad = [k for k in self.kinds if k not in CANDIDATE_KINDS]
        if bad:
            raise ValueError(f"kinds {bad} are not action kinds; valid: {list(CANDIDATE_KINDS)}")


@dataclasses.dataclass
class Action:
    round: int
    action: str  # "remove" | "add"
    unit: str  # the unit removed, or the unit copied (name in the network of that round)
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
    rounds: list[dict]  # per round: {unit: {"d_score", "d_latency", "ratio"}}
    initial_latency: float
    final_latency: float
    initial_score: float
    final_score: float
    stop_reason: str
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
    included) right after it."""

    def __init__(self, kinds: Sequence[str] = CANDIDATE_KINDS):
        self.kinds = tuple(kinds)

    def candidates(self, model) -> list[str]:
        return [u.name for u in model.units() if u.kind in self.kinds]

    def remove(self, model, unit: str):
        from slimdiff.unet import remove_units

        return remove_units(model, [unit])

    def copy(self, model, unit: str):
        from slimdiff.unet import insert_unit

        return insert_unit(model, unit, after=unit)


def _rank(d_score: float, d_latency: float) -> float:
    return d_score / d_latency


def evolve(
    model,
    score_fn: Callable[[object], float],
    lut,
    config: EvolveConfig,
    editor: Editor | None = None,
    train_fn: Callable[[object], object] | None = None,
    progress: Callable[[Action], None] | None = None,
):
    """Run Algorithm 1's architecture rounds (module docstring). Returns (model, EvolveResult).

    `score_fn(model) -> float` (higher is better; e.g. `toy_alignment_score(...)`);
    `lut.predict(model) -> ms`; `train_fn(model) -> model` runs robust training between
    rounds (None: the model was robust-trained beforehand); `progress(action)` is called per action.
    """
    if editor is None:
        editor = UNetEditor(config.kinds)
    if isinstance(editor, UNetEditor):
        model = as_slim(model)
    target = config.target_latency_ms
    actions: list[Action] = []
    rounds: list[dict] = []
    initial_latency, initial_score = float(lut.predict(model)), float(score_fn(model))
    latency, score = initial_latency, initial_score
    stop = f"max_rounds ({config.max_rounds}) reached"
    for r in range(config.max_rounds):
        if latency <= target and not config.allow_add:
            stop = "target met"
            break
        # 1. evaluate every remove action on the current network
        evals: dict[str, dict] = {}
        for u in editor.candidates(model):
            try:
                pruned = editor.remove(model, u)
            except ValueError:  # UNetEditError: removing u alone is ill formed
                continue
            d_l = latency - float(lut.predict(pruned))
            d_s = score - float(score_fn(pruned))
            evals[u] = {"d_score": d_s, "d_latency": d_l, "ratio": _rank(d_s, d_l) if d_l > 0 else None}
        rounds.append(evals)
        useful = [u for u, e in evals.items() if e["ratio"] is not None]  # forward order kept
        # 2a. over target: remove the least useful unit per ms
        if latency > target:
            if not useful:
                raise ValueError(
                    f"latency {latency:.3f} ms is over the target {target:.3f} ms and no removable unit "
                    f"saves time (candidates: {list(evals)})"
                )
            u = min(useful, key=lambda n: evals[n]["ratio"])  # min() keeps the first of ties
            new = editor.remove(model, u)
            kind = "remove"
        # 2b. under target: add a copy of the most useful unit that still fits
        else:
            new, u = None, None
            for cand in sorted(useful, key=lambda n: -evals[n]["ratio"]):  # stable: forward order on ties
                if latency + evals[cand]["d_latency"] > target:  # a copy costs what removing u saves
                    continue
                try:
                    trial = editor.copy(model, cand)
                except ValueError:  # UNetEditError: this unit cannot follow itself
                    continue
                if float(lut.predict(trial)) <= target:
                    new, u = trial, cand
                    break
            if new is None:
                stop = "target met; no addition fits under it"
                break
            kind = "add"
        # 3. execute, (optionally) robust-train, and re-measure
        if train_fn is not None:
            new = train_fn(new)
        new_latency, new_score = float(lut.predict(new)), float(score_fn(new))
        teacher_unit = getattr(model, "unit_sources", {}).get(u, u)
        act = Action(r, kind, u, teacher_unit, evals[u]["d_score"], evals[u]["d_latency"], latency, new_latency, score)
        actions.append(act)
        if progress is not None:
            progress(act)
        model, latency, score = new, new_latency, new_score
    else:
        if latency > target:
            stop += f"; target not met ({latency:.3f} ms > {target:.3f} ms)"
    result = EvolveResult(target, actions, rounds, initial_latency, latency, initial_score, score, stop)
    return model, result


def robust_train(model, stochastic_depth: float, out, pipeline: str = "toy", progress: bool = True,
                 **config_kwargs):
    """Robust training (SnapFusion): distil a copy of `model` from `model` itself with every
    channel-preserving ResNet and cross-attention unit skipped with probability
    `stochastic_depth` per step (`slimdiff.distill`'s `stochastic_depth` setting). `pipeline`
    provides tokenizer / text encoder / VAE / schedule; `config_kwargs` go to `DistillConfig`
    (e.g. `max_steps`, `batch_size`, `data`). Returns the trained copy (eval mode)."""
    import copy

    from slimdiff.distill import DistillConfig, distill

    if not 0.0 < stochastic_depth < 1.0:
        raise ValueError(f"stochastic_depth must be in (0, 1), got {stochastic_depth}")
    model = as_slim(model)
    cfg = DistillConfig(teacher=None, student=None, pipeline=pipeline, out=str(out),
                        stochastic_depth=stochastic_depth, **config_kwargs)
    result = distill(cfg, teacher=model, student=copy.deepcopy(model), progress=progress)
    return result.student.eval()


def toy_alignment_score(
    base="toy",
    split: str = "validation",
    num_images: int = 32,
    steps: int = 20,
    seed: int = 0,
    **evaluate_kwargs,
) -> Callable[[object], float]:
    """score_fn(unet) -> the toy judge's text alignment of `base` (a pipeline name or directory)
    with `unet` in place (`slimdiff.eval.evaluate`). Defaults: the validation split (the test
    split stays unseen by the search), 32 images, 20 sampler steps, fixed seed."""
    from slimdiff.eval.runner import evaluate, resolve_pipeline

    pipe = resolve_pipeline(base)  # loaded once; each call swaps its U-Net

    def score(unet) -> float:
        pipe.unet = unet
        out = evaluate(pipe, split=split, num_images=num_images, steps=steps, seed=seed,
                       progress=False, **evaluate_kwargs)
        return float(out["alignment"])

    return score
