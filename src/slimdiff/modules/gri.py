"""GRI attention: global-regional interactive self-attention (A-SDM section 1; METHODS.md section 4).

    from slimdiff.modules import GRISettings, apply_gri
    student = apply_gri(student, GRISettings(window=8, reduction=4, levels=(0,)))

Each query of an H x W map attends, in ONE softmax, to two sets of keys/values:
- regional: the s x s window it lies in (non-overlapping windows, as Swin partitions a map);
- global: the whole map average-pooled r x r, (H/r)(W/r) tokens.

    Attn(q_i) = softmax(q_i [K_win(i); K_pool]^T / sqrt(d)) [V_win(i); V_pool]

Cost of the two attention matmuls: O(N (s^2 + N/r^2)) instead of O(N^2), N = H*W. The unit
reuses the teacher's q/k/v/out projections unchanged (pooling commutes with the linear k/v
projections, so the pooled keys are the projections of the pooled map, at no extra matmul),
so it is swapped in with every tensor inherited and then fine-tuned by distillation.
`reduction=None` drops the global set; a window covering the whole map with no global set is
exactly full attention (tests). Interpretations (the seed gives no formula): non-overlapping
windows, average pooling, one shared softmax; only the self-attention (attn1) changes, the
cross-attention to the text stays as it is.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from slimdiff.unet import register_unit_type, replace_units, slim_view
from slimdiff.unet.structure import iter_units

UNIT_TYPE = "gri_attn"  # the unit type name in a U-Net's `blocks` (registered below, at import)


@dataclasses.dataclass
class GRISettings:
    window: int = 16  # s: regional window side in latent tokens (64x64 map at 512px -> 16 windows)
    reduction: int | None = 4  # r: global keys = the map average-pooled r x r; None: no global set
    levels: tuple[int, ...] = (0,)  # U-Net levels whose attention units change (0: 64x64 at 512px)
    units: tuple[str, ...] | None = None  # explicit attention unit names instead of `levels`

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"GRI window must be an integer >= 1, got {self.window!r}")
        if self.reduction is not None and (not isinstance(self.reduction, int) or self.reduction < 1):
            raise ValueError(f"GRI reduction must be None or an integer >= 1, got {self.reduction!r}")
        self.levels = tuple(self.levels)
        self.units = tuple(self.units) if self.units is not None else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_map(height: int, width: int, window: int, reduction: int | None, where: str = "GRI attention") -> None:
    """Raise ValueError unless the window (and the pooling) tile the H x W map exactly."""
    for what, size in (("window", window), ("reduction", reduction)):
        if size is not None and (height % size or width % size):
            raise ValueError(f"{where}: {what} {size} does not divide the {height}x{width} map; "
                             f"use a divisor of {height} and {width}")


def gri_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, size: tuple[int, int],
                  window: int, reduction: int | None) -> torch.Tensor:
    """q, k, v: (B, N, I) projected tokens of an H x W map (row-major) -> (B, N, I)."""
    b, n, inner = q.shape
    h, w = size
    d, s = inner // heads, window
    nh, nw = h // s, w // s

    def grid(t):  # (B, N, I) -> (B, heads, H, W, d)
        return t.view(b, h, w, heads, d).permute(0, 3, 1, 2, 4)

    def windows(t):  # (B, heads, H, W, d) -> (B, heads, nh*nw, s*s, d)
        t = t.view(b, heads, nh, s, nw, s, d).permute(0, 1, 2, 4, 3, 5, 6)
        return t.reshape(b, heads, nh * nw, s * s, d)

    qg, kg, vg = grid(q), grid(k), grid(v)
    qw, kw, vw = windows(qg), windows(kg), windows(vg)
    if reduction is not None:
        def pooled(t):  # (B, heads, H, W, d) -> (B, heads, nh*nw, (H/r)(W/r), d), shared by every window
            t = F.avg_pool2d(t.permute(0, 1, 4, 2, 3).reshape(b * heads, d, h, w), reduction)
            return t.view(b, heads, d, -1).transpose(-1, -2).unsqueeze(2).expand(-1, -1, nh * nw, -1, -1)

        kw, vw = torch.cat([kw, pooled(kg)], dim=3), torch.cat([vw, pooled(vg)], dim=3)
    # one softmax over [window keys; pooled keys]: (B, heads*windows, s*s, d)
    out = F.scaled_dot_product_attention(qw.flatten(1, 2), kw.flatten(1, 2), vw.flatten(1, 2))
    out = out.view(b, heads, nh, nw, s, s, d).permute(0, 2, 4, 3, 5, 1, 6)  # (B, nh, s, nw, s, heads, d)
    return out.reshape(b, n, inner)


class GRIAttnProcessor:
    """A diffusers attention processor computing GRI self-attention with the layer's own
    to_q/to_k/to_v/to_out. Its unit sets `size` (H, W) before each forward."""

    def __init__(self, window: int, reduction: int | None):
        self.window, self.reduction = window, reduction
        self.size: tuple[int, int] | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("GRI attention is self-attention without a mask (encoder_hidden_states and "
                             "attention_mask must be None)")
        if self.size is None or self.size[0] * self.size[1] != hidden_states.shape[1]:
            raise ValueError(f"GRI attention got {hidden_states.shape[1]} tokens but its map size is {self.size}; "
                             "it runs inside a GRITransformer2DModel, which sets the size")
        x = hidden_states  # (B, N, C)
        out = gri_attention(attn.to_q(x), attn.to_k(x), attn.to_v(x), attn.heads, self.size,
                            self.window, self.reduction)
        out = attn.to_out[1](attn.to_out[0](out.to(x.dtype)))
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor


class GRITransformer2DModel(Transformer2DModel):
    """diffusers' `Transformer2DModel` whose self-attentions are GRI attention.

    Unit type `gri_attn` (role attn): kwargs = Transformer2DModel's plus `gri_window` and
    `gri_reduction`. Same parameters (and tensor names) as the plain unit.
    """

    def __init__(self, *, gri_window: int = 16, gri_reduction: int | None = 4, **kwargs):
        super().__init__(**kwargs)
        GRISettings(window=gri_window, reduction=gri_reduction)  # validates
        self.gri_window, self.gri_reduction = gri_window, gri_reduction
        for block in self.transformer_blocks:
            if block.only_cross_attention or block.attn1.group_norm is not None or block.attn1.spatial_norm is not None:
                raise ValueError("GRI attention replaces a plain self-attention; this transformer's attn1 is a "
                                 "cross-attention or has its own norm")
            block.attn1.set_processor(GRIAttnProcessor(gri_window, gri_reduction))

    @property
    def signature_label(self) -> str:
        """Module label in latency-table keys (slimdiff.profile.signature): window and reduction."""
        return f"{type(self).__name__}(w{self.gri_window},r{self.gri_reduction})"

    def self_attention_keys(self, height: int, width: int) -> int:
        """Keys each query attends to in self-attention: s^2 + (H/r)(W/r) (analytic FLOPs)."""
        pooled = (height // self.gri_reduction) * (width // self.gri_reduction) if self.gri_reduction else 0
        return self.gri_window ** 2 + pooled

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        height, width = hidden_states.shape[-2:]
        check_map(height, width, self.gri_window, self.gri_reduction)
        for block in self.transformer_blocks:
            proc = block.attn1.processor
            if not isinstance(proc, GRIAttnProcessor):
                raise ValueError(f"a GRI unit's self-attention processor was replaced by {type(proc).__name__} "
                                 "(set_attn_processor on the whole U-Net?); GRI units need GRIAttnProcessor")
            proc.size = (height, width)
        return super().forward(hidden_states, *args, **kwargs)


register_unit_type(UNIT_TYPE, GRITransformer2DModel, "attn")  # GRI self-attention (A-SDM 1)


def gri_units(model: nn.Module, settings: GRISettings) -> list[str]:
    """The attention units `settings` selects in a slim U-Net (explicit names or levels)."""
    attn = [u for u in model.units() if u.type == "attn"]
    if settings.units is not None:
        valid = [u.name for u in attn]
        unknown = [n for n in settings.units if n not in valid]
        if unknown:
            raise ValueError(f"GRI units {unknown} are not plain attention units; valid: {valid}")
        return list(settings.units)
    names = [u.name for u in attn if u.level in settings.levels]
    if not names:
        raise ValueError(f"no plain attention unit at levels {list(settings.levels)}; levels with attention: "
                         f"{sorted({u.level for u in attn})}")
    return names


def apply_gri(model: nn.Module, settings: GRISettings | None = None) -> nn.Module:
    """A copy of `model` (slim or diffusers U-Net) with GRI attention in the selected units,
    every tensor inherited. Checks the window and reduction against each unit's map at the
    model's `sample_size`."""
    settings = settings or GRISettings()
    base = slim_view(model)
    names = gri_units(base, settings)
    infos = {u.name: u for u in base.units()}
    kwargs = {n: u["kwargs"] for n, _, u in iter_units(base.config.blocks) if n in names}
    size = base.config.sample_size
    for n in names:
        if size:
            side = size >> infos[n].level
            check_map(side, side, settings.window, settings.reduction, where=f"GRI in {n} (level {infos[n].level} "
                      f"of sample_size {size})")
    extra = dict(gri_window=settings.window, gri_reduction=settings.reduction)
    return replace_units(base, {n: (UNIT_TYPE, {**kwargs[n], **extra}) for n in names})
