"""Classifier-free guidance in training: guided U-Net outputs and w-reading (guidance-embedded) students.

Shared by the few-step distillers (`slimdiff.distill.step`, `slimdiff.distill.lcm`). w is diffusers'
guidance scale: the guided output is w out(c) - (w - 1) out(null) (w = 1: no guidance); a
guidance-embedded U-Net reads emb(w - 1) through `time_cond_proj_dim` (Meng et al. 2023, as LCM).
Tensors: z (B, C, h, w); t (B,); w (B,); text: a `slimdiff.sample.Conditioning` of B rows (B, L, D;
SDXL: also text_embeds, time_ids), null_text: the unconditional input, 1 row (without time ids: each
guided row keeps its own, as SDXL's pipeline pairs the negative branch with the same size/crop ids).
"""

from __future__ import annotations

import torch
from torch import nn

from slimdiff.sample.conditioning import Conditioning
from slimdiff.train.maths import guidance_embedding

Tensor = torch.Tensor


def cfg_combine(cond: Tensor, uncond: Tensor, w: Tensor) -> Tensor:
    """w v(c) - (w - 1) v(null) per example; w (B,). w = 1 returns `cond` exactly."""
    w = w.view(-1, *([1] * (cond.ndim - 1))).to(cond)
    return w * cond - (w - 1) * uncond


def guided_output(model: nn.Module, z: Tensor, t: Tensor, text: Conditioning, null_text: Conditioning, w: Tensor,
                  dim: int | None) -> tuple[Tensor, Tensor]:
    """(guided, conditional) U-Net outputs at guidance w (B,), in one model call.

    Guidance-embedded (`dim`: the embedding width): one pass reading emb(w - 1); it is guided and conditional at once.
    Otherwise the rows with w != 1 run again on `null_text` in the same batch and are
    combined by `cfg_combine`; rows with w = 1 return the conditional output unchanged.
    """
    if dim is not None:
        out = model(z, t, **text.kwargs(), timestep_cond=guidance_embedding(w, dim).to(z)).sample
        return out, out
    g = (w != 1).nonzero().flatten()  # (m,) guided rows
    b = z.shape[0]
    both = Conditioning.cat([text, text.select(g).where(None, null_text)])  # (b + m) rows
    out = model(torch.cat([z, z[g]]), torch.cat([t, t[g]]), **both.kwargs()).sample
    cond = out[:b]
    uncond = torch.zeros_like(cond)
    uncond[g] = out[b:]
    return cfg_combine(cond, uncond, w), cond


def add_guidance_embedding(unet: nn.Module, dim: int) -> nn.Module:
    """A copy of `unet` that also reads a w embedding (time_cond_proj_dim=dim), projection zeroed,
    so it computes what `unet` computes until trained. Works for diffusers and slim U-Nets."""
    have = unet.config.get("time_cond_proj_dim")
    if have is not None:
        if have != dim:
            raise ValueError(f"the student is already guidance-embedded with time_cond_proj_dim={have}, "
                             f"not guidance_embed_dim={dim}")
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}  # _use_default_values would win
    new = type(unet).from_config({**config, "time_cond_proj_dim": dim})
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or missing != ["time_embedding.cond_proj.weight"]:
        raise ValueError(f"adding the guidance embedding changed more than time_embedding.cond_proj: "
                         f"missing {missing}, unexpected {unexpected}")
    nn.init.zeros_(new.time_embedding.cond_proj.weight)
    if hasattr(unet, "inheritance"):
        new.inheritance = {**unet.inheritance, "time_embedding.cond_proj.weight": "new"}
    return new.to(next(unet.parameters()).device)
