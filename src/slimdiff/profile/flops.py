"""FLOPs of a U-Net forward, per unit: counted (torch's FlopCounterMode) and analytic.

Unit: FLOPs = 2 x MACs (one multiply-add = 2 FLOPs), the convention of
`torch.utils.flop_counter`. What is counted: convolutions, linear layers and matrix
products, including the two attention matmuls QK^T and AV. What is *not* counted (by the
counter and by the analytic formulas alike): bias adds, normalisations (GroupNorm,
LayerNorm), activations (SiLU, GELU, the GEGLU gate product), softmax, the attention
scale, residual adds, interpolation and concatenation. Those are memory-bound and cheap in
FLOPs; their *time* shows up in the measured latency.

Attention: `FlopCounterMode` has no formula for the CPU kernel of
`F.scaled_dot_product_attention` (`aten._scaled_dot_product_flash_attention_for_cpu`) and
counts 0 for it; `SDPA_FLOP_MAPPING` adds one (2*b*h*s_q*s_k*d for QK^T plus the same for
AV), so the model's attention processor need not be changed. With the plain processor
(`AttnProcessor`), the same matmuls appear as `baddbmm`/`bmm` and are counted natively.

    with UnitFlopCounter({"down.0.layer.0.attn": module, ...}) as fc, torch.inference_mode():
        unet(sample, t, encoder_hidden_states=ehs)
    fc.total, fc.by_name["down.0.layer.0.attn"]
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # q (B, heads, S_q, d) @ k^T -> (B, heads, S_q, S_k); scores @ v (B, heads, S_k, d_v)
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# Ops the counter misses on CPU -> formula taking shapes (see module docstring).
SDPA_FLOP_MAPPING = {
    op: _sdpa_cpu_flop
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


class UnitFlopCounter:
    """Count FLOPs of one forward, in total and per named module (a unit, a block).

    Attribution: a forward pre-hook reads the counter's running total when a module starts,
    a forward hook when it ends; the difference is that module's FLOPs (summed if a module
    runs more than once). Named modules must not nest into one another if their numbers are
    to be summed.
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.by_name: dict[str, int] = defaultdict(int)
        self.total = 0
        self._mode = FlopCounterMode(display=False, custom_mapping=SDPA_FLOP_MAPPING)
        self._handles: list = []
        self._start: dict[str, int] = {}

    def __enter__(self) -> "UnitFlopCounter":
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name)))
            self._handles.append(mod.register_forward_hook(self._post(name)))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.total = self._mode.get_total_flops()
        self.by_name = dict(self.by_name)

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = self._mode.get_total_flops()

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.by_name[name] += self._mode.get_total_flops() - self._start.pop(name)

        return hook


# ----------------------------------------------------------------------------------------
# Analytic counts (same convention: 2*MACs of convs, linears and matmuls; biases excluded)
# ----------------------------------------------------------------------------------------


def conv_flops(c_in: int, c_out: int, kernel: int, out_h: int, out_w: int, batch: int = 1) -> int:
    """2 * B * H_out * W_out * C_out * C_in * k^2."""
    return 2 * batch * out_h * out_w * c_out * c_in * kernel * kernel


def linear_flops(tokens: int, d_in: int, d_out: int, batch: int = 1) -> int:
    """2 * B * tokens * d_in * d_out."""
    return 2 * batch * tokens * d_in * d_out


def resnet_flops(
    in_channels: int,
    out_channels: int,
    height: int,
    width: int,
    temb_channels: int | None = 1280,  # time embedding width (4 x block_out_channels[0] in SD)
    batch: int = 1,
    kernel: int = 3,  # conv1 / conv2 kernel
    shortcut_kernel: int = 1,  # conv_shortcut kernel when in != out (1x1 in SD)
) -> int:
    """ResnetBlock2D (stride 1): conv1 + time_emb_proj + conv2 (+ 1x1 shortcut if in != out)."""
    f = conv_flops(in_channels, out_channels, kernel, height, width, batch)  # conv1
    f += conv_flops(out_channels, out_channels, kernel, height, width, batch)  # conv2
    if temb_channels:
        f += linear_flops(1, temb_channels, out_channels, batch)  # time_emb_proj on (B, temb)
    if in_channels != out_channels:
        f += conv_flops(in_channels, out_channels, shortcut_kernel, height, width, batch)
    return f


def transformer_flops(
    channels: int,
    height: int,
    width: int,
    context_length: int = 77,  # CLIP text tokens
    cross_attention_dim: int = 768,  # text-embedding width (768 SD-1.x, 1024 SD-2.x)
    inner_dim: int | None = None,  # heads * head_dim; = channels in SD
    ff_inner_dim: int | None = None,  # feed-forward hidden width; 4 * inner_dim in SD
    num_layers: int = 1,  # BasicTransformerBlocks per unit (transformer_layers_per_block)
    batch: int = 1,
    self_attn_keys: int | None = None,  # keys per query in self-attention; None: all N (GRI: s^2 + N/r^2)
) -> int:
    """Transformer2DModel: proj_in, per layer [self-attn, cross-attn, GEGLU FF], proj_out.

    With N = H*W image tokens, L context tokens, I = inner_dim, D = cross_attention_dim,
    F = ff_inner_dim (all times 2 for FLOPs, times B):
      proj_in, proj_out:  N*C*I each (1x1 conv or linear: the same count)
      self-attention:     q,k,v,o N*I*I each; QK^T N*K*I; AV N*K*I (K = self_attn_keys, default N)
      cross-attention:    q,o N*I*I each; k,v L*D*I each; QK^T N*L*I; AV N*L*I
      GEGLU feed-forward: N*I*2F (value and gate in one projection) + N*F*I
    Heads do not change the count (they split I).
    """
    n = height * width
    keys = n if self_attn_keys is None else self_attn_keys
    inner = inner_dim or channels
    ff = ff_inner_dim or 4 * inner
    per_layer = (
        4 * linear_flops(n, inner, inner, batch)  # self-attn q, k, v, out
        + 2 * 2 * batch * n * keys * inner  # self-attn QK^T and AV
        + 2 * linear_flops(n, inner, inner, batch)  # cross-attn q, out
        + 2 * linear_flops(context_length, cross_attention_dim, inner, batch)  # cross-attn k, v
        + 2 * 2 * batch * n * context_length * inner  # cross-attn QK^T and AV
        + linear_flops(n, inner, 2 * ff, batch)  # GEGLU proj
        + linear_flops(n, ff, inner, batch)  # FF out
    )
    proj = 2 * linear_flops(n, channels, inner, batch)  # proj_in + proj_out
    return proj + num_layers * per_layer


def downsample_flops(channels: int, out_channels: int, height: int, width: int, batch: int = 1) -> int:
    """Downsample2D: 3x3 conv, stride 2, on an (H, W) input (H, W even)."""
    return conv_flops(channels, out_channels, 3, height // 2, width // 2, batch)


def upsample_flops(channels: int, out_channels: int, height: int, width: int, batch: int = 1) -> int:
    """Upsample2D: nearest x2 (not counted) then a 3x3 conv at (2H, 2W)."""
    return conv_flops(channels, out_channels, 3, 2 * height, 2 * width, batch)


def analytic_unit_flops(
    module: nn.Module, kind: str, height: int, width: int, batch: int = 1, context_length: int = 77
) -> int:
    """Analytic FLOPs of a diffusers unit module on an (H, W) input, from its layer sizes.

    Supports ResnetBlock2D, Transformer2DModel (continuous input, BasicTransformerBlock with
    GEGLU), Downsample2D and Upsample2D with convolutions; anything else raises ValueError.
    """
    if kind == "resnet":
        temb = module.time_emb_proj.in_features if getattr(module, "time_emb_proj", None) is not None else None
        shortcut = getattr(module, "conv_shortcut", None)
        return resnet_flops(
            module.in_channels,
            module.out_channels,
            height,
            width,
            temb_channels=temb,
            batch=batch,
            kernel=module.conv1.kernel_size[0],
            shortcut_kernel=shortcut.kernel_size[0] if shortcut is not None else 1,
        )
    if kind == "attn":
        blocks = module.transformer_blocks
        attn2 = blocks[0].attn2
        if attn2 is None:
            raise ValueError(f"analytic FLOPs need a cross-attention layer; {type(module).__name__} has none")
        return transformer_flops(
            module.in_channels,
            height,
            width,
            context_length=context_length,
            cross_attention_dim=attn2.to_k.in_features,
            inner_dim=blocks[0].attn1.to_q.out_features,
            ff_inner_dim=blocks[0].ff.net[2].in_features,
            num_layers=len(blocks),
            batch=batch,
            # GRI attention (slimdiff.modules.gri) attends to fewer keys than the N of full attention
            self_attn_keys=module.self_attention_keys(height, width) if hasattr(module, "self_attention_keys") else None,
        )
    if kind == "downsample":
        return downsample_flops(module.channels, module.out_channels, height, width, batch)
    if kind == "upsample":
        return upsample_flops(module.channels, module.out_channels, height, width, batch)
    raise ValueError(f"no analytic FLOPs for unit kind {kind!r}; valid: resnet, attn, downsample, upsample")
