"""What a pipeline class feeds its U-Net besides the latents: the one place that differs per class.

    cond = encode_prompts(pipe, ["a red circle"])     # StableDiffusionPipeline or StableDiffusionXLPipeline
    unet(x_t, t, encoder_hidden_states=cond.encoder_hidden_states, added_cond_kwargs=cond.added_cond_kwargs)

- `StableDiffusionPipeline`: the tokenizer and text encoder's last hidden states (N, L, D); no
  added conditioning.
- `StableDiffusionXLPipeline` (Podell et al. 2023, section 2.1-2.2): both text encoders'
  penultimate hidden states concatenated (N, L, 768 + 1280), the second encoder's pooled
  projection (N, 1280) and the six size/crop time ids (N, 6) = (original h, w, crop top, left,
  target h, w), all as the pipeline's own `encode_prompt` and `_get_add_time_ids` build them
  (no classifier-free guidance here: the unconditional branch is the caller's).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from slimdiff.data.common import time_ids


@dataclasses.dataclass
class Conditioning:
    """The U-Net's text inputs for N prompts (a trainer's micro-batch, a sampler's prompts).

        unet(x_t, t, **cond.kwargs())                  # encoder_hidden_states (+ added_cond_kwargs: SDXL)
    """

    encoder_hidden_states: torch.Tensor  # (N, L, D)
    added_cond_kwargs: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds (N, P), time_ids (N, 6)

    def __len__(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def kwargs(self) -> dict:
        """The U-Net's keywords: `encoder_hidden_states` and, when there is added conditioning, `added_cond_kwargs`."""
        if self.added_cond_kwargs is None:
            return {"encoder_hidden_states": self.encoder_hidden_states}
        return {"encoder_hidden_states": self.encoder_hidden_states, "added_cond_kwargs": self.added_cond_kwargs}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": self.encoder_hidden_states, **(self.added_cond_kwargs or {})}

    @classmethod
    def _of(cls, tensors: dict[str, torch.Tensor]) -> "Conditioning":
        added = {k: v for k, v in tensors.items() if k != "encoder_hidden_states"}
        return cls(tensors["encoder_hidden_states"], added or None)

    def select(self, index) -> "Conditioning":
        """Rows `index` (a slice or index tensor) of every tensor."""
        return self._of({k: v[index] for k, v in self._tensors().items()})

    def to(self, device=None, dtype=None) -> "Conditioning":
        """On `device`, in `dtype`; `time_ids` stay float32 (sizes in pixels: bfloat16 would round 683 to
        684; the U-Net embeds them in float32 and casts the embedding)."""
        return self._of({k: v.to(device=device, dtype=None if k == "time_ids" else dtype)
                         for k, v in self._tensors().items()})

    def expand(self, n: int) -> "Conditioning":
        """A 1-row conditioning as n rows (views)."""
        return self._of({k: v.expand(n, *v.shape[1:]) for k, v in self._tensors().items()})

    @classmethod
    def cat(cls, parts: Sequence["Conditioning"]) -> "Conditioning":
        """Rows of `parts` one after the other, on the first part's device and dtypes."""
        first = parts[0]._tensors()
        return cls._of({k: torch.cat([p._tensors()[k].to(v) for p in parts]) for k, v in first.items()})

    def where(self, mask: torch.Tensor | None, other: "Conditioning") -> "Conditioning":
        """Rows of `other` (1 row or N) where `mask` (N,) bool is True (None: every row), else this one's.
        A tensor `other` lacks is kept: an unconditional input without time ids keeps each row's own
        (SDXL's pipeline pairs the negative prompt with the same size/crop ids)."""
        mine, theirs = self._tensors(), other._tensors()
        out = {}
        for k, v in mine.items():
            if k not in theirs:
                out[k] = v
                continue
            o = theirs[k].to(v).expand_as(v)
            out[k] = o if mask is None else torch.where(mask.view(-1, *[1] * (v.dim() - 1)).to(v.device), o, v)
        return self._of(out)


def is_sdxl_pipeline(pipe) -> bool:
    """True for a pipeline with SDXL's second text encoder and text/time-conditioned U-Net."""
    unet = getattr(pipe, "unet", None)
    return getattr(pipe, "text_encoder_2", None) is not None and unet is not None and \
        unet.config.get("addition_embed_type") == "text_time"


def sdxl_time_ids(n: int, size_px: int, crop: tuple[int, int] = (0, 0),
                  original_px: int | None = None) -> torch.Tensor:
    """(n, 6) float time ids (original h, w, crop top, left, target h, w) for square images of
    `size_px`, as `StableDiffusionXLPipeline.__call__` passes them by default (original = target)."""
    orig = original_px or size_px
    return time_ids((orig, orig), crop, (size_px, size_px))[None].expand(n, -1).clone()


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], size_px: int | None = None) -> Conditioning:
    """The U-Net's text inputs for `prompts` as `pipe`'s class builds them (module docstring).
    `size_px`: the image side the time ids name (SDXL); default the U-Net's sample size x VAE factor."""
    prompts = list(prompts)
    if is_sdxl_pipeline(pipe):
        device = pipe.text_encoder_2.device
        emb, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
        size = pipe.unet.config.sample_size
        px = size_px or (size if isinstance(size, int) else size[0]) * pipe.vae_scale_factor
        return Conditioning(emb.float(), {"text_embeds": pooled.float(), "time_ids": sdxl_time_ids(len(prompts), px)})
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return Conditioning(pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0].float())
