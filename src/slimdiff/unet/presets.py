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
- SDXL students (teacher: SDXL-base's topology; `SDXL_PRESETS` below): `bk-sdxl`, `koala-1b`,
  `koala-700m`, `ssd-1b`, `vega`. Each exports as a plain `UNet2DConditionModel`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from .structure import UNetEditError, blocks_from_diffusers_config, depth_of
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
    teacher: str = "sd"  # the teacher topology it applies to: a key of TOPOLOGIES
    published_params: int | None = None  # the paper's / checkpoint's U-Net parameter count (SDXL teacher)
    # a preset that builds its student itself: build(teacher) -> slim student with inheritance
    # (registered by a plug-in, e.g. slimdiff.modules.mobilediffusion's "md"; remove/insert unused)
    build: Callable[[nn.Module], nn.Module] | None = None
    # (student block, teacher block) pairs for feature KD, written to recipe.json as `block_map` (read by
    # slimdiff.distill) when the student's own inheritance would pair blocks of other widths (md's bottleneck)
    block_map: tuple[tuple[str, str], ...] = ()

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


def _inner(units: tuple[str, ...], keep: int, depth: int = 10) -> tuple[str, ...]:
    """Inner blocks keep..depth-1 of each of `units` (a Transformer unit keeps its first `keep`)."""
    return tuple(f"{u}.tblock.{k}" for u in units for k in range(keep, depth))


# SDXL students. Names are SDXL-base's (teacher) units: down.0 (320, no attention), down.1 (640,
# Transformer depth 2), down.2 (1280, depth 10), mid (depth 10), up.0 (1280, depth 10), up.1 (640,
# depth 2), up.2 (320, no attention); 2 layers per down block, 3 per up block.
# Which inner blocks a student keeps is not published for any of them: slimdiff keeps the first
# ones (blocks 0..k-1 of each unit), an initialisation choice the parameter counts do not depend on.
_SDXL_LAYERS = ("down.0.layer.1", "down.1.layer.1", "down.2.layer.1", "up.0.layer.1", "up.1.layer.1", "up.2.layer.1")
_KOALA_DEEP = ("down.2.layer.0.attn", "up.0.layer.0.attn", "up.0.layer.2.attn")  # depth-10 units KOALA keeps
SDXL_PRESETS = {
    # BK-SDM-Small's removals (Kim et al. 2023, section 3.1) on SDXL: 1 of 2 layers per down block,
    # 2 of 3 per up block (teacher layers 0 and 2), no mid block. KOALA (Lee et al. 2023,
    # arXiv 2312.04005, section 3.1) starts from this layer-wise removal ("BK-SDXL" in its comparison).
    # 1,304,160,324 parameters (lpb 1, Transformer depths (-, 2, 10), no mid); KOALA's own count for it
    # is not reproduced here (OPEN).
    "bk-sdxl": Preset("bk-sdxl", "BK-SDM-Small's layer removal on SDXL: 1 of 2 layers per down block, 2 of 3 per "
                      "up block, no mid block", _SDXL_LAYERS + ("mid",), teacher="sdxl",
                      reference="Kim et al. 2023 (BK-SDM) section 3.1, as applied to SDXL in KOALA (arXiv 2312.04005)"),
    # KOALA-1B (arXiv 2312.04005, Table "U-Net comparison" of the etri-vilab/koala-1b card: 1,161M
    # parameters, Tx blocks [0, 2, 6]): BK-SDXL's layer removal, the mid block kept, and depth 10 -> 6
    # in the lowest level (the diffusers config: layers_per_block=1, transformer_layers_per_block
    # [1, 2, 6], which also sets the mid block's depth). 1,161,184,324 parameters.
    "koala-1b": Preset("koala-1b", "KOALA-1B: BK-SDXL's layer removal with the mid block kept, Transformer depth "
                       "10 -> 6 at the lowest level and in the mid block", _SDXL_LAYERS
                       + _inner(_KOALA_DEEP + ("mid.attn",), 6), teacher="sdxl", published_params=1_161_000_000,
                       reference="Lee et al. 2023, KOALA (arXiv 2312.04005), section 3.1; etri-vilab/koala-1b"),
    # KOALA-700M (same sources: 782M, Tx blocks [0, 2, 5]): no mid block, depth 10 -> 5
    # (layers_per_block=1, transformer_layers_per_block [1, 2, 5], mid_block_type None). 782,822,724.
    "koala-700m": Preset("koala-700m", "KOALA-700M: BK-SDXL (no mid block) with Transformer depth 10 -> 5 at the "
                         "lowest level", _SDXL_LAYERS + ("mid",) + _inner(_KOALA_DEEP, 5), teacher="sdxl",
                         published_params=782_000_000,
                         reference="Lee et al. 2023, KOALA (arXiv 2312.04005), section 3.1; etri-vilab/koala-700m"),
    # SSD-1B (Segmind; Gupta et al. 2024, arXiv 2401.02677; "1.3B"): every layer kept, no mid block,
    # Transformer depths down.2 (4, 4), up.0 (4, 4, 10), up.1 (2, 1, 1): the diffusers config
    # transformer_layers_per_block [1, 2, 4], reverse_transformer_layers_per_block [[4, 4, 10], [2, 1, 1], 1]
    # (the reverse list as it appears in a public copy of segmind/SSD-1B's unet/config.json; the
    # searchable corpora held no complete copy of it, so the down side is reconstructed from the
    # published 1.3B). 1,300,195,844 parameters.
    "ssd-1b": Preset("ssd-1b", "SSD-1B: no mid block, Transformer depths (-, 2, 4) down and (4/4/10, 2/1/1, -) up",
                     ("mid",) + _inner(("down.2.layer.0.attn", "down.2.layer.1.attn", "up.0.layer.0.attn",
                                        "up.0.layer.1.attn"), 4) + _inner(("up.1.layer.1.attn", "up.1.layer.2.attn"), 1, 2),
                     teacher="sdxl", published_params=1_300_000_000,
                     reference="Gupta et al. 2024, arXiv 2401.02677 (SSD-1B); segmind/SSD-1B"),
    # Segmind-Vega (same paper; "745M"): no mid block, depth 2 wherever SDXL has 10, up.1 (2, 1, 1) as
    # SSD-1B: transformer_layers_per_block [1, 2, 2], reverse [[2, 2, 2], [2, 1, 1], 1]. No published
    # config was found in the searchable corpora: this is the structure of SSD-1B's pattern that
    # gives the published count (744,102,404 vs 745M, -0.12%), a reconstruction (OPEN).
    "vega": Preset("vega", "Segmind-Vega (reconstructed): no mid block, Transformer depth 10 -> 2, up.1 (2, 1, 1)",
                   ("mid",) + _inner(("down.2.layer.0.attn", "down.2.layer.1.attn", "up.0.layer.0.attn",
                                      "up.0.layer.1.attn", "up.0.layer.2.attn"), 2)
                   + _inner(("up.1.layer.1.attn", "up.1.layer.2.attn"), 1, 2),
                   teacher="sdxl", published_params=745_000_000,
                   reference="Gupta et al. 2024, arXiv 2401.02677 (Segmind-Vega); segmind/Segmind-Vega"),
}

PRESETS: dict[str, Preset] = {
    "bk-base": Preset("bk-base", "BK-SDM-Base: 1 of 2 layers per down block, 2 of 3 per up block", _BK_BASE,
                      reference="Kim et al. 2023, BK-SDM, section 3.1"),
    "bk-small": Preset("bk-small", "BK-SDM-Small: bk-base without the mid block", _BK_BASE + ("mid",),
                       reference="Kim et al. 2023, BK-SDM, section 3.1"),
    "bk-tiny": Preset("bk-tiny", "BK-SDM-Tiny: bk-small without the deepest stage (down.3, up.0) "
                      "and down.2's downsampler", _BK_BASE + ("mid", "down.3", "up.0", "down.2.downsample"),
                      reference="Kim et al. 2023, BK-SDM, section 3.1"),
    "snapfusion": SNAPFUSION,
    **SDXL_PRESETS,
}

# the teacher topologies presets assume, per block: (layers, Transformer depth per layer; 0 = no attention)
TOPOLOGIES = {
    "sd": ("SD-1.x/2.x", [(1, 1), (1, 1), (1, 1), (0, 0)], 1, [(0, 0, 0), (1, 1, 1), (1, 1, 1), (1, 1, 1)]),
    "sdxl": ("SDXL-base", [(0, 0), (2, 2), (10, 10)], 10, [(10, 10, 10), (2, 2, 2), (0, 0, 0)]),
}




def register_preset(preset: Preset) -> None:
    """Add a preset to `PRESETS` (a plug-in calls it at import, as unit types register themselves;
    its name also goes in `slimdiff.cli.names.PRESETS`)."""
    if preset.name in PRESETS and PRESETS[preset.name] != preset:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset


def topology_of(model: nn.Module) -> tuple[list[tuple[int, ...]], int, list[tuple[int, ...]]]:
    """(down, mid, up): per block the Transformer depth of each layer (0: no attention); mid: its depth
    (0: none or no attention)."""
    if hasattr(model, "down_blocks"):  # diffusers: read its config, no copy
        blocks = blocks_from_diffusers_config(dict(model.config))
    else:
        blocks = to_slim(model).config.blocks

    def depth(units: list[dict]) -> int:
        return sum(depth_of(u) for u in units)

    def shape(side: str) -> list[tuple[int, ...]]:
        return [tuple(depth(layer) for layer in b["layers"]) for b in blocks[side]]

    return shape("down"), depth(blocks.get("mid") or []), shape("up")


def check_topology(model: nn.Module, teacher: str = "sd") -> None:
    """Raise ValueError unless `model` has the block topology `TOPOLOGIES[teacher]` (what a preset assumes)."""
    label, *want = TOPOLOGIES[teacher]
    got = list(topology_of(model))
    if teacher == "sd":  # SD presets name no inner block: any Transformer depth fits
        down, mid, up = got
        got = [[tuple(min(d, 1) for d in b) for b in down], min(mid, 1), [tuple(min(d, 1) for d in b) for b in up]]
    if got != want:
        raise ValueError(f"this preset needs an {label} U-Net topology (per block: Transformer depth per layer, "
                         f"0 = none) down {want[0]}, mid {want[1]}, up {want[2]}; got down {got[0]}, mid {got[1]}, "
                         f"up {got[2]}")


def check_sd_topology(model: nn.Module) -> None:
    """Raise ValueError unless `model` has SD-1.x/2.x's block topology (what the SD presets assume)."""
    check_topology(model, "sd")


def apply_edits(teacher: nn.Module, preset: Preset):
    """Apply a `Preset` (its builder, else removals then insertions) to `teacher`; return the slim student."""
    if preset.build is not None:
        return preset.build(teacher)
    student = remove_units(teacher, list(preset.remove))
    for source, after in preset.insert:
        student = insert_unit(student, source, after)
    return student


def apply_preset(teacher: nn.Module, name: str):
    """`(student, info)` for the preset `name` applied to its teacher topology (SD-1.x/2.x or SDXL).

    `info`: preset name, removed units, inserted copies, teacher/student parameter counts.
    The student is a `SlimUNet2DConditionModel` with `inheritance` back to the teacher.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {list(PRESETS)} (plug-in presets such as 'md' "
                         "register when `slimdiff.modules` is imported)")
    preset = PRESETS[name]
    check_topology(teacher, preset.teacher)
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
    if preset.published_params:
        info["published_params"] = preset.published_params
    if preset.block_map:
        info["block_map"] = dict(preset.block_map)
    return student, info
