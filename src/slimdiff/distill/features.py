"""Feature hooks and the student -> teacher feature correspondence.

Hooks are registered on *unwrapped* modules found with `slimdiff.unet.get_module`, so names do
not depend on DDP/FSDP wrapping (DESIGN.md "Conventions").

The default correspondence (BK-SDM, METHODS.md section 2) pairs the output of every down and
up block of the student with the teacher block it inherited its weights from. A pruned student
may lack blocks (bk-tiny drops down.3 and up.0 and renumbers: student up.k <- teacher up.k+1),
so the block map is found, in order of preference, from:
  1. `recipe.json` of the student: a `block_map` (or `feat_map`) dict student block -> teacher block;
  2. the student's (or the recipe's) `inheritance` (student tensor -> teacher tensor): each
     student block maps to the teacher block most of its inherited tensors came from;
  3. structure: down blocks matched by index from the input side, up blocks from the output side
     (student up.k <- teacher up.(k + n_teacher_up - n_student_up)), mid to mid.
Where only one block of a pair has its sampler (bk-tiny's down.2), features are taken before
sampling, by default exactly where BK-SDM takes them: the pre-residual `proj_out` of the last
Transformer (`default_feature_map`). Feature names are module names (`get_module`), optionally
followed by a submodule path (`down.2.layer.1.attn.proj_out`). Every pair's shapes are checked
on a dry run (`check_shapes`).
"""

from __future__ import annotations

import collections
import re
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from slimdiff.unet import block_names, get_module, list_units, module_names, module_output_tensor
from slimdiff.unet.structure import name_to_path

# feature of a block pair where only one side has the sampler (bk-tiny's down.2):
# "proj_out": the last Transformer unit's pre-residual output projection, BK-SDM's hook
#             (teacher down_blocks.2.attentions.1.proj_out <-> student down_blocks.2.attentions.0.proj_out);
# "unit": the last unit's whole output (after the Transformer's residual)
PRESAMPLER_FEATURES = ("proj_out", "unit")

# tensor name -> block name; diffusers (`down_blocks.1.`, `mid_block.`) and slim (`down.1.`, `mid.`) naming
_BLOCK_PATTERNS = (
    (re.compile(r"(?:^|\.)down(?:_blocks)?\.(\d+)\."), "down.{}"),
    (re.compile(r"(?:^|\.)up(?:_blocks)?\.(\d+)\."), "up.{}"),
    (re.compile(r"(?:^|\.)mid(?:_block)?\."), "mid"),
)


class FeatureRecorder:
    """Forward hooks keeping the output tensor of named modules of one unwrapped U-Net.

        rec = FeatureRecorder(unet, ["down.0", "up.3"])
        unet(x, t, c); feats = rec.pop()   # {"down.0": (B, C, h, w), "up.3": ...}
    """

    def __init__(self, model: nn.Module, names: Iterable[str], what: str = "feature"):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in dict.fromkeys(names):  # unique, in order
            try:
                module = feature_module(model, name)
            except ValueError as e:
                raise ValueError(f"{what} name {name!r} does not exist: {e}") from None
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, args, output):
            self.features[name] = module_output_tensor(output)

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """The features recorded since the last pop (and forget them)."""
        feats, self.features = self.features, {}
        return feats

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features = {}


def feature_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose output is the feature `name`.

    A slim U-Net's blocks and layers are containers its forward never calls; their output is
    that of their last unit in forward order (the sampler when the block has one), which is
    what a diffusers block returns as its first output. `UNIT.SUBMODULE` names a submodule of a
    unit (e.g. `down.2.layer.1.attn.proj_out`).
    """
    known = set(module_names(model))
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        head, rest = ".".join(parts[:k]), ".".join(parts[k:])
        if name not in known and head in known:
            try:
                return get_module(model, head).get_submodule(rest)
            except AttributeError:
                raise ValueError(f"{head!r} has no submodule {rest!r}") from None
    module = get_module(model, name)
    if isinstance(module, (nn.ModuleDict, nn.ModuleList)):
        inside = [u.name for u in list_units(model) if u.name.startswith(name + ".")]
        if not inside:
            raise ValueError(f"{name!r} holds no unit")
        return get_module(model, inside[-1])
    return module


def block_of_tensor(name: str) -> str | None:
    """`down_blocks.1.resnets.0.conv1.weight` / `down.1.layer.0.resnet.conv1.weight` -> `down.1`."""
    for pattern, fmt in _BLOCK_PATTERNS:
        m = pattern.search(name)
        if m:
            return fmt.format(*m.groups())
    return None


def block_map_from_inheritance(inheritance: Mapping[str, str | None]) -> dict[str, str]:
    """Student block -> the teacher block most of its inherited tensors came from."""
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for s_name, t_name in inheritance.items():
        s_block, t_block = block_of_tensor(s_name), block_of_tensor(t_name) if t_name else None
        if s_block and t_block:
            votes[s_block][t_block] += 1
    return {s: c.most_common(1)[0][0] for s, c in votes.items()}


def structural_block_map(student_blocks: list[str], teacher_blocks: list[str]) -> dict[str, str]:
    """Down blocks by index from the input side, up blocks from the output side, mid to mid."""
    def side(blocks, prefix):
        return [b for b in blocks if b.startswith(prefix + ".")]

    out: dict[str, str] = {}
    s_down, t_down = side(student_blocks, "down"), side(teacher_blocks, "down")
    out.update({s: t for s, t in zip(s_down, t_down)})
    s_up, t_up = side(student_blocks, "up"), side(teacher_blocks, "up")
    shift = len(t_up) - len(s_up)
    if shift >= 0:
        out.update({s: t_up[k + shift] for k, s in enumerate(s_up)})
    if "mid" in student_blocks and "mid" in teacher_blocks:
        out["mid"] = "mid"
    return out


def resolve_block_map(student: nn.Module, teacher: nn.Module, recipe: Mapping[str, Any] | None = None
                      ) -> tuple[dict[str, str], str]:
    """(student block -> teacher block, where it came from) for every student block that has one."""
    s_blocks, t_blocks = block_names(student), block_names(teacher)
    recipe = recipe or {}
    for key in ("block_map", "feat_map"):
        if isinstance(recipe.get(key), dict) and recipe[key]:
            return {s: t for s, t in recipe[key].items() if s in s_blocks and t in t_blocks}, f"recipe.json {key}"
    # a slim model's own `inheritance` is the identity unless it was made by an edit (then it is
    # the real record); an identity mapping says nothing, so it falls through to the next source
    for source, inheritance in (("inheritance", getattr(student, "inheritance", None)),
                                ("recipe.json inheritance", recipe.get("inheritance"))):
        if isinstance(inheritance, dict) and any(k != v for k, v in inheritance.items()):
            found = block_map_from_inheritance(inheritance)
            found = {s: t for s, t in found.items() if s in s_blocks and t in t_blocks}
            if found:
                return found, source
    return structural_block_map(s_blocks, t_blocks), "structure"


def default_feature_map(block_map: Mapping[str, str], student: nn.Module | None = None,
                        teacher: nn.Module | None = None, presampler: str = "proj_out") -> dict[str, str]:
    """BK-SDM: every down and up block's output (the mid block is SAS's separate term).

    When only one side of a pair has the block's sampler (bk-tiny's down.2 loses its
    downsampler), both features are taken before sampling. `presampler="proj_out"` (default)
    does what BK-SDM's code does (METHODS.md section 2): teacher
    `down_blocks.2.attentions.1.proj_out` <-> student `down_blocks.2.attentions.0.proj_out`, the
    last Transformer's pre-residual projection on both sides (the last units' outputs when either
    is not a Transformer with a `proj_out`). `presampler="unit"`: the last ResNet/Transformer
    unit's whole output on both sides (the student block's own output, as it has no sampler).
    """
    if presampler not in PRESAMPLER_FEATURES:
        raise ValueError(f"presampler {presampler!r} is not one of {list(PRESAMPLER_FEATURES)}")
    pairs = {s: t for s, t in block_map.items() if s.startswith(("down.", "up."))}
    if student is None or teacher is None:
        return pairs
    s_units, t_units = list_units(student), list_units(teacher)

    def has_sampler(units, block):
        return any(u.block == block and u.kind in ("downsample", "upsample") for u in units)

    def last_layer_unit(units, block):
        return [u for u in units if u.block == block and u.kind in ("resnet", "attn")][-1]

    def proj_out(model, unit) -> str | None:
        has = unit.kind == "attn" and hasattr(get_module(model, unit.name), "proj_out")
        return f"{unit.name}.proj_out" if has else None

    out = {}
    for s, t in pairs.items():
        if has_sampler(s_units, s) == has_sampler(t_units, t):
            out[s] = t
            continue
        s_last, t_last = last_layer_unit(s_units, s), last_layer_unit(t_units, t)
        s_proj, t_proj = proj_out(student, s_last), proj_out(teacher, t_last)
        if presampler == "proj_out" and s_proj and t_proj:
            out[s_proj] = t_proj
        else:
            out[s_last.name] = t_last.name
    return out


def check_shapes(student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor],
                 feat_map: Mapping[str, str], what: str = "feature") -> None:
    """Raise naming every pair whose student and teacher features differ in shape."""
    missing = [s for s in feat_map if s not in student_feats] + [t for t in feat_map.values() if t not in teacher_feats]
    if missing:
        raise ValueError(f"{what} modules {missing} produced no output in a forward pass (not on the forward path)")
    bad = [f"{s} {tuple(student_feats[s].shape)} vs teacher {t} {tuple(teacher_feats[t].shape)}"
           for s, t in feat_map.items() if student_feats[s].shape != teacher_feats[t].shape]
    if bad:
        raise ValueError(f"{what} shapes differ between student and teacher: {'; '.join(bad)}. "
                         f"Give a mapping of same-shaped modules with --feat-map STUDENT=TEACHER ...")


def self_attentions(model: nn.Module) -> dict[str, nn.Module]:
    """Every Transformer block's self-attention, by feature name `<unit>.transformer_blocks.k.attn1`."""
    out = {}
    for unit in list_units(model):
        if unit.kind == "attn":
            for k, block in enumerate(getattr(get_module(model, unit.name), "transformer_blocks", None) or []):
                if hasattr(block, "attn1"):
                    out[f"{unit.name}.transformer_blocks.{k}.attn1"] = block.attn1
    return out


def self_attention_map(student: nn.Module, teacher: nn.Module, recipe: Mapping[str, Any] | None = None
                       ) -> dict[str, str]:
    """KOALA's feature KD (Lee et al. 2023, arXiv 2312.04005, section 3.2: self-attention is the feature
    that matters most): the output (B, HW, C) of every student Transformer block's self-attention
    (`attn1`) paired with the teacher's self-attention it inherited its weights from (the student's
    or its recipe's `inheritance`, in slim or diffusers naming), else the teacher's of the same name
    (a student that kept each unit's first blocks pairs them with the teacher's first, KOALA's
    "SA-bottom"). Student self-attentions with no teacher counterpart are left out."""
    inheritance = getattr(student, "inheritance", None) or {}
    if not any(k != v for k, v in inheritance.items()):
        inheritance = (recipe or {}).get("inheritance") or {}
    t_by_path = {path: name for name, paths in _attention_paths(teacher).items() for path in paths}
    out = {}
    for name, paths in _attention_paths(student).items():
        source = next((inheritance[k] for k in (f"{p}.to_q.weight" for p in paths) if k in inheritance), None)
        found = t_by_path.get(source.removesuffix(".to_q.weight")) if source else None
        if found is None and not source and name in t_by_path.values():
            found = name
        if found is not None:
            out[name] = found
    return out


def _attention_paths(model: nn.Module) -> dict[str, tuple[str, str]]:
    """Feature name of each self-attention -> its module path in `model` and in slim naming (an
    inheritance record names slim tensors; an exported student or a diffusers teacher has diffusers paths)."""
    paths = {id(m): n for n, m in model.named_modules()}
    out = {}
    for name, module in self_attentions(model).items():
        unit, rest = name.split(".transformer_blocks.")
        out[name] = (paths[id(module)], f"{name_to_path(unit)}.transformer_blocks.{rest}")
    return out
