"""MobileDiffusion's block types as units of the editable U-Net (seed 001; METHODS.md section 6).

    from slimdiff.modules.mobilediffusion import MDTricks, apply_md_tricks
    student = apply_md_tricks(teacher, MDTricks(separable_levels=(2,), shared_kv=True, ff_mult=3.0))

Two unit types, registered at import:
- `md_resnet` (role resnet), `SeparableResnetBlock2D`: diffusers' `ResnetBlock2D` whose two 3x3
  convs are separable, a depthwise 3x3 (groups = C_in, no bias) then a pointwise 1x1 C_in -> C_out
  (MobileNet's factorisation): parameters 9 C_in + C_in C_out instead of 9 C_in C_out.
- `md_attn` (role attn), `MDTransformer2DModel`: diffusers' `Transformer2DModel` with, per
  BasicTransformerBlock, MobileDiffusion's attention and feed-forward options (kwargs `md_*`):
  * `md_attention`: "both" (SD), "self" (cross-attention dropped) or "cross" (self-attention
    dropped: MobileDiffusion's decoupled high-resolution transformer);
  * `md_shared_kv`: the cross-attention's keys and values come from ONE projection (`to_k`;
    `to_v` is gone): K = V = c W_k, c the text (B, L, D);
  * `md_attn_fn`: "softmax" or "relu": ReLU attention as Wortsman et al. 2023 ("Replacing
    softmax with ReLU in Vision Transformers", section 2) define it, the one MobileDiffusion
    cites:  attn(Q, K, V) = (1/L) relu(Q K^T / sqrt(d)) V,  L = number of keys.
    `md_relu_mix` m blends the two, (1 - m) softmax + m relu, for the fine-tune from softmax
    (`set_relu_mix`; recipe in `slimdiff.modules.mobilediffusion`);
  * `md_ff_inner_dim`: the feed-forward's inner width (SD: 4 x C; MobileDiffusion trims it);
  * `activation_fn` (a Transformer2DModel kwarg): "geglu" (SD) or "swiglu" (swish in place of
    GELU in the gated feed-forward).
With every option at SD's value the unit has the plain unit's tensors and computes the same output.
Tensor names stay diffusers' (`attn1`, `attn2`, `ff.net.0.proj`, ...), so a replacement inherits
every tensor whose name and shape match (`slimdiff.unet.replace_units`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from slimdiff.unet import register_unit_type
from slimdiff.unet.structure import iter_units, name_to_path

RESNET_TYPE, ATTN_TYPE = "md_resnet", "md_attn"  # unit type names (registered below, at import)
ATTENTIONS = ("both", "self", "cross")
ATTN_FNS = ("softmax", "relu")
FF_ACTS = ("geglu", "swiglu")  # GELU-gated (SD) | swish-gated (MobileDiffusion)


class SeparableConv2d(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H, W): depthwise k x k (groups=C_in, no bias), then pointwise 1x1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, groups=in_channels,
                                   bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SeparableResnetBlock2D(ResnetBlock2D):
    """diffusers' `ResnetBlock2D` with separable 3x3 convs (conv1, conv2). Unit type `md_resnet`."""

    def __init__(self, **kwargs):
        c_in, c_out = kwargs["in_channels"], kwargs.get("out_channels") or kwargs["in_channels"]
        if c_in != c_out and kwargs.get("use_in_shortcut") is False:
            raise ValueError(f"a separable ResNet changing channels {c_in}->{c_out} needs its 1x1 shortcut "
                             "(use_in_shortcut=False given)")
        super().__init__(**kwargs)
        for name in ("conv1", "conv2"):
            conv: nn.Conv2d = getattr(self, name)
            if conv.kernel_size != (3, 3) or conv.stride != (1, 1):
                raise ValueError(f"a separable ResNet replaces 3x3 stride-1 convs; {name} is {conv.kernel_size} "
                                 f"stride {conv.stride}")
            setattr(self, name, SeparableConv2d(conv.in_channels, conv.out_channels))

    @property
    def signature_label(self) -> str:
        """Module label in latency-table keys (slimdiff.profile.signature)."""
        return f"{type(self).__name__}(dw3x3+pw)"


def md_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mix: float,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, h, N, d), k and v (B, h, L, d) -> (B, h, N, d); `mask`: additive bias broadcast to (B, h, N, L).

    mix 0: softmax(Q K^T / sqrt(d)) V; mix 1: (1/L) relu(Q K^T / sqrt(d)) V (Wortsman et al. 2023);
    otherwise (1 - mix) softmax + mix relu. A masked key (bias -10000) is 0 after the ReLU.
    """
    soft = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) if mix < 1 else 0.0
    if mix == 0:
        return soft
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, h, N, L)
    if mask is not None:
        scores = scores + mask
    relu = (F.relu(scores) / k.shape[-2]) @ v
    return relu if mix == 1 else (1 - mix) * soft + mix * relu


class MDAttnProcessor:
    """A diffusers attention processor for ReLU (or blended) attention and/or shared K/V.
    Same steps as diffusers' `AttnProcessor2_0` for SD's attention (no group/spatial norm)."""

    def __init__(self, relu_mix: float = 0.0, shared_kv: bool = False):
        self.relu_mix, self.shared_kv = float(relu_mix), shared_kv

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        x = hidden_states  # (B, N, C)
        b, n, _ = x.shape
        ctx = x if encoder_hidden_states is None else encoder_hidden_states  # (B, L, D)
        if attention_mask is not None:  # (B, 1, L) bias -> (B, heads, 1, L)
            attention_mask = attn.prepare_attention_mask(attention_mask, ctx.shape[1], b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        q, k = attn.to_q(x), attn.to_k(ctx)
        v = k if self.shared_kv else attn.to_v(ctx)  # shared: K = V = ctx W_k
        d = k.shape[-1] // attn.heads

        def heads(t):  # (B, T, h*d) -> (B, h, T, d)
            return t.view(b, -1, attn.heads, d).transpose(1, 2)

        out = md_attention(heads(q), heads(k), heads(v), self.relu_mix, attention_mask)
        out = out.transpose(1, 2).reshape(b, n, attn.heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor


class MDTransformer2DModel(Transformer2DModel):
    """diffusers' `Transformer2DModel` with MobileDiffusion's options (module docstring). Unit type `md_attn`."""

    def __init__(self, *, md_attention: str = "both", md_shared_kv: bool = False, md_attn_fn: str = "softmax",
                 md_relu_mix: float = 1.0, md_ff_inner_dim: int | None = None, **kwargs):
        check_md_options(md_attention, md_shared_kv, md_attn_fn, md_relu_mix, md_ff_inner_dim,
                         kwargs.get("activation_fn", "geglu"), kwargs.get("cross_attention_dim"))
        super().__init__(**kwargs)
        if not self.is_input_continuous or self.config.norm_type != "layer_norm":
            raise ValueError("MobileDiffusion transformer units replace SD's continuous-input, layer-norm transformers")
        self.md = dict(attention=md_attention, shared_kv=md_shared_kv, attn_fn=md_attn_fn, relu_mix=md_relu_mix,
                       ff_inner_dim=md_ff_inner_dim)
        relu = md_attn_fn == "relu"
        for block in self.transformer_blocks:
            if md_ff_inner_dim is not None:  # (B, N, C) -> (B, N, F) gated -> (B, N, C)
                block.ff = FeedForward(block.dim, inner_dim=md_ff_inner_dim, activation_fn=self.config.activation_fn,
                                       dropout=self.config.dropout, bias=True)
            if md_attention == "self":
                block.attn2 = block.norm2 = None
            if md_attention == "cross":
                block.attn1 = block.norm1 = None
            if block.attn2 is not None and md_shared_kv:
                del block.attn2.to_v
            for attn in (block.attn1, block.attn2):
                shared = attn is block.attn2 and md_shared_kv
                if attn is not None and (relu or shared):
                    attn.set_processor(MDAttnProcessor(md_relu_mix if relu else 0.0, shared))

    @property
    def signature_label(self) -> str:
        """Module label in latency-table keys: the options that change time (slimdiff.profile.signature)."""
        m = self.md
        return (f"{type(self).__name__}({m['attention']},{'kv1' if m['shared_kv'] else 'kv2'},{m['attn_fn']},"
                f"{self.config.activation_fn})")

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                timestep=None, added_cond_kwargs=None, class_labels=None, cross_attention_kwargs=None,
                attention_mask: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                return_dict: bool = True):
        """(B, C, H, W) -> (B, C, H, W): norm, proj_in, per block [self-attn], [cross-attn], FF, proj_out, + input."""
        for attn in self._md_attentions():
            if not isinstance(attn.processor, MDAttnProcessor):
                raise ValueError("a MobileDiffusion unit's attention processor was replaced (set_attn_processor on "
                                 "the whole U-Net?); ReLU / shared-KV attention needs MDAttnProcessor")
        if attention_mask is not None and attention_mask.ndim == 2:  # (B, N) keep-mask -> bias, as diffusers
            attention_mask = ((1 - attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        batch, _, height, width = hidden_states.shape
        residual = hidden_states
        h, inner = self._operate_on_continuous_inputs(hidden_states)  # (B, N, I)
        for block in self.transformer_blocks:
            if block.attn1 is not None:
                h = block.attn1(block.norm1(h), attention_mask=attention_mask) + h
            if block.attn2 is not None:
                h = block.attn2(block.norm2(h), encoder_hidden_states=encoder_hidden_states,
                                attention_mask=encoder_attention_mask) + h
            h = block.ff(block.norm3(h)) + h
        out = self._get_output_for_continuous_inputs(h, residual, batch, height, width, inner)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _md_attentions(self) -> list:
        """The attention layers that need an MDAttnProcessor: all with ReLU attention; attn2 with shared K/V."""
        relu = self.md["attn_fn"] == "relu"
        return [a for blk in self.transformer_blocks for a in (blk.attn1, blk.attn2)
                if a is not None and (relu or (a is blk.attn2 and self.md["shared_kv"]))]


def check_md_options(attention: str, shared_kv: bool, attn_fn: str, relu_mix: float, ff_inner_dim: int | None,
                     activation_fn: str, cross_attention_dim: int | None, where: str = "MobileDiffusion unit") -> None:
    """Raise ValueError (one line, naming `where`) for an invalid option of an `md_attn` unit."""
    if attention not in ATTENTIONS:
        raise ValueError(f"{where}: md_attention={attention!r} is invalid; valid: {list(ATTENTIONS)}")
    if attn_fn not in ATTN_FNS:
        raise ValueError(f"{where}: md_attn_fn={attn_fn!r} is invalid; valid: {list(ATTN_FNS)}")
    if activation_fn not in FF_ACTS:
        raise ValueError(f"{where}: activation_fn={activation_fn!r} is invalid; valid: {list(FF_ACTS)}")
    if not 0.0 <= float(relu_mix) <= 1.0:
        raise ValueError(f"{where}: md_relu_mix must be in [0, 1], got {relu_mix!r}")
    if ff_inner_dim is not None and (isinstance(ff_inner_dim, bool) or not isinstance(ff_inner_dim, int)
                                     or ff_inner_dim < 1):
        raise ValueError(f"{where}: the feed-forward inner width must be an integer >= 1, got {ff_inner_dim!r}")
    if shared_kv and (attention == "self" or cross_attention_dim is None):
        raise ValueError(f"{where}: shared key-value projections are the cross-attention's; this unit has none "
                         f"(md_attention={attention!r}, cross_attention_dim={cross_attention_dim!r})")
    if attention == "cross" and cross_attention_dim is None:
        raise ValueError(f"{where}: a cross-attention-only unit needs cross_attention_dim (the text width)")


def set_relu_mix(model: nn.Module, mix: float) -> int:
    """Set the softmax -> ReLU blend m of every ReLU-attention unit of `model` (a slim U-Net), in its
    processors and in its saved structure; returns the number of units changed (fine-tune schedule)."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"relu mix must be in [0, 1], got {mix!r}")
    blocks = model.blocks
    changed = 0
    for name, _, unit in iter_units(blocks):
        if unit["type"] == ATTN_TYPE and unit["kwargs"].get("md_attn_fn") == "relu":
            unit["kwargs"]["md_relu_mix"] = float(mix)
            module = model.get_submodule(name_to_path(name))
            module.md["relu_mix"] = float(mix)
            for attn in module._md_attentions():
                attn.processor.relu_mix = float(mix)
            changed += 1
    model.register_to_config(blocks=blocks)
    return changed


register_unit_type(RESNET_TYPE, SeparableResnetBlock2D, "resnet")  # separable convs (MobileDiffusion)
register_unit_type(ATTN_TYPE, MDTransformer2DModel, "attn")  # decoupled / shared-KV / ReLU / trimmed FF
