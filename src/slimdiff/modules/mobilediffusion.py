"""MobileDiffusion's "bag of tricks" on an SD-class U-Net (seed 001; METHODS.md section 6).

    from slimdiff.modules.mobilediffusion import MDTricks, apply_md_tricks
    student = apply_md_tricks(teacher, MDTricks(separable_levels=(2, 3), ff_mult=3.0))   # tricks on a teacher
    student, info = slimdiff.unet.apply_preset(teacher, "md")                            # the whole design

Tricks (each off by default; `MDTricks`), applied as unit replacements (`slimdiff.unet.replace_units`),
so every tensor whose name and shape match is inherited and recorded in `inheritance`:
- `separable_levels`: the ResNets at these levels get separable convs (`md_resnet`). Their convs
  start from the teacher's: each input channel's 3x3 kernels W[:, i] (C_out x 9) are replaced by
  their best rank-1 approximation s u v^T (SVD), depthwise[i] = sqrt(s) v, pointwise[:, i] = sqrt(s) u
  (an interpretation: the seed gives no initialisation); inheritance records them as new (None).
- `cross_only_levels`: the transformers at these levels lose self-attention (decoupled, `md_attn`).
- `shared_kv`: cross-attention K and V from one projection, initialised as the teacher's `to_k`.
- `relu`: ReLU attention (`md_units.md_attention`); fine-tune recipe below.
- `ff_mult` / `ff_inner_dim`: the feed-forward's inner width (SD 4 x C; MobileDiffusion trims it,
  "10% fewer parameters": 3 x C here). The kept hidden units are the teacher's largest, by
  ||value row|| x ||out column||, in their order (an interpretation; recorded as new).
- `swish`: SwiGLU instead of GEGLU in the feed-forward (same tensors, inherited).

Fine-tune recipe from softmax to ReLU attention (MobileDiffusion: "finetune softmax into relu"): swap
with every tensor inherited (`relu=True`: no new tensor), then distil from the softmax model
(slimdiff.distill; output + feature KD with the demo's budget in bench/bench_md_quality.py's "bk-small +
ReLU attention" row; output KD alone closes the swap's output gap in tests/distill/test_md_relu_fine_tune.py).
A gradual schedule is possible but not automated: `relu_mix < 1` starts from a blend (1 - m) softmax +
m relu (m = 0 is exactly softmax), and `md_units.set_relu_mix` raises m between successive distillations.

Presets `md` and `md-lite` (registered in `slimdiff.unet.PRESETS` at import): `build_md` below.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from slimdiff.unet import Preset, UNetEditError, rebuild, register_preset, replace_units, slim_view
from slimdiff.unet.presets import check_sd_topology
from slimdiff.unet.structure import iter_units, name_to_path

from .md_units import ATTN_TYPE, RESNET_TYPE, check_md_options

SD_FF_MULT = 4  # SD's feed-forward inner width: 4 x C (GEGLU)
MD_FF_MULT = 3.0  # MobileDiffusion's trimmed width (METHODS.md section 6: 3x instead of 4x)


@dataclasses.dataclass
class MDTricks:
    separable_levels: tuple[int, ...] = ()  # U-Net levels whose ResNets get separable convs (0: latent size)
    cross_only_levels: tuple[int, ...] = ()  # levels whose transformers drop self-attention (decoupled)
    shared_kv: bool = False  # cross-attention K = V from one projection
    relu: bool = False  # ReLU attention (Wortsman et al. 2023) in self- and cross-attention
    relu_mix: float = 1.0  # (1 - m) softmax + m relu; 1: pure ReLU (the fine-tune raises m to 1)
    ff_mult: float | None = None  # feed-forward inner width = round(ff_mult * C); None: keep
    ff_inner_dim: int | None = None  # or an explicit inner width (one of the two)
    swish: bool = False  # SwiGLU instead of GEGLU
    units: tuple[str, ...] | None = None  # only these units (None: every unit of the levels / every transformer)

    def __post_init__(self):
        self.separable_levels, self.cross_only_levels = tuple(self.separable_levels), tuple(self.cross_only_levels)
        self.units = tuple(self.units) if self.units is not None else None
        if self.ff_mult is not None and self.ff_inner_dim is not None:
            raise ValueError("MDTricks: give ff_mult or ff_inner_dim, not both")
        if self.ff_mult is not None and not self.ff_mult > 0:
            raise ValueError(f"MDTricks: ff_mult must be > 0, got {self.ff_mult!r}")
        if not 0.0 <= self.relu_mix <= 1.0:
            raise ValueError(f"MDTricks: relu_mix must be in [0, 1], got {self.relu_mix!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def attn_options(name: str, kwargs: dict, level: int, tricks: MDTricks) -> dict:
    """The `md_*` kwargs `tricks` give the plain transformer `name` (empty: nothing changes).
    Raises ValueError naming the unit for a replacement it cannot take."""
    c = kwargs["num_attention_heads"] * kwargs["attention_head_dim"]  # inner width I
    opts: dict = {}
    if level in tricks.cross_only_levels:
        opts["md_attention"] = "cross"
    if tricks.shared_kv:
        opts["md_shared_kv"] = True
    if tricks.relu:
        opts |= {"md_attn_fn": "relu", "md_relu_mix": float(tricks.relu_mix)}
    inner = tricks.ff_inner_dim if tricks.ff_inner_dim is not None else (
        int(round(tricks.ff_mult * c)) if tricks.ff_mult is not None else None)
    if inner is not None and inner != SD_FF_MULT * c:
        opts["md_ff_inner_dim"] = inner
    if tricks.swish:
        opts["activation_fn"] = "swiglu"
    full = {"md_attention": "both", "md_shared_kv": False, "md_attn_fn": "softmax", "md_relu_mix": 1.0,
            "md_ff_inner_dim": None, **opts}
    check_md_options(full["md_attention"], full["md_shared_kv"], full["md_attn_fn"], full["md_relu_mix"],
                     full["md_ff_inner_dim"], opts.get("activation_fn", kwargs.get("activation_fn", "geglu")),
                     kwargs.get("cross_attention_dim"), where=name)
    return opts


def md_replacements(model: nn.Module, tricks: MDTricks) -> dict[str, tuple[str, dict]]:
    """{unit name: (new type, kwargs)} for the plain units `tricks` change (structure only, nothing built)."""
    base = slim_view(model)
    infos = {u.name: u for u in base.units()}
    if tricks.units is not None:
        unknown = [n for n in tricks.units if n not in infos]
        if unknown:
            raise UNetEditError(f"MDTricks.units {unknown} are not units; valid: {list(infos)}")
    out = {}
    for name, _, unit in iter_units(base.config.blocks):
        if tricks.units is not None and name not in tricks.units:
            continue
        level, kw = infos[name].level, unit["kwargs"]
        if tricks.units is not None and unit["type"] not in ("resnet", "attn"):
            raise UNetEditError(f"{name}: a {unit['type']!r} unit cannot take MobileDiffusion's replacements "
                                "(plain 'resnet' and 'attn' units can)")
        if unit["type"] == "resnet" and level in tricks.separable_levels:
            c_in, c_out = kw["in_channels"], kw.get("out_channels") or kw["in_channels"]
            if c_in != c_out and kw.get("use_in_shortcut") is False:
                raise UNetEditError(f"{name}: a separable ResNet changing channels {c_in}->{c_out} needs its "
                                    "shortcut (use_in_shortcut=False)")
            out[name] = (RESNET_TYPE, dict(kw))
        elif unit["type"] == "attn":
            try:
                opts = attn_options(name, kw, level, tricks)
            except ValueError as e:
                raise UNetEditError(str(e)) from None
            if opts:
                out[name] = (ATTN_TYPE, {**kw, **opts})
    return out


def apply_md_tricks(model: nn.Module, tricks: MDTricks) -> nn.Module:
    """A slim copy of `model` with `tricks` applied (module docstring); a model no trick changes is
    returned as an equivalent copy of the plain model (still exportable to diffusers)."""
    base = slim_view(model)
    replacements = md_replacements(base, tricks)
    student = replace_units(base, replacements)
    init_from_teacher(student, base, list(replacements))
    return student


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, units: list[str]) -> None:
    """Start the replaced units' new tensors from the same-position teacher tensors (module docstring):
    rank-1 factors of 3x3 convs, the largest feed-forward hidden units. In place."""
    old = teacher.state_dict()
    for name in units:
        path = name_to_path(name)
        module = student.get_submodule(path)
        if isinstance(getattr(module, "conv1", None), nn.Module) and hasattr(module.conv1, "depthwise"):
            for conv in ("conv1", "conv2"):
                w = old.get(f"{path}.{conv}.weight")
                if w is not None and w.shape[-2:] == (3, 3):
                    factor_conv(getattr(module, conv), w, old[f"{path}.{conv}.bias"])
        for k, block in enumerate(getattr(module, "transformer_blocks", [])):
            ff = f"{path}.transformer_blocks.{k}.ff"
            if f"{ff}.net.0.proj.weight" in old and block.ff.net[2].in_features != old[f"{ff}.net.2.weight"].shape[1]:
                trim_ff(block.ff, old[f"{ff}.net.0.proj.weight"], old[f"{ff}.net.0.proj.bias"],
                        old[f"{ff}.net.2.weight"], old[f"{ff}.net.2.bias"])


def factor_conv(sep: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """W (O, I, 3, 3) -> per input channel i the best rank-1 W[:, i] ~ s u v^T: depthwise (I, 1, 3, 3) =
    sqrt(s) v, pointwise (O, I, 1, 1) = sqrt(s) u, bias = the conv's bias."""
    o, i = weight.shape[:2]
    m = weight.float().permute(1, 0, 2, 3).reshape(i, o, 9)  # (I, O, 9)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)  # (I, O, r), (I, r), (I, r, 9)
    root = s[:, 0].sqrt()  # (I,)
    sep.depthwise.weight.copy_((root[:, None] * vh[:, 0, :]).view(i, 1, 3, 3))
    sep.pointwise.weight.copy_((root[:, None] * u[:, :, 0]).T.reshape(o, i, 1, 1))
    sep.pointwise.bias.copy_(bias)


def trim_ff(ff: nn.Module, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor) -> None:
    """Gated FF (C -> 2F value|gate -> F -> C) trimmed to F' hidden units: keep the F' largest
    ||value_j|| * ||out_j|| (and their gates), in order."""
    f, f_new = w_out.shape[1], ff.net[2].in_features
    if f_new > f:
        return  # a wider FF than the teacher's keeps its fresh initialisation
    importance = w_in[:f].norm(dim=1) * w_out.norm(dim=0)  # (F,)
    keep = importance.topk(f_new).indices.sort().values
    rows = torch.cat([keep, keep + f])  # value rows, then their gate rows
    ff.net[0].proj.weight.copy_(w_in[rows])
    ff.net[0].proj.bias.copy_(b_in[rows])
    ff.net[2].weight.copy_(w_out[:, keep])
    ff.net[2].bias.copy_(b_out)


# ----------------------------------------------------------------------------- replacement options (searches)

# option name -> the trick that makes one plain unit cheaper (the searches' "replace" actions)
REPLACEMENTS: dict[str, MDTricks] = {
    "separable": MDTricks(separable_levels=tuple(range(16))),  # ResNets: separable convs
    "cross_only": MDTricks(cross_only_levels=tuple(range(16))),  # transformers: self-attention dropped
    "trim": MDTricks(shared_kv=True, ff_mult=MD_FF_MULT),  # transformers: shared K/V, FF 3x
}


def replacement_options(model: nn.Module, units: list[str] | None = None,
                        options: tuple[str, ...] = tuple(REPLACEMENTS)) -> dict[str, dict[str, tuple[str, dict]]]:
    """{unit: {option: (type, kwargs)}}: the cheaper types each plain unit (of `units`) can become."""
    bad = [o for o in options if o not in REPLACEMENTS]
    if bad:
        raise ValueError(f"unknown replacement options {bad}; valid: {list(REPLACEMENTS)}")
    out: dict[str, dict] = {}
    base = slim_view(model)
    for option in options:
        for name, repl in md_replacements(base, REPLACEMENTS[option]).items():
            if units is None or name in units:
                out.setdefault(name, {})[option] = repl
    return out


def apply_replacements(model: nn.Module, chosen: dict[str, tuple[str, dict]]) -> nn.Module:
    """`replace_units` plus the teacher-derived initialisation of the new tensors."""
    base = slim_view(model)
    student = replace_units(base, chosen)
    init_from_teacher(student, base, list(chosen))
    return student


# ----------------------------------------------------------------------------- presets


@dataclasses.dataclass(frozen=True)
class MDDesign:
    """A MobileDiffusion U-Net on 3 levels (channels c0, c1 = the teacher's first two, cb the bottleneck)."""

    width_ratio: float  # cb = the teacher's third width x this, rounded to its norm groups (SD: 1280 x 0.8 = 1024)
    bottleneck_attn: tuple[int, int, int, int]  # full transformers in down.2, mid, up.0 layer 0, up.0 layer 1
    tricks: MDTricks  # applied to the whole design after it is built


MD_TRICKS = MDTricks(separable_levels=(2,), cross_only_levels=(1,), shared_kv=True, ff_mult=MD_FF_MULT, swish=True)
MD_DESIGNS = {
    "md": MDDesign(0.8, (3, 6, 3, 3), MD_TRICKS),  # (320, 640, 1024): 11 ResNets, 15 SA + 18 CA
    "md-lite": MDDesign(0.7, (3, 3, 3, 3), MD_TRICKS),  # (320, 640, 896): 11 ResNets, 12 SA + 15 CA
}


# feature KD pairs (student block -> teacher block): the four blocks at the teacher's widths (64x64 and
# 32x32, down and up); the bottleneck (down.2, mid, up.0: 0.8 / 0.7 x the teacher's width) is taught
# by the output KD only, as no teacher feature has its width (an interpretation: MobileDiffusion trains
# from scratch and names no feature loss)
MD_BLOCK_MAP = (("down.0", "down.0"), ("down.1", "down.1"), ("up.1", "up.2"), ("up.2", "up.3"))


def md_blocks(teacher, design: MDDesign) -> dict:
    """The tagged structure (each unit's `_from`: the teacher unit it descends from) of `design`.
    A numbered-step orchestration (1. widths, 2. down path, 3. mid, 4. up path)."""
    # 1. widths and the teacher's unit descriptions
    t = {n: u for n, _, u in iter_units(teacher.config.blocks)}
    c0 = t["down.0.layer.0.resnet"]["kwargs"]["out_channels"]
    c1 = t["down.1.layer.0.resnet"]["kwargs"]["out_channels"]
    groups = t["down.0.layer.0.resnet"]["kwargs"]["groups"]
    cb = max(groups, int(round(t["down.2.layer.0.resnet"]["kwargs"]["out_channels"] * design.width_ratio / groups))
             * groups)
    heads = t["mid.attn"]["kwargs"]["num_attention_heads"]
    if cb % heads:
        raise UNetEditError(f"MobileDiffusion bottleneck width {cb} is not divisible by the teacher's {heads} heads")

    def res(src: str, c_in: int, c_out: int, skip: str | None = None) -> dict:
        kw = {**t[src]["kwargs"], "in_channels": c_in, "out_channels": c_out}
        kw.pop("groups_out", None)
        unit = {"type": "resnet", "kwargs": kw, "_from": src}
        return unit | ({"skip": skip} if skip else {})

    def att(src: str, c: int) -> dict:
        kw = {**t[src]["kwargs"], "in_channels": c, "num_attention_heads": heads, "attention_head_dim": c // heads}
        return {"type": "attn", "kwargs": kw, "_from": src}

    def sampler(src: str, c: int) -> dict:
        return {**copy.deepcopy(t[src]), "kwargs": {**t[src]["kwargs"], "channels": c, "out_channels": c}, "_from": src}

    n_down, n_mid, n_up0, n_up1 = design.bottleneck_attn
    # 2. down path: 64x64 conv only; 32x32 conv + transformer; 16x16 conv + n_down transformers
    down = [
        {"layers": [[res("down.0.layer.0.resnet", c0, c0)]], "downsample": sampler("down.0.downsample", c0)},
        {"layers": [[res("down.1.layer.0.resnet", c0, c1), att("down.1.layer.0.attn", c1)]],
         "downsample": sampler("down.1.downsample", c1)},
        {"layers": [[res("down.2.layer.0.resnet", c1, cb)] + [att("down.2.layer.0.attn", cb) for _ in range(n_down)]],
         "downsample": None},
    ]
    # 3. mid: resnet, n_mid transformers, resnet
    mid = [res("mid.resnet.0", cb, cb)] + [att("mid.attn", cb) for _ in range(n_mid)] + [res("mid.resnet.1", cb, cb)]
    # 4. up path: each level 2 layers, each resnet consuming one skip (BK-SDM-Tiny's pairing)
    up = [
        {"layers": [[res("up.1.layer.0.resnet", 2 * cb, cb, "down.2.layer.0")] + [att("up.1.layer.0.attn", cb) for _ in range(n_up0)],
                    [res("up.1.layer.2.resnet", cb + c1, cb, "down.1.downsample")]
                    + [att("up.1.layer.2.attn", cb) for _ in range(n_up1)]],
         "upsample": sampler("up.1.upsample", cb)},
        {"layers": [[res("up.2.layer.0.resnet", cb + c1, c1, "down.1.layer.0"), att("up.2.layer.0.attn", c1)],
                    [res("up.2.layer.2.resnet", c1 + c0, c1, "down.0.downsample"), att("up.2.layer.2.attn", c1)]],
         "upsample": sampler("up.2.upsample", c1)},
        {"layers": [[res("up.3.layer.0.resnet", c1 + c0, c0, "down.0.layer.0")],
                    [res("up.3.layer.2.resnet", 2 * c0, c0, "conv_in")]], "upsample": None},
    ]
    return {"down": down, "mid": mid, "up": up}


def build_md(teacher: nn.Module, name: str = "md") -> nn.Module:
    """The MobileDiffusion student `name` of an SD-1.x/2.x teacher: its structure (`md_blocks`) with every
    tensor whose name and shape match the teacher's inherited, then `design.tricks`."""
    check_sd_topology(teacher)
    base = slim_view(teacher)
    design = MD_DESIGNS[name]
    student = rebuild(base, md_blocks(base, design))
    return apply_md_tricks(student, design.tricks)


for _name, _design in MD_DESIGNS.items():
    register_preset(Preset(
        name=_name,
        description=f"MobileDiffusion{'-Lite' if 'lite' in _name else ''} (seed 001 Table 1): 3 levels, bottleneck "
                    f"{_design.width_ratio:g} x the teacher's third width, 11 ResNets, transformers at 16x16 "
                    f"{_design.bottleneck_attn}, cross-only at 32x32, none at 64x64; separable convs at 16x16, "
                    "shared K/V, FF 3x, swish",
        remove=(), build=lambda teacher, _n=_name: build_md(teacher, _n), block_map=MD_BLOCK_MAP,
        reference="Zhao et al. 2023, MobileDiffusion, Table 1 (seed 001)"))
