"""Export a slim U-Net as a plain diffusers `UNet2DConditionModel` when its structure allows.

Expressibility is decided by construction, not by a list of rules: build the candidate
diffusers config from the slim structure, derive the structure diffusers would build for it
(`blocks_from_diffusers_config`, no weights), and compare. Equal -> the export is exact
(same units, same kwargs, same skip pairing); different -> `None`.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .structure import (
    UNetEditError,
    base_from_diffusers_config,
    blocks_from_diffusers_config,
    layer_keys,
)

# top-level modules whose tensor names are the same in both classes
_SHARED = ("conv_in.", "time_proj.", "time_embedding.", "add_time_proj.", "add_embedding.", "conv_norm_out.",
           "conv_out.")


def _slim_prefixes(blocks: dict) -> dict[str, str]:
    """Slim unit module path -> diffusers module path (uniform layers: resnet j / attention j)."""
    out = {}
    for side, dname, sampler in (("down", "down_blocks", "downsample"), ("up", "up_blocks", "upsample")):
        for i, block in enumerate(blocks[side]):
            for j, layer in enumerate(block["layers"]):
                for key in layer_keys(layer):
                    kind = "resnets" if key == "resnet" else "attentions" if key == "attn" else None
                    if kind is None:
                        unit = f"{side}.{i}.layer.{j}.{key.replace('_', '.')}"
                        raise UNetEditError(f"{unit} has no diffusers counterpart")
                    out[f"{side}.{i}.layer.{j}.{key}"] = f"{dname}.{i}.{kind}.{j}"
            if block.get(sampler):
                out[f"{side}.{i}.{sampler}"] = f"{dname}.{i}.{sampler}rs.0"
    mid = blocks.get("mid") or []
    for key in layer_keys(mid, in_mid=True):
        out[f"mid.{key}"] = {"resnet_0": "mid_block.resnets.0", "attn": "mid_block.attentions.0",
                             "resnet_1": "mid_block.resnets.1"}.get(key) or _no_counterpart(key)
    return out


def _no_counterpart(key: str) -> str:
    raise UNetEditError(f"mid.{key.replace('_', '.')} has no diffusers counterpart")


def slim_to_diffusers_names(blocks: dict, tensor_names: list[str]) -> dict[str, str]:
    """Slim tensor name -> diffusers tensor name, for `tensor_names` (e.g. a model's `state_dict()` keys)."""
    prefixes = _slim_prefixes(blocks)
    out = {}
    for name in tensor_names:
        if name.startswith(_SHARED):
            out[name] = name
            continue
        for n_parts in (5, 3, 2):  # down.1.layer.0.attn.<...> | down.1.downsample.<...> | mid.attn.<...>
            head = ".".join(name.split(".")[:n_parts])
            if head in prefixes and name.startswith(head + "."):
                out[name] = prefixes[head] + name[len(head):]
                break
        else:
            raise UNetEditError(f"tensor {name} has no diffusers counterpart")
    return out


def _plain(x: Any) -> Any:
    """JSON-normalise (tuples -> lists) for comparisons."""
    return json.loads(json.dumps(x, sort_keys=True))


def _first_attn(units: list[dict]) -> dict | None:
    return next((u["kwargs"] for u in units if u["type"] == "attn"), None)


def _depths(block: dict) -> list[int] | None:
    """Per-layer Transformer depth of a block (diffusers' per-layer `transformer_layers_per_block`
    entry), or None when its first layer has no attention (a plain block)."""
    if _first_attn(block["layers"][0]) is None:
        return None
    return [(_first_attn(layer) or {}).get("num_layers", 1) for layer in block["layers"]]


def _compact(values: list) -> object:
    """[2, 2] -> 2; [4, 10] stays (diffusers accepts an int or a per-layer list)."""
    return values[0] if len(set(map(str, values))) == 1 else values


def _transformer_depths(down: list[dict], up: list[dict], mid: list[dict] | None) -> dict:
    """`transformer_layers_per_block` (per down block: int or per-layer list; the last entry's
    first value is also the mid block's depth, as diffusers builds it) and, when the up side is
    not its mirror, `reverse_transformer_layers_per_block` (per up block; SSD-1B/Vega style)."""
    mid_depth = (_first_attn(mid) or {}).get("num_layers", 1) if mid else 1
    n = len(down)
    tlpb = []
    for k, block in enumerate(down):
        depths = _depths(block)
        tlpb.append(_compact(depths) if depths else (mid_depth if k == n - 1 else 1))
    rev = [_compact(_depths(block)) if _depths(block) else 1 for block in up]
    uniform = all(isinstance(t, int) for t in tlpb)
    out = {"transformer_layers_per_block": _compact(tlpb) if uniform else tlpb}
    if rev != list(reversed(tlpb)) or not uniform:  # diffusers needs it when a down entry is a list
        out["reverse_transformer_layers_per_block"] = rev
    return out


def diffusers_config_for(model) -> dict | None:
    """The diffusers config that would express `model`'s structure (not yet checked), or None."""
    blocks, base = model.config.blocks, model.base_config()
    down, up, mid = blocks["down"], blocks["up"], blocks.get("mid") or None
    n = len(down)
    if n == 0 or len(up) != n or any(not b["layers"] for b in down + up):
        return None
    try:
        boc = [b["layers"][0][0]["kwargs"]["out_channels"] for b in down]
        down_attn = [_first_attn(b["layers"][0]) for b in down]
        up_attn = [_first_attn(b["layers"][0]) for b in up]
        first_res = down[0]["layers"][0][0]["kwargs"]
    except (KeyError, IndexError):
        return None
    # per level k: attention settings from down.k, else from its mirror up.(n-1-k), else the mid block
    per_level = []
    for k in range(n):
        kw = down_attn[k] or up_attn[n - 1 - k] or (_first_attn(mid) if mid and k == n - 1 else None)
        per_level.append(kw or {"num_attention_heads": 8, "cross_attention_dim": None, "num_layers": 1,
                                "only_cross_attention": False})
    any_attn = next((kw for kw in down_attn + up_attn + [_first_attn(mid or [])] if kw), {})
    # no attention at all: the width the model was made for (diffusers' default 1280 if unknown)
    width = any_attn.get("cross_attention_dim", base.get("cross_attention_dim") or 1280)
    cross = [kw["cross_attention_dim"] or width for kw in per_level]
    lpb = [len(b["layers"]) for b in down]
    samplers = [b.get("downsample") for b in down if b.get("downsample")]
    cfg = dict(
        sample_size=base["sample_size"],
        in_channels=base["in_channels"],
        out_channels=base["out_channels"],
        center_input_sample=base["center_input_sample"],
        flip_sin_to_cos=base["flip_sin_to_cos"],
        freq_shift=base["freq_shift"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        mid_block_type="UNetMidBlock2DCrossAttn" if mid else None,
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        only_cross_attention=[bool(kw.get("only_cross_attention", False)) for kw in per_level],
        block_out_channels=boc,
        layers_per_block=lpb[0] if len(set(lpb)) == 1 else lpb,
        downsample_padding=samplers[0]["kwargs"].get("padding", 1) if samplers else 1,
        mid_block_scale_factor=mid[0]["kwargs"]["output_scale_factor"] if mid else 1,
        dropout=first_res.get("dropout", 0.0),
        act_fn=base["act_fn"],
        norm_num_groups=base["norm_num_groups"],
        norm_eps=base["norm_eps"],
        cross_attention_dim=cross[0] if len(set(cross)) == 1 else cross,
        **_transformer_depths(down, up, mid),
        attention_head_dim=[kw["num_attention_heads"] for kw in per_level],
        use_linear_projection=any_attn.get("use_linear_projection", False),
        upcast_attention=any_attn.get("upcast_attention", False),
        resnet_time_scale_shift=first_res.get("time_embedding_norm", "default"),
        time_embedding_dim=None if base["time_embed_dim"] == 4 * boc[0] else base["time_embed_dim"],
        timestep_post_act=base["timestep_post_act"],
        time_embedding_act_fn=base["time_embedding_act_fn"],
        time_cond_proj_dim=base["time_cond_proj_dim"],
        conv_in_kernel=base["conv_in_kernel"],
        conv_out_kernel=base["conv_out_kernel"],
        addition_embed_type=base.get("addition_embed_type"),
        addition_time_embed_dim=base.get("addition_time_embed_dim"),
        projection_class_embeddings_input_dim=base.get("projection_class_embeddings_input_dim"),
    )
    # compact per-block lists that are uniform, as SD configs write them
    for key in ("only_cross_attention", "attention_head_dim"):
        if len(set(cfg[key])) == 1:
            cfg[key] = cfg[key][0]
    return cfg


def is_expressible(model) -> bool:
    """True when a plain diffusers `UNet2DConditionModel` config builds exactly `model`'s structure."""
    cfg = diffusers_config_for(model)
    if cfg is None:
        return False
    try:
        blocks, base = blocks_from_diffusers_config(cfg), base_from_diffusers_config(cfg)
    except (UNetEditError, KeyError, IndexError, TypeError, ZeroDivisionError):
        return False
    own = model.base_config()
    mid_own = model.config.blocks.get("mid") or None
    keys = [k for k in base if k != "cross_attention_dim"]  # the units' widths are compared with `blocks`
    return (_plain({**model.config.blocks, "mid": mid_own}) == _plain({**blocks, "mid": blocks["mid"] or None})
            and _plain({k: own.get(k) for k in keys}) == _plain({k: base[k] for k in keys}))


def to_diffusers(model, clone: bool = True):
    """A plain `UNet2DConditionModel` with `model`'s weights, or None when not expressible.

    A diffusers model is returned as is. `clone=False` shares the tensors with `model` (as
    `SlimUNet2DConditionModel.from_diffusers(clone=False)`: one copy of a 10 GB SDXL U-Net, not two).
    """
    from diffusers import UNet2DConditionModel

    if isinstance(model, UNet2DConditionModel):
        return model
    if not is_expressible(model):
        return None
    cfg = diffusers_config_for(model)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    names = slim_to_diffusers_names(model.config.blocks, list(model.state_dict()))
    source = model.state_dict()
    tensors = {names[k]: v.detach().clone() if clone else v.detach() for k, v in source.items()}
    unet.load_state_dict(tensors, strict=True, assign=True)
    return unet.train(model.training)
