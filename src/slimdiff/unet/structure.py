"""The structure description of an editable U-Net, its unit names, and its validation.

A U-Net is `conv_in`, a time embedding, down blocks, an optional mid block, up blocks and
`conv_norm_out`/`conv_act`/`conv_out`. The part that edits change is one JSON-able dict,
stored as `blocks` in the model's config:

    blocks = {
        "down": [{"layers": [[unit, ...], ...], "downsample": unit | None}, ...],
        "mid":  [unit, ...] | None,              # SD: [resnet, attn, resnet]
        "up":   [{"layers": [[unit, ...], ...], "upsample": unit | None}, ...],
    }
    unit = {"type": "resnet" | "attn" | "downsample" | "upsample" | a registered type,
            "kwargs": {...},                     # constructor kwargs of the module
            "skip": "down.3.layer.1"}            # up-side resnets only: the skip point consumed

Every unit type has a role (`UNIT_ROLES`), one of `ROLES`: the role fixes the unit's name, how
forward calls it and its channel rules, so a new type (CondConv ResNet, GRI attention)
registered with `slimdiff.unet.register_unit_type` is a unit of the same representation.

Unit names are positional, so a structure names its units the same way however it was made:
`down.1.layer.0.resnet`, `down.1.layer.0.attn`, a second attention in the same layer
`down.1.layer.0.attn.1`, `down.1.downsample`, `mid.resnet.0`, `mid.attn`, `mid.resnet.1`,
`up.0.upsample`. Module paths replace the kind's index dot by `_` (`attn_1`, `resnet_0`).

Skip points (DESIGN.md "One representation of a U-Net"): `conv_in`'s output, each down layer's
output and each downsampler's output, named `conv_in`, `down.i.layer.j`, `down.i.downsample`.
Every up-side resnet with a `skip` concatenates that point's value to its input.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, Iterator

ROLES = ("resnet", "attn", "downsample", "upsample")
# unit type -> role. resnet: `unit(h, temb)`, in/out_channels (in includes a consumed skip);
# attn: `unit(h, encoder_hidden_states=..., return_dict=False)[0]`, in_channels preserved;
# downsample: `unit(h)`, level + 1; upsample: `unit(h, size)`, level - 1 (channels/out_channels).
UNIT_ROLES: dict[str, str] = {"resnet": "resnet", "attn": "attn", "downsample": "downsample", "upsample": "upsample"}


class UNetEditError(ValueError):
    """An edit (or a structure) that cannot be well formed; the message names the unit and why."""


@dataclasses.dataclass
class UnitInfo:
    """One unit of a U-Net, as listed by `SlimUNet2DConditionModel.units()`."""

    name: str  # e.g. "down.1.layer.0.attn"
    kind: str  # the role: "resnet" | "attn" | "downsample" | "upsample"
    block: str  # "down.1" | "mid" | "up.0"
    in_channels: int  # main-path channels plus the skip's channels for up-side resnets
    out_channels: int
    level: int  # level of the unit's input: 0 = latent resolution, spatial size = sample_size >> level
    params: int
    cross_attention_dim: int | None = None  # attn units only
    skip: str | None = None  # the skip point an up-side resnet consumes
    type: str = ""  # the unit type ("resnet", "attn", ... or a registered type such as a CondConv)
    parent: str | None = None  # inner units (kind "tblock"): the Transformer unit they sit in


def role_of(unit: dict) -> str:
    """The role of a unit description (`UNIT_ROLES[unit["type"]]`)."""
    try:
        return UNIT_ROLES[unit["type"]]
    except KeyError:
        raise UNetEditError(f"unknown unit type {unit.get('type')!r}; registered: {list(UNIT_ROLES)} "
                            "(new types register with slimdiff.unet.register_unit_type)") from None


# ----------------------------------------------------------------------------- names


def unit_key(role: str, index: int, in_mid: bool = False) -> str:
    """Key of the k-th unit of `role` in a layer (`attn`, `attn_1`) or the mid block (`resnet_0`)."""
    if in_mid and role == "resnet":
        return f"resnet_{index}"
    return role if index == 0 else f"{role}_{index}"


def layer_keys(units: list[dict], in_mid: bool = False) -> list[str]:
    """Module keys of a layer's units, in order: roles numbered by occurrence."""
    seen: dict[str, int] = {}
    keys = []
    for unit in units:
        role = role_of(unit)
        k = seen.get(role, 0)
        seen[role] = k + 1
        keys.append(unit_key(role, k, in_mid))
    return keys


def key_to_name(key: str) -> str:
    """`attn_1` -> `attn.1` (module key -> the last part of a unit name)."""
    return re.sub(r"_(\d+)$", r".\1", key)


def name_to_path(name: str) -> str:
    """Unit/layer/block name -> module path in a SlimUNet2DConditionModel.

    `down.1.layer.0.attn.1` -> `down.1.layer.0.attn_1`; `mid.resnet.0` -> `mid.resnet_0`;
    an inner block `down.2.layer.0.attn.tblock.3` -> `down.2.layer.0.attn.transformer_blocks.3`.
    """
    inner = split_inner(name)
    if inner is not None:
        return f"{name_to_path(inner[0])}.transformer_blocks.{inner[1]}"
    return re.sub(r"\.(resnet|attn)\.(\d+)$", r".\1_\2", name)


# Inner units: the `BasicTransformerBlock`s of a Transformer unit of depth > 1 (SDXL's
# transformer_layers_per_block up to 10) are units of their own, named `<attn unit>.tblock.k`
# (k = 0..depth-1): removable (the unit's depth drops by one), scored and timed. They are not
# part of `blocks` (the unit's `num_layers` kwarg says how many there are) and `iter_units`
# does not yield them; `inner_units` does.
INNER_KIND = "tblock"
_INNER_RE = re.compile(r"^(.+)\.tblock\.(\d+)$")


def split_inner(name: str) -> tuple[str, int] | None:
    """`down.2.layer.0.attn.tblock.3` -> (`down.2.layer.0.attn`, 3); None for any other name."""
    m = _INNER_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def depth_of(unit: dict) -> int:
    """Inner transformer blocks of an attention unit (its `num_layers`; 1 when not given)."""
    return int(unit["kwargs"].get("num_layers", 1)) if role_of(unit) == "attn" else 0


def inner_units(blocks: dict) -> Iterator[tuple[str, str, int]]:
    """Yield `(inner name, unit name, k)` for every inner block of a Transformer unit of depth > 1."""
    for name, _, unit in iter_units(blocks):
        depth = depth_of(unit)
        if depth > 1:
            for k in range(depth):
                yield f"{name}.{INNER_KIND}.{k}", name, k


_TENSOR_RE = re.compile(
    r"^((?:down|up)\.\d+\.layer\.\d+\.\w+"  # a unit in a layer: down.1.layer.0.attn_1
    r"|(?:down|up)\.\d+\.(?:downsample|upsample)"  # a sampler: down.1.downsample
    r"|mid\.\w+)"  # a mid unit: mid.resnet_0
    r"\.(.+)$"  # the tensor inside the unit: proj_in.weight
)


def split_tensor_name(name: str) -> tuple[str | None, str]:
    """`down.1.layer.0.attn_1.proj_in.weight` -> (`down.1.layer.0.attn.1`, `proj_in.weight`).

    Tensors outside units (`conv_in.weight`, `time_embedding...`) give (None, name).
    """
    m = _TENSOR_RE.match(name)
    if not m:
        return None, name
    path, rest = m.groups()
    head, _, last = path.rpartition(".")
    return f"{head}.{key_to_name(last)}", rest


def iter_units(blocks: dict) -> Iterator[tuple[str, str, dict]]:
    """Yield `(name, block_name, unit)` in forward order."""
    for i, block in enumerate(blocks["down"]):
        for j, layer in enumerate(block["layers"]):
            for key, unit in zip(layer_keys(layer), layer):
                yield f"down.{i}.layer.{j}.{key_to_name(key)}", f"down.{i}", unit
        if block.get("downsample"):
            yield f"down.{i}.downsample", f"down.{i}", block["downsample"]
    if blocks.get("mid"):
        for key, unit in zip(layer_keys(blocks["mid"], in_mid=True), blocks["mid"]):
            yield f"mid.{key_to_name(key)}", "mid", unit
    for i, block in enumerate(blocks["up"]):
        for j, layer in enumerate(block["layers"]):
            for key, unit in zip(layer_keys(layer), layer):
                yield f"up.{i}.layer.{j}.{key_to_name(key)}", f"up.{i}", unit
        if block.get("upsample"):
            yield f"up.{i}.upsample", f"up.{i}", block["upsample"]


def block_names_of(blocks: dict) -> list[str]:
    """Block names present, in forward order."""
    names = [f"down.{i}" for i in range(len(blocks["down"]))]
    if blocks.get("mid"):
        names.append("mid")
    return names + [f"up.{i}" for i in range(len(blocks["up"]))]


def layer_names_of(blocks: dict) -> list[str]:
    names = []
    for side in ("down", "up"):
        for i, block in enumerate(blocks[side]):
            names += [f"{side}.{i}.layer.{j}" for j in range(len(block["layers"]))]
    return names


def skip_points_of(blocks: dict) -> list[str]:
    """Names of the skip points, in forward order."""
    points = ["conv_in"]
    for i, block in enumerate(blocks["down"]):
        points += [f"down.{i}.layer.{j}" for j in range(len(block["layers"]))]
        if block.get("downsample"):
            points.append(f"down.{i}.downsample")
    return points


def consumed_skips(blocks: dict) -> set[str]:
    """The skip points some up-side resnet consumes (only these are stored in forward)."""
    return {u["skip"] for _, _, u in iter_units(blocks) if u.get("skip")}


# ----------------------------------------------------------------------------- unit shapes


def unit_channels(unit: dict) -> tuple[int, int]:
    """(in_channels, out_channels) of a unit from its kwargs (resnet in includes its skip)."""
    kw, role = unit["kwargs"], role_of(unit)
    if role == "resnet":
        return kw["in_channels"], kw.get("out_channels") or kw["in_channels"]
    if role == "attn":
        return kw["in_channels"], kw.get("out_channels") or kw["in_channels"]
    return kw["channels"], kw.get("out_channels") or kw["channels"]


@dataclasses.dataclass
class _Trace:
    """What the symbolic pass learned about one unit."""

    in_channels: int
    out_channels: int
    level: int


def validate(blocks: dict, model_channels: int, labels: dict[str, str] | None = None) -> dict[str, _Trace]:
    """Symbolic pass over (channels, level) through the graph; raise `UNetEditError` on a misfit.

    Checks: every unit's in_channels equals what arrives (for an up-side resnet: main + skip
    channels, and the skip's level equals the main path's level); every skip names an
    existing skip point; the output ends at level 0 with `model_channels` channels
    (`conv_norm_out`/`conv_out`). Returns the per-unit trace, keyed by unit name.
    `labels` renames units in error messages (an edit reports the names before renumbering).
    """
    traces: dict[str, _Trace] = {}
    points: dict[str, tuple[int, int]] = {"conv_in": (model_channels, 0)}
    ch, level = model_channels, 0  # conv_in output: (B, model_channels, H, W)

    def step(key_name: str, unit: dict) -> None:
        nonlocal ch, level
        name = (labels or {}).get(key_name, key_name)
        kind = role_of(unit)
        c_in, c_out = unit_channels(unit)
        arriving, why = ch, ""
        if unit.get("skip"):
            if kind != "resnet":
                raise UNetEditError(f"{name}: only resnet units consume a skip, not {kind!r}")
            if unit["skip"] not in points:
                raise UNetEditError(f"{name} consumes skip point {unit['skip']!r}, which does not exist "
                                    f"(skip points: {list(points)})")
            s_ch, s_level = points[unit["skip"]]
            if s_level != level:
                raise UNetEditError(f"{name} concatenates skip {unit['skip']} at level {s_level} to the "
                                    f"main path at level {level}: resolutions differ")
            arriving, why = ch + s_ch, f" ({ch} main + {s_ch} from skip {unit['skip']})"
        if c_in != arriving:
            raise UNetEditError(f"{name} expects {c_in} input channels but receives {arriving}{why}")
        new_level = level + (kind == "downsample") - (kind == "upsample")
        if new_level < 0:
            raise UNetEditError(f"{name} upsamples above the latent resolution (level {new_level})")
        traces[key_name] = _Trace(c_in, c_out, level)
        ch, level = c_out, new_level

    for i, block in enumerate(blocks["down"]):
        for j, layer in enumerate(block["layers"]):
            if not layer:
                raise UNetEditError(f"down.{i}.layer.{j} has no units")
            for key, unit in zip(layer_keys(layer), layer):
                step(f"down.{i}.layer.{j}.{key_to_name(key)}", unit)
            points[f"down.{i}.layer.{j}"] = (ch, level)
        if block.get("downsample"):
            step(f"down.{i}.downsample", block["downsample"])
            points[f"down.{i}.downsample"] = (ch, level)
    if blocks.get("mid"):
        for key, unit in zip(layer_keys(blocks["mid"], in_mid=True), blocks["mid"]):
            step(f"mid.{key_to_name(key)}", unit)
    for i, block in enumerate(blocks["up"]):
        for j, layer in enumerate(block["layers"]):
            if not layer:
                raise UNetEditError(f"up.{i}.layer.{j} has no units")
            for key, unit in zip(layer_keys(layer), layer):
                step(f"up.{i}.layer.{j}.{key_to_name(key)}", unit)
        if block.get("upsample"):
            step(f"up.{i}.upsample", block["upsample"])
    if level != 0:
        raise UNetEditError(f"the output ends at level {level}, not at the latent resolution (level 0): "
                            "downsamplers and upsamplers do not balance")
    if ch != model_channels:
        raise UNetEditError(f"conv_out expects {model_channels} channels but the last unit gives {ch}")
    return traces


# ----------------------------------------------------------------------------- from diffusers

SUPPORTED_DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
SUPPORTED_UP = ("CrossAttnUpBlock2D", "UpBlock2D")
SUPPORTED_MID = ("UNetMidBlock2DCrossAttn", None)
# diffusers config key -> the only value slimdiff's U-Net supports (SD-1.x/2.x subset)
_FIXED = {
    "class_embed_type": None, "encoder_hid_dim_type": None,
    "encoder_hid_dim": None, "num_class_embeds": None, "time_embedding_type": "positional",
    "dual_cross_attention": False, "num_attention_heads": None, "class_embeddings_concat": False,
}

# settings diffusers passes only to block types slimdiff does not build (Simple*/K*/ResnetDownsample
# blocks, UNetMidBlock2DSimpleCrossAttn) or to embeddings it refuses: the SD-1.x/2.x blocks never
# read them, so a non-default value would be silently dropped on import; it is refused instead.
# key -> the accepted (default) values
_UNUSED = {
    "resnet_out_scale_factor": (1.0,), "resnet_skip_time_act": (False,), "cross_attention_norm": (None,),
    "mid_block_only_cross_attention": (None, False),
}
# the added conditioning slimdiff builds: None (SD-1.x/2.x) or SDXL's "text_time" (the pooled text
# embedding and the six size/crop time ids, each embedded with `addition_time_embed_dim` sinusoids,
# concatenated -> `projection_class_embeddings_input_dim` -> `add_embedding`; SDXL paper section 2.2)
ADDITION_EMBED_TYPES = (None, "text_time")
_TEXT_TIME_KEYS = ("addition_time_embed_dim", "projection_class_embeddings_input_dim")


def check_supported_config(cfg: dict) -> None:
    """Raise `UNetEditError` (one line, naming the key and value) for a diffusers UNet config
    setting that slimdiff's import would not reproduce."""
    for key, want in _FIXED.items():
        if cfg.get(key, want) != want:
            raise UNetEditError(f"unsupported UNet config: {key}={cfg[key]!r} (slimdiff supports {want!r})")
    added = cfg.get("addition_embed_type")
    if added not in ADDITION_EMBED_TYPES:
        raise UNetEditError(f"unsupported UNet config: addition_embed_type={added!r} "
                            f"(slimdiff supports {' or '.join(map(repr, ADDITION_EMBED_TYPES))})")
    for key in _TEXT_TIME_KEYS:
        if added == "text_time" and not isinstance(cfg.get(key), int):
            raise UNetEditError(f"UNet config: addition_embed_type='text_time' needs an integer {key}, "
                                f"got {cfg.get(key)!r}")
        if added is None and cfg.get(key) is not None:
            raise UNetEditError(f"unsupported UNet config: {key}={cfg[key]!r}; U-Nets without "
                                "addition_embed_type='text_time' do not use it")
    if cfg.get("attention_type", "default") != "default":
        raise UNetEditError(f"unsupported UNet config: attention_type={cfg['attention_type']!r}")
    for key, accepted in _UNUSED.items():
        if key in cfg and cfg[key] not in accepted:
            raise UNetEditError(f"unsupported UNet config: {key}={cfg[key]!r}; the SD-1.x/2.x block types "
                                f"slimdiff builds do not use it (accepted: {' or '.join(map(repr, accepted))})")


def _per_block(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def base_from_diffusers_config(cfg: dict) -> dict:
    """Top-level settings of the slim model from a diffusers UNet2DConditionModel config."""
    boc = list(cfg["block_out_channels"])
    return dict(
        sample_size=cfg.get("sample_size"),
        in_channels=cfg.get("in_channels", 4),
        out_channels=cfg.get("out_channels", 4),
        model_channels=boc[0],
        time_embed_dim=cfg.get("time_embedding_dim") or 4 * boc[0],
        flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
        freq_shift=cfg.get("freq_shift", 0),
        act_fn=cfg.get("act_fn", "silu"),
        norm_num_groups=cfg.get("norm_num_groups", 32),
        norm_eps=cfg.get("norm_eps", 1e-5),
        conv_in_kernel=cfg.get("conv_in_kernel", 3),
        conv_out_kernel=cfg.get("conv_out_kernel", 3),
        time_cond_proj_dim=cfg.get("time_cond_proj_dim"),
        timestep_post_act=cfg.get("timestep_post_act"),
        time_embedding_act_fn=cfg.get("time_embedding_act_fn"),
        center_input_sample=cfg.get("center_input_sample", False),
        cross_attention_dim=single_width(cfg.get("cross_attention_dim", 1280)),
        addition_embed_type=cfg.get("addition_embed_type"),
        addition_time_embed_dim=cfg.get("addition_time_embed_dim"),
        projection_class_embeddings_input_dim=cfg.get("projection_class_embeddings_input_dim"),
    )


def single_width(value: Any) -> int | None:
    """A diffusers `cross_attention_dim` (one int, or one per block) -> the one width, or None
    when the blocks read different widths."""
    widths = set(value) if isinstance(value, (list, tuple)) else {value}
    return int(widths.pop()) if len(widths) == 1 and isinstance(next(iter(widths)), int) else None


def blocks_from_diffusers_config(cfg: dict) -> dict:
    """The structure description that diffusers builds for `cfg`, unit by unit.

    Mirrors `UNet2DConditionModel.__init__`, `get_down_block`, `get_mid_block` and
    `get_up_block` (diffusers 0.42) for the SD-1.x/2.x block types, passing exactly the
    kwargs they pass, so import is lossless. Skips follow diffusers' stack pairing.
    A numbered-step orchestration (1. down blocks, 2. mid block, 3. up blocks).
    """
    check_supported_config(cfg)
    down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    for t in down_types:
        if t not in SUPPORTED_DOWN:
            raise UNetEditError(f"unsupported down block type {t!r}; supported: {SUPPORTED_DOWN}")
    for t in up_types:
        if t not in SUPPORTED_UP:
            raise UNetEditError(f"unsupported up block type {t!r}; supported: {SUPPORTED_UP}")
    mid_type = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type not in SUPPORTED_MID:
        raise UNetEditError(f"unsupported mid_block_type {mid_type!r}; supported: {SUPPORTED_MID}")
    if cfg.get("norm_num_groups", 32) is None:
        raise UNetEditError("unsupported UNet config: norm_num_groups=None")

    n = len(down_types)
    boc = list(cfg["block_out_channels"])
    heads = _per_block(cfg.get("attention_head_dim", 8), n)  # diffusers' naming quirk: = heads
    cross = _per_block(cfg.get("cross_attention_dim", 1280), n)
    lpb = _per_block(cfg.get("layers_per_block", 2), n)
    tlpb = _per_block(cfg.get("transformer_layers_per_block", 1), n)
    only_cross = _per_block(cfg.get("only_cross_attention", False), n)
    rev_tlpb = cfg.get("reverse_transformer_layers_per_block") or list(reversed(tlpb))
    groups, eps, act = cfg.get("norm_num_groups", 32), cfg.get("norm_eps", 1e-5), cfg.get("act_fn", "silu")
    temb = cfg.get("time_embedding_dim") or 4 * boc[0]
    res_common = dict(temb_channels=temb, eps=eps, groups=groups, dropout=cfg.get("dropout", 0.0),
                      time_embedding_norm=cfg.get("resnet_time_scale_shift", "default"),
                      non_linearity=act, output_scale_factor=1.0, pre_norm=True)
    attn_common = dict(norm_num_groups=groups, use_linear_projection=cfg.get("use_linear_projection", False),
                       upcast_attention=cfg.get("upcast_attention", False), attention_type="default")

    def resnet(c_in: int, c_out: int, **extra) -> dict:
        return {"type": "resnet", "kwargs": dict(in_channels=c_in, out_channels=c_out, **res_common, **extra)}

    def attn(c: int, h: int, cross_dim: int, num_layers: int, **extra) -> dict:
        kw = dict(num_attention_heads=h, attention_head_dim=c // h, in_channels=c, num_layers=num_layers,
                  cross_attention_dim=cross_dim, **attn_common, **extra)
        return {"type": "attn", "kwargs": kw}

    def n_tl(value: Any, j: int) -> int:
        return value[j] if isinstance(value, (list, tuple)) else value

    # 1. down blocks: layer j = resnet (+ attn); downsampler on all but the last block
    blocks: dict = {"down": [], "mid": None, "up": []}
    stack = ["conv_in"]
    c_prev = boc[0]
    for i, t in enumerate(down_types):
        c_out, layers = boc[i], []
        for j in range(lpb[i]):
            layer = [resnet(c_prev if j == 0 else c_out, c_out)]
            if t == "CrossAttnDownBlock2D":
                layer.append(attn(c_out, heads[i], cross[i], n_tl(tlpb[i], j), only_cross_attention=only_cross[i]))
            layers.append(layer)
            stack.append(f"down.{i}.layer.{j}")
        down = None
        if i < n - 1:
            down = {"type": "downsample", "kwargs": dict(channels=c_out, use_conv=True, out_channels=c_out,
                                                          padding=cfg.get("downsample_padding", 1), name="op")}
            stack.append(f"down.{i}.downsample")
        blocks["down"].append({"layers": layers, "downsample": down})
        c_prev = c_out

    # 2. mid block: resnet, attn, resnet (UNetMidBlock2DCrossAttn with num_layers=1)
    if mid_type is not None:
        c, scale = boc[-1], cfg.get("mid_block_scale_factor", 1)
        r_kw = dict(res_common, output_scale_factor=scale)
        first = {"type": "resnet", "kwargs": dict(in_channels=c, out_channels=c, **{**r_kw, "groups_out": groups})}
        second = {"type": "resnet", "kwargs": dict(in_channels=c, out_channels=c, **r_kw)}
        blocks["mid"] = [first, attn(c, heads[-1], cross[-1], n_tl(tlpb[-1], 0)), second]

    # 3. up blocks: layers_per_block + 1 layers; each resnet pops one skip off the stack
    rb, rh, rc, rl, ro = (list(reversed(x)) for x in (boc, heads, cross, lpb, only_cross))
    c_out = rb[0]
    for i, t in enumerate(up_types):
        c_prev, c_out, c_in = c_out, rb[i], rb[min(i + 1, n - 1)]
        num_layers, layers = rl[i] + 1, []
        for j in range(num_layers):
            skip_ch = c_in if j == num_layers - 1 else c_out
            if not stack:
                raise UNetEditError(f"up.{i}.layer.{j}.resnet has no skip left to consume")
            layer = [resnet((c_prev if j == 0 else c_out) + skip_ch, c_out)]
            layer[0]["skip"] = stack.pop()
            if t == "CrossAttnUpBlock2D":
                layer.append(attn(c_out, rh[i], rc[i], n_tl(rev_tlpb[i], j), only_cross_attention=ro[i]))
            layers.append(layer)
        up = None
        if i < n - 1:
            up = {"type": "upsample", "kwargs": dict(channels=c_out, use_conv=True, out_channels=c_out)}
        blocks["up"].append({"layers": layers, "upsample": up})
    return blocks


def canonical(blocks: dict) -> dict:
    """A normalised deep copy (tuples -> lists, empty mid -> None) for comparisons."""
    out = copy.deepcopy(blocks)
    if not out.get("mid"):
        out["mid"] = None

    def norm(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items() if not (k in ("downsample", "upsample", "skip") and v is None)}
        if isinstance(x, (list, tuple)):
            return [norm(v) for v in x]
        return x

    return norm(out)
