"""Name-based access that works on both a diffusers `UNet2DConditionModel` and a slim U-Net.

    get_module(unet, "down.1.layer.0.attn")   # diffusers: unet.down_blocks[1].attentions[0]
    block_names(unet)                         # ['down.0', ..., 'mid', 'up.0', ...]
    list_units(unet)                          # [UnitInfo(...), ...] in forward order
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .structure import INNER_KIND, UnitInfo, blocks_from_diffusers_config, block_names_of, inner_units, iter_units
from .structure import layer_names_of, name_to_path, single_width, validate


def num_params(module: nn.Module) -> int:
    """Parameters (elements) of a module: `ModelMixin.num_parameters()` for diffusers models,
    the same count for a plain `nn.Module` such as one unit."""
    if hasattr(module, "num_parameters"):
        return int(module.num_parameters())
    return sum(p.numel() for p in module.parameters())


def is_slim(model: nn.Module) -> bool:
    """True for slimdiff's editable U-Net: the model whose config holds the structure
    description `blocks` (structure.py); False for a diffusers `UNet2DConditionModel`."""
    config = getattr(model, "config", None)
    return config is not None and "blocks" in config


def _diffusers_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for a diffusers UNet2DConditionModel, read off its module tree."""
    out: dict[str, nn.Module] = {"conv_in": unet.conv_in, "time_embedding": unet.time_embedding,
                                 "conv_norm_out": unet.conv_norm_out, "conv_out": unet.conv_out}
    for side, blocks, sampler in (("down", unet.down_blocks, "downsample"), ("up", unet.up_blocks, "upsample")):
        for i, block in enumerate(blocks):
            out[f"{side}.{i}"] = block
            attns = getattr(block, "attentions", None) or []
            for j, resnet in enumerate(block.resnets):
                out[f"{side}.{i}.layer.{j}.resnet"] = resnet
                if j < len(attns):
                    out[f"{side}.{i}.layer.{j}.attn"] = attns[j]
            samplers = getattr(block, f"{sampler}rs", None)
            if samplers:
                out[f"{side}.{i}.{sampler}"] = samplers[0]
        if side == "down" and unet.mid_block is not None:
            mid = unet.mid_block
            out["mid"] = mid
            for k, resnet in enumerate(mid.resnets):
                out[f"mid.resnet.{k}"] = resnet
            for k, attn in enumerate(getattr(mid, "attentions", None) or []):
                out["mid.attn" if k == 0 else f"mid.attn.{k}"] = attn
    for name, module in list(out.items()):  # inner blocks of Transformer units of depth > 1
        inner = getattr(module, "transformer_blocks", None) if name.rsplit(".", 1)[-1] == "attn" else None
        if inner is not None and len(inner) > 1:
            out.update({f"{name}.{INNER_KIND}.{k}": block for k, block in enumerate(inner)})
    return out


def _slim_names(model: nn.Module) -> list[str]:
    blocks = model.config.blocks
    names = ["conv_in", "time_embedding"] + block_names_of(blocks) + layer_names_of(blocks)
    names += [n for n, _, _ in iter_units(blocks)] + [n for n, _, _ in inner_units(blocks)]
    return names + ["conv_norm_out", "conv_out"]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The module named `name` (block, unit, `conv_in`, `time_embedding`, `conv_norm_out`,
    `conv_out`; layers on slim models).

    Raises ValueError listing the valid names when `name` is unknown.
    """
    if is_slim(model):
        valid = _slim_names(model)
        if name in valid:
            return model.get_submodule(name_to_path(name))
    else:
        modules = _diffusers_modules(model)
        if name in modules:
            return modules[name]
        valid = list(modules)
    raise ValueError(f"unknown module name {name!r} for {type(model).__name__}; valid names: {valid}")


def module_names(model: nn.Module) -> list[str]:
    """All names `get_module` accepts for `model`."""
    return _slim_names(model) if is_slim(model) else list(_diffusers_modules(model))


def module_output_tensor(output: Any) -> torch.Tensor:
    """A module's forward output -> its feature tensor (tuple -> [0], `.sample` -> sample).

    Use in forward hooks: `feats[name] = module_output_tensor(out)`.
    """
    while True:
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        elif hasattr(output, "sample"):
            output = output.sample
        else:
            raise TypeError(f"cannot find a tensor in a module output of type {type(output).__name__}")


def block_names(model: nn.Module) -> list[str]:
    """Block names present in `model`, in forward order (`down.0`, ..., `mid`, `up.0`, ...)."""
    if is_slim(model):
        return block_names_of(model.config.blocks)
    names = [f"down.{i}" for i in range(len(model.down_blocks))]
    if model.mid_block is not None:
        names.append("mid")
    return names + [f"up.{i}" for i in range(len(model.up_blocks))]


def with_inner_units(infos: list[UnitInfo], blocks: dict, module_of) -> list[UnitInfo]:
    """`infos` with, right after each Transformer unit of depth > 1, one entry per inner
    `BasicTransformerBlock` (kind "tblock", `parent` = the unit; its channels are the block's
    token width, its level the unit's). `module_of(name)` returns the module of a unit name."""
    inner: dict[str, list[UnitInfo]] = {}
    by_name = {u.name: u for u in infos}
    for name, unit_name, _ in inner_units(blocks):
        parent = by_name[unit_name]
        block = module_of(name)
        width = block.attn1.to_q.in_features  # (B, H*W, width) tokens in and out
        inner.setdefault(unit_name, []).append(UnitInfo(
            name=name, kind=INNER_KIND, block=parent.block, in_channels=width, out_channels=width,
            level=parent.level, params=num_params(block), cross_attention_dim=parent.cross_attention_dim,
            type=INNER_KIND, parent=unit_name))
    return [v for u in infos for v in [u] + inner.get(u.name, [])]


def list_units(model: nn.Module, inner: bool = False) -> list[UnitInfo]:
    """`model.units(inner)` for a slim model; the same listing for a diffusers U-Net (no copy made).

    `inner=True` adds the inner blocks of Transformer units of depth > 1 (`with_inner_units`).
    """
    if is_slim(model):
        return model.units(inner=inner)
    cfg = dict(model.config)
    blocks = blocks_from_diffusers_config(cfg)
    traces = validate(blocks, cfg["block_out_channels"][0])
    infos = []
    for name, block, unit in iter_units(blocks):
        t = traces[name]
        module = get_module(model, name)
        infos.append(UnitInfo(
            name=name, kind=unit["type"], block=block, in_channels=t.in_channels, out_channels=t.out_channels,
            level=t.level, params=num_params(module),
            cross_attention_dim=unit["kwargs"].get("cross_attention_dim") if unit["type"] == "attn" else None,
            skip=unit.get("skip"), type=unit["type"],
        ))
    return with_inner_units(infos, blocks, lambda name: get_module(model, name)) if inner else infos


DEFAULT_TEXT_WIDTH = 768  # SD-1.x's CLIP width: only for a model that reads no text and does not say its width


def text_widths(model: nn.Module) -> set[int]:
    """The text-embedding widths D (the `encoder_hidden_states` (B, L, D)) that the attention
    units of a slim or diffusers U-Net read: `cross_attention_dim` per unit, not the config's
    single value (a slim config has none; a diffusers one may list one per block). Empty when no
    unit reads the text."""
    return {u.cross_attention_dim for u in list_units(model) if u.kind == "attn" and u.cross_attention_dim}


def text_width(model: nn.Module) -> int:
    """The one text-embedding width D a U-Net reads (`text_widths`). Raises ValueError when its
    units read several. When none reads the text (e.g. every attention pruned), the width the
    model was made for: its config's `cross_attention_dim` (diffusers and slim models carry
    it; one number or one per block), else `DEFAULT_TEXT_WIDTH` (any width then runs), so a
    candidate without attention keeps its teacher's text signature in a latency table."""
    dims = text_widths(model)
    if len(dims) > 1:
        raise ValueError(f"the U-Net's attention units read text of different widths {sorted(dims)}; "
                         "one width is supported")
    if dims:
        return int(dims.pop())
    dim = single_width(model.config.get("cross_attention_dim"))
    return dim if dim is not None else DEFAULT_TEXT_WIDTH


SDXL_VAE_FACTOR = 8  # pixels per latent side in SDXL's (and SD's) VAE: time ids are in pixels


def added_cond_inputs(model: nn.Module, batch: int, generator: torch.Generator | None = None,
                      size_px: int | None = None) -> dict[str, torch.Tensor] | None:
    """Seeded stand-in added conditioning for a bare U-Net with `addition_embed_type="text_time"`
    (SDXL), else None: `text_embeds` (B, P) ~ N(0, 1), P = projection_class_embeddings_input_dim
    - 6 * addition_time_embed_dim (the pooled text width), and `time_ids` (B, 6) = (original
    size, crop top-left, target size) = (px, px, 0, 0, px, px), px = `size_px` or the model's
    sample size times the VAE factor. For profiling, calibration without a pipeline, and tests;
    a pipeline's own conditioning comes from `slimdiff.sample.encode_prompts`."""
    cfg = model.config
    if cfg.get("addition_embed_type") != "text_time":
        return None
    width = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    size = cfg["sample_size"] if isinstance(cfg["sample_size"], int) else cfg["sample_size"][0]
    px = float(size_px or size * SDXL_VAE_FACTOR)
    return {"text_embeds": torch.randn(batch, width, generator=generator),
            "time_ids": torch.tensor([[px, px, 0.0, 0.0, px, px]]).expand(batch, -1).clone()}
