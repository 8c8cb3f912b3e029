"""The units a profile measures: name, kind, block, level and the module itself.

`slimdiff.unet.list_units` names the units of a slimdiff U-Net and of a plain diffusers
`UNet2DConditionModel` alike (docs/internal-api.md), so the profiler measures either one as
it is, without converting it.

Vocabulary (METHODS.md): block `down.0..3`, `mid`, `up.0..3`; unit = one ResNet
(`ResnetBlock2D`), Transformer (`Transformer2DModel`), down-sampler or up-sampler module.
`level` is the spatial level of the unit's *input*: spatial size = latent_size >> level.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from slimdiff.unet import get_module, num_params
from slimdiff.unet import list_units as unet_units


@dataclass
class ProfiledUnit:
    """One unit of a U-Net, in forward order, with its module."""

    name: str  # stable name, e.g. "down.1.layer.0.attn"
    kind: str  # "resnet" | "attn" | "downsample" | "upsample"; inner: "tblock" (a Transformer's block), "tshell"
    block: str  # "down.1", "mid", "up.0"
    level: int  # input spatial size = latent_size >> level
    in_channels: int
    out_channels: int
    params: int
    cross_attention_dim: int | None  # attn units: text width their cross-attention reads
    module: nn.Module


def list_units(model: nn.Module, inner: bool = False) -> list[ProfiledUnit]:
    """All units of `model` in forward order (slimdiff or diffusers U-Net), with their modules.

    `inner=True`: also the inner blocks of Transformer units of depth > 1 (kind "tblock", right
    after their unit; `slimdiff.unet.list_units`). They sit inside their unit: never add their
    rows to their unit's."""
    return [
        ProfiledUnit(
            name=u.name,
            kind=u.kind,
            block=u.block,
            level=u.level,
            in_channels=u.in_channels,
            out_channels=u.out_channels,
            params=u.params,
            cross_attention_dim=u.cross_attention_dim,
            module=get_module(model, u.name),
        )
        for u in unet_units(model, inner=inner)
    ]


def transformer_parts(unit: ProfiledUnit) -> tuple[ProfiledUnit, list[ProfiledUnit]] | None:
    """A Transformer unit as (its shell: norm, proj_in, proj_out; its inner blocks, in order), for
    a latency model that composes units of any depth (`LatencyLUT`); None for other units.
    The shell's `params` are the unit's minus its blocks'; it keeps the unit's module."""
    blocks = getattr(unit.module, "transformer_blocks", None) if unit.kind == "attn" else None
    if not blocks:
        return None
    inner = []
    for k, block in enumerate(blocks):
        width = (block.attn1 or block.attn2).to_q.in_features  # (B, H*W, width) tokens (a cross-only block: attn2)
        inner.append(ProfiledUnit(f"{unit.name}.tblock.{k}", "tblock", unit.block, unit.level, width, width,
                                  num_params(block), unit.cross_attention_dim, block))
    shell_params = unit.params - sum(b.params for b in inner)
    shell = ProfiledUnit(f"{unit.name}.shell", "tshell", unit.block, unit.level, unit.in_channels,
                         unit.out_channels, shell_params, None, unit.module)
    return shell, inner


def num_levels(units: list[ProfiledUnit]) -> int:
    """Spatial levels the U-Net uses (4 in SD: latent, /2, /4, /8)."""
    return max(u.level for u in units) + 1


def block_order(units: list[ProfiledUnit]) -> list[str]:
    """Block names in forward order, as they appear among `units`."""
    return list(dict.fromkeys(u.block for u in units))
