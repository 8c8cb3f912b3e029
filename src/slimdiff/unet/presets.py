"""Preset students of an SD-1.x/2.x teacher, in one registry (`PRESETS`).

    student, info = apply_preset(teacher, "bk-small")

- `bk-base`, `bk-small`, `bk-tiny`: BK-SDM (Kim et al. 2023; METHODS.md section 2). Base: each
  down block keeps 1 of its 2 layers (teacher layer 0), each up block 2 of its 3 (teacher
  layers 0 and 2), mid block kept. Small: Base without the mid block. Tiny: Small without the
  deepest stage (down.3, up.0) and without down.2's downsampler; student up.k <- teacher
  up.k+1. With slimdiff's skip rule (a removed down layer's skip point aliases its input) the
  up-side resnets consume exactly BK-SDM's skips, and all three export as plain diffusers
  configs (`layers_per_block=1`; Small/Tiny `mid_block_type=None`; Tiny 3 levels).
- `snapfusion`: the efficient U-Net of SnapFusion (Li et al. 2023; seed 001, "Table 3:
  Detailed architecture of our efficient UNet model"), see `SNAPFUSION` below.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from .structure import UNetEditError, blocks_from_diffusers_config, role_of
from .surgery import insert_unit, remove_units, to_slim

_BK_BASE = tuple(f"down.{k}.layer.1" for k in range(4)) + tuple(f"up.{k}.layer.1" for k in range(4))


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named student: units to remove from the teacher, then copies to insert.

    `insert`: (source, after) pairs applied in order after the removals, named in the
    structure after removal (see `insert_unit`).
    """

    name: str
    description: str
    remove: tuple[str, ...]
    insert: tuple[tuple[str, str], ...] = ()
    reference: str = ""
    # a preset that builds its student itself: build(teacher) -> slim student with inheritance
    # (registered by a plug-in, e.g. slimdiff.modules.mobilediffusion's "md"; remove/insert unused)
    build: Callable[[nn.Module], nn.Module] | None = None

    def __post_init__(self):
        if not self.remove and not self.insert and self.build is None:
            raise ValueError(f"preset {self.name!r} edits nothing: give `remove`, `insert` or `build`")


# SnapFusion, seed 001 Table 3 (counts per stage, "Origin" -> "Ours"). The table's stages
# map to diffusers blocks by resolution and width: Down-1 = down.0 (H/8, 320), Down-2 = down.1,
# Down-3 = down.2, "Mid" (H/64, 1280) = down.3 + mid + up.0, Up-1 = up.1 (H/32, 1280),
# Up-2 = up.2 (H/16, 640), Up-3 = up.3 (H/8, 320).
#   Down-1 cross-attn 2 -> 0: remove down.0.layer.{0,1}.attn
#   Down-3 resnet 2 -> 1: remove down.2.layer.1.resnet (layer 0's resnet changes 640->1280)
#   Mid resnet 7 -> 4, cross-attn 1 -> 1: OPEN (the table gives only the count). slimdiff
#       keeps the mid block whole (resnet, attn, resnet) and one resnet on each side:
#       removes down.3.layer.1.resnet, up.0.layer.1.resnet, up.0.layer.2.resnet.
#   Up-1 resnet 3 -> 2: OPEN which one; removes the middle one, up.1.layer.1.resnet (as BK-SDM
#       drops middle up layers); its cross-attention stays (3 -> 3).
#   Up-2 cross-attn 3 -> 6: a second copy of each attention, inserted right after it.
#       METHODS.md says "more cross-attention in up.1"; the seed's table puts the extra
#       attention in Up-2 at H/16 with width 640, which is diffusers' up.2: slimdiff follows
#       the table. A variant: Preset(..., insert=(("up.1.layer.0.attn", "up.1.layer.0.attn"),)).
#   Up-3 cross-attn 3 -> 0: remove up.3.layer.{0,1,2}.attn
# Totals: 17 resnets (the table's sum; MobileDiffusion's Table 1 lists 18 "ConvBlocks" for
# SnapFusion) and 14 transformer units (14 self- + 14 cross-attentions, as MobileDiffusion's
# table gives). The paper's 848M parameters cannot be reached with SD-1.5 widths and these
# counts (this preset has 664,583,684 on sd15-arch); the mismatch is the paper's.
SNAPFUSION = Preset(
    name="snapfusion",
    description="SnapFusion efficient U-Net (seed 001 Table 3): no attention at the highest resolution, "
    "fewer deep ResNets, 6 attentions in up.2",
    remove=("down.0.layer.0.attn", "down.0.layer.1.attn", "down.2.layer.1.resnet", "down.3.layer.1.resnet",
            "up.0.layer.1.resnet", "up.0.layer.2.resnet", "up.1.layer.1.resnet",
            "up.3.layer.0.attn", "up.3.layer.1.attn", "up.3.layer.2.attn"),
    insert=(("up.2.layer.0.attn", "up.2.layer.0.attn"), ("up.2.layer.1.attn", "up.2.layer.1.attn"),
            ("up.2.layer.2.attn", "up.2.layer.2.attn")),
    reference="Li et al. 2023, SnapFusion, Table 3",
)

PRESETS: dict[str, Preset] = {
    "bk-base": Preset("bk-base", "BK-SDM-Base: 1 of 2 layers per down block, 2 of 3 per up block", _BK_BASE,
                      reference="Kim et al. 2023, BK-SDM, section 3.1"),
    "bk-small": Preset("bk-small", "BK-SDM-Small: bk-base without the mid block", _BK_BASE + ("mid",),
                       reference="Kim et al. 2023, BK-SDM, section 3.1"),
    "bk-tiny": Preset("bk-tiny", "BK-SDM-Tiny: bk-small without the deepest stage (down.3, up.0) "
                      "and down.2's downsampler", _BK_BASE + ("mid", "down.3", "up.0", "down.2.downsample"),
                      reference="Kim et al. 2023, BK-SDM, section 3.1"),
    "snapfusion": SNAPFUSION,
}



def register_preset(preset: Preset) -> None:
    """Add a preset to `PRESETS` (a plug-in calls it at import, as unit types register themselves;
    its name also goes in `slimdiff.cli.names.PRESETS`)."""
    if preset.name in PRESETS and PRESETS[preset.name] != preset:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset


# the teacher topology every preset assumes: SD-1.x/2.x (per block: layers, attention present)
_SD_DOWN = [(2, True), (2, True), (2, True), (2, False)]
_SD_UP = [(3, False), (3, True), (3, True), (3, True)]


def check_sd_topology(model: nn.Module) -> None:
    """Raise ValueError unless `model` has SD-1.x/2.x's block topology (what presets assume)."""
    if hasattr(model, "down_blocks"):  # diffusers: read its config, no copy
        blocks = blocks_from_diffusers_config(dict(model.config))
    else:
        blocks = to_slim(model).config.blocks

    def shape(side: str) -> list[tuple[int, bool]]:
        return [(len(b["layers"]), any(role_of(u) == "attn" for layer in b["layers"] for u in layer))
                for b in blocks[side]]

    got = (shape("down"), bool(blocks.get("mid")), shape("up"))
    want = (_SD_DOWN, True, _SD_UP)
    if got != want:
        raise ValueError(f"presets need an SD-1.x/2.x U-Net topology (per block: (layers, has attention)) "
                         f"down {want[0]}, mid, up {want[2]}; got down {got[0]}, mid={got[1]}, up {got[2]}")


def apply_edits(teacher: nn.Module, preset: Preset):
    """Apply a `Preset` (its builder, else removals then insertions) to `teacher`; return the slim student."""
    if preset.build is not None:
        return preset.build(teacher)
    student = remove_units(teacher, list(preset.remove))
    for source, after in preset.insert:
        student = insert_unit(student, source, after)
    return student


def apply_preset(teacher: nn.Module, name: str):
    """`(student, info)` for the preset `name` applied to an SD-1.x/2.x `teacher`.

    `info`: preset name, removed units, inserted copies, teacher/student parameter counts.
    The student is a `SlimUNet2DConditionModel` with `inheritance` back to the teacher.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {list(PRESETS)} (plug-in presets such as 'md' "
                         "register when `slimdiff.modules` is imported)")
    preset = PRESETS[name]
    check_sd_topology(teacher)
    try:
        student = apply_edits(teacher, preset)
    except UNetEditError as e:
        raise UNetEditError(f"preset {name!r} does not fit this teacher: {e}") from None
    info = {
        "preset": name,
        "description": preset.description,
        "reference": preset.reference,
        "removed": list(preset.remove),
        "inserted": [list(pair) for pair in preset.insert],
        "teacher_params": teacher.num_parameters(),
        "student_params": student.num_parameters(),
    }
    return student, info
