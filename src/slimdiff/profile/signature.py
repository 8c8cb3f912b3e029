"""Signatures: what a unit's (or a whole model's stem's) latency depends on.

A latency lookup table is keyed by these. Two units with the same signature are assumed to
take the same time: same module class and kind, same channels, same input spatial size,
same parameter count (a cheap fingerprint of the layer sizes inside the unit, e.g. the
feed-forward width or the number of transformer layers), and for attention the heads, the
text context (length x width) and the attention processor class (an attention variant such
as GRI attention changes latency without changing parameters); plus the run settings:
dtype, device, batch and intra-op threads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from slimdiff.unet import get_module

from .units import ProfiledUnit


def device_label(device: torch.device | str) -> str:
    """"cpu", or "cuda (NVIDIA H100 80GB HBM3)": latency tables are not portable across GPUs."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


@dataclass(frozen=True)
class UnitSignature:
    kind: str  # resnet | attn | downsample | upsample
    module: str  # module class name
    in_channels: int
    out_channels: int
    height: int  # input spatial size (latent tokens)
    width: int
    params: int  # structure fingerprint
    heads: int | None  # attention heads (attn only)
    context_length: int | None  # text tokens (attn only)
    cross_attention_dim: int | None  # text width (attn only)
    attn_processor: str | None  # attention processor class(es) (attn only)
    dtype: str
    device: str
    batch: int
    threads: int

    def key(self) -> str:
        """Readable unique key, e.g.
        'attn Transformer2DModel[AttnProcessor2_0] 320->320 @64x64 p=2.87M heads=8 ctx=77x768 | float32 cpu b1 t2'."""
        s = f"{self.kind} {self.module}"
        if self.attn_processor:
            s += f"[{self.attn_processor}]"
        s += f" {self.in_channels}->{self.out_channels} @{self.height}x{self.width} p={self.params}"
        if self.kind in ("attn", "tblock"):
            s += f" heads={self.heads} ctx={self.context_length}x{self.cross_attention_dim}"
        return s + f" | {self.dtype} {self.device} b{self.batch} t{self.threads}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StemSignature:
    """Model-level signature of the part outside the units (conv_in, time embedding,
    conv_norm_out, conv_out) and the glue between units."""

    in_channels: int
    out_channels: int
    stem_channels: int  # conv_in output channels
    time_embed_dim: int
    height: int  # latent size
    width: int
    context_length: int
    cross_attention_dim: int
    dtype: str
    device: str
    batch: int
    threads: int

    def key(self) -> str:
        return (
            f"stem {self.in_channels}->{self.stem_channels}..->{self.out_channels} temb={self.time_embed_dim} "
            f"@{self.height}x{self.width} ctx={self.context_length}x{self.cross_attention_dim} "
            f"| {self.dtype} {self.device} b{self.batch} t{self.threads}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _attention_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if hasattr(m, "processor") and hasattr(m, "heads")]


def unit_signature(
    unit: ProfiledUnit,
    latent_size: int,
    *,
    context_length: int,
    cross_attention_dim: int,
    dtype: str,
    device: str,
    batch: int,
    threads: int,
) -> UnitSignature:
    """Signature of `unit` when the U-Net runs on a latent_size x latent_size latent."""
    size = latent_size >> unit.level
    is_attn = unit.kind in ("attn", "tblock")  # a Transformer unit or one of its inner blocks
    heads = processor = None
    if is_attn:
        attns = _attention_modules(unit.module)
        heads = attns[0].heads if attns else None
        processor = "+".join(sorted({type(a.processor).__name__ for a in attns})) or None
    return UnitSignature(
        kind=unit.kind,
        module=getattr(unit.module, "signature_label", type(unit.module).__name__),  # new unit types add settings
        in_channels=unit.in_channels,
        out_channels=unit.out_channels,
        height=size,
        width=size,
        params=unit.params,
        heads=heads,
        context_length=context_length if is_attn else None,
        cross_attention_dim=cross_attention_dim if is_attn else None,
        attn_processor=processor,
        dtype=dtype,
        device=device,
        batch=batch,
        threads=threads,
    )


def stem_signature(
    model: nn.Module,
    latent_size: int,
    *,
    context_length: int,
    cross_attention_dim: int,
    dtype: str,
    device: str,
    batch: int,
    threads: int,
) -> StemSignature:
    temb = getattr(getattr(model, "time_embedding", None), "linear_2", None)
    return StemSignature(
        in_channels=int(model.config.in_channels),
        out_channels=int(model.config.out_channels),
        stem_channels=int(get_module(model, "conv_in").out_channels),
        time_embed_dim=int(temb.out_features) if temb is not None else 0,
        height=latent_size,
        width=latent_size,
        context_length=context_length,
        cross_attention_dim=cross_attention_dim,
        dtype=dtype,
        device=device,
        batch=batch,
        threads=threads,
    )
