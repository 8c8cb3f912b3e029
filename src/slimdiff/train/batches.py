"""The data side of a text-to-image trainer: encoded micro-batches and their randomness.

    data = LatentBatches(cfg, base_dataset, parts, trainer)      # cache chosen, encoders ready
    loader = data.loader(sampler)                                # this process's micro-batches
    latents, noise, text, t, g, rows = data.sample(next(loader), position)
    unet(x_t, t, **text.kwargs())                                # text: a `slimdiff.sample.Conditioning`

`cfg` carries the data fields of `DistillConfig` (cache_dir, memory_cache, memory_cache_mb,
num_workers, pin_memory, prefetch_factor, caption_dropout, seed, batch sizes). The encodings
(VAE latent moments, text embeddings; SDXL: also the pooled text and the item's time ids) are cached
on disk (`cache_dir`), in memory when the run revisits the data, or computed every step; all three
give the same values. Every random draw of micro-batch `position` comes from
`random_generator(seed, position, NOISE_STREAM)` over the whole global batch, and this process
takes its rows (see `slimdiff.train.loop`).

The unconditional input (`empty_text`: caption dropout, and the null branch of classifier-free
guidance in the few-step distillers) is what the pipeline samples with: the empty caption's
encoding, or for an SDXL pipeline with `force_zeros_for_empty_prompt` (its default) zeros for both
the text and the pooled embedding, as `StableDiffusionXLPipeline.encode_prompt` builds the negative
branch; it carries no time ids, so every row keeps its own.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from slimdiff.data import collate_items
from slimdiff.data.cache import BatchEncoder, CachedDataset, EncodingCache, MemoryCache, sample_latents
from slimdiff.data.common import time_ids
from slimdiff.sample.conditioning import Conditioning
from slimdiff.train.loop import NOISE_STREAM, random_generator


class LatentBatches:
    def __init__(self, cfg, base: Dataset, parts, trainer):
        """`base`: the raw data set; `parts`: the frozen encoders (`slimdiff.train.parts.Parts`: vae,
        tokenizer(s), text encoder(s), pipeline); `trainer`: the run (its rank, world, device, timer,
        scaling_factor, num_train_timesteps, resolution)."""
        self.cfg, self.trainer = cfg, trainer
        p = parts
        cache = None
        if cfg.cache_dir is not None:
            cache = EncodingCache(cfg.cache_dir, base.fingerprint, p.vae, p.text_encoder, p.text_encoder_2)
        elif cfg.memory_cache == "auto" and cfg.max_steps * cfg.grad_accum * cfg.batch_size * trainer.world > len(base):
            cache = MemoryCache(cfg.memory_cache_mb * 2 ** 20)  # the run revisits items: keep their encodings
        self.dataset = CachedDataset(base, cache)
        self.encoder = BatchEncoder(p.vae, p.tokenizer, p.text_encoder, cache, timer=trainer.timer,
                                    tokenizer_2=p.tokenizer_2, text_encoder_2=p.text_encoder_2)
        self.empty_text = self._unconditional(p.pipeline)  # 1 row, for caption dropout and CFG
        # a full 1-row input for dry runs: the unconditional text, an R x R image's time ids
        r = trainer.resolution
        self.probe_text = self.empty_text if not self.encoder.sdxl else Conditioning(
            self.empty_text.encoder_hidden_states,
            {**self.empty_text.added_cond_kwargs, "time_ids": time_ids((r, r), (0, 0), (r, r))[None].to(trainer.device)})

    def _unconditional(self, pipeline) -> Conditioning:
        """The pipeline's unconditional input, 1 row (module doc)."""
        enc = self.encoder.encode_captions([""])  # {"text": (1, L, D)[, "pooled": (1, P)]}
        if not self.encoder.sdxl:
            return Conditioning(enc["text"])
        if getattr(pipeline, "config", {}).get("force_zeros_for_empty_prompt", True):
            enc = {k: torch.zeros_like(v) for k, v in enc.items()}
        return Conditioning(enc["text"], {"text_embeds": enc["pooled"]})

    def loader(self, sampler) -> Iterator[list[dict]]:
        """The micro-batches (lists of items) of `sampler`'s index lists."""
        cfg = self.cfg
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate_items,
                            num_workers=cfg.num_workers, pin_memory=cfg.pin_memory and self.trainer.device.type == "cuda",
                            **({"prefetch_factor": cfg.prefetch_factor} if cfg.num_workers > 0 else {}))
        return iter(loader)

    def sample(self, items: list[dict], position: int, draw_t: Callable | None = None):
        """Steps 1-2 of a micro-step: encodings and the global micro-batch's randomness, this process's rows.

        Returns latents x0 (b, C, h, w), noise (b, C, h, w), text (a `Conditioning` of b rows: (b, L, D);
        SDXL: also text_embeds (b, P), time_ids (b, 6)) after caption dropout, timesteps t (b,) and
        `(g, rows)`: the generator after these draws and this process's slice of the global batch, for
        further draws of a method. `draw_t(G, g)`: the global batch's (G,) timesteps (default: uniform
        over the training timesteps).
        """
        run = self.trainer
        # 1. encodings: latent moments (b, 2C, h, w), text (b, L, D) (+ SDXL's added conditioning)
        moments, hidden, added = self.encoder.encode(items)
        b, c2, h, w = moments.shape
        rows = slice(run.rank * b, (run.rank + 1) * b)
        # 2. the global micro-batch's randomness, this process's rows
        g = random_generator(self.cfg.seed, position, NOISE_STREAM)
        G = b * run.world
        t = draw_t(G, g) if draw_t is not None else torch.randint(0, run.num_train_timesteps, (G,), generator=g)
        t = t[rows].to(run.device)
        noise = torch.randn(G, c2 // 2, h, w, generator=g)[rows].to(run.device)
        eps = torch.randn(G, c2 // 2, h, w, generator=g)[rows]
        drop = (torch.rand(G, generator=g) < self.cfg.caption_dropout)[rows].to(run.device)
        latents = sample_latents(moments, eps, run.scaling_factor)  # x0 (b, C, h, w)
        text = Conditioning(hidden, added).where(drop, self.empty_text)
        return latents, noise, text, t, g, rows
