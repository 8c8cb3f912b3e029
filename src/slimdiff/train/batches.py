"""The data side of a text-to-image trainer: encoded micro-batches and their randomness.

    data = LatentBatches(cfg, base_dataset, parts, trainer)      # cache chosen, encoders ready
    loader = data.loader(sampler)                                # this process's micro-batches
    latents, noise, text, t, g, rows = data.sample(next(loader), position)

`cfg` carries the data fields of `DistillConfig` (cache_dir, memory_cache, memory_cache_mb,
num_workers, pin_memory, prefetch_factor, caption_dropout, seed, batch sizes). The encodings
(VAE latent moments, text embeddings) are cached on disk (`cache_dir`), in memory when the run
revisits the data, or computed every step; all three give the same values. Every random draw of
micro-batch `position` comes from `random_generator(seed, position, NOISE_STREAM)` over the whole
global batch, and this process takes its rows (see `slimdiff.train.loop`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from slimdiff.data import collate_items
from slimdiff.data.cache import BatchEncoder, CachedDataset, EncodingCache, MemoryCache, sample_latents
from slimdiff.train.loop import NOISE_STREAM, random_generator


class LatentBatches:
    def __init__(self, cfg, base: Dataset, vae, tokenizer, text_encoder, trainer):
        """`base`: the raw data set; `vae`, `tokenizer`, `text_encoder`: the frozen encoders;
        `trainer`: the run (its rank, world, device, timer, scaling_factor, num_train_timesteps)."""
        self.cfg, self.trainer = cfg, trainer
        cache = None
        if cfg.cache_dir is not None:
            cache = EncodingCache(cfg.cache_dir, base.fingerprint, vae, text_encoder)
        elif cfg.memory_cache == "auto" and cfg.max_steps * cfg.grad_accum * cfg.batch_size * trainer.world > len(base):
            cache = MemoryCache(cfg.memory_cache_mb * 2 ** 20)  # the run revisits items: keep their encodings
        self.dataset = CachedDataset(base, cache)
        self.encoder = BatchEncoder(vae, tokenizer, text_encoder, cache, timer=trainer.timer)
        self.empty_text = self.encoder.encode_text([""])  # (1, L, D), for caption dropout

    def loader(self, sampler) -> Iterator[list[dict]]:
        """The micro-batches (lists of items) of `sampler`'s index lists."""
        cfg = self.cfg
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate_items,
                            num_workers=cfg.num_workers, pin_memory=cfg.pin_memory and self.trainer.device.type == "cuda",
                            **({"prefetch_factor": cfg.prefetch_factor} if cfg.num_workers > 0 else {}))
        return iter(loader)

    def sample(self, items: list[dict], position: int, draw_t: Callable | None = None):
        """Steps 1-2 of a micro-step: encodings and the global micro-batch's randomness, this process's rows.

        Returns latents x0 (b, C, h, w), noise (b, C, h, w), text (b, L, D) after caption dropout,
        timesteps t (b,) and `(g, rows)`: the generator after these draws and this process's slice of
        the global batch, for further draws of a method. `draw_t(G, g)`: the global batch's (G,)
        timesteps (default: uniform over the training timesteps).
        """
        run = self.trainer
        # 1. encodings: latent moments (b, 2C, h, w), text (b, L, D)
        moments, text = self.encoder(items)
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
        text = torch.where(drop[:, None, None], self.empty_text.expand_as(text), text)
        return latents, noise, text, t, g, rows
