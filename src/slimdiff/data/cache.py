"""Encoding a batch into U-Net inputs, with an optional disk cache of the two encoders' outputs.

The trainer needs, per example, the VAE latent distribution of its image and the text
encoder's embedding of its caption. Both encoders are frozen, so their outputs are a function
of the item: `EncodingCache` stores them per data-set index, so later epochs skip the image
loading and both encoders. What is cached is the latent *distribution* (mean and log-variance,
the VAE's `latent_dist.parameters`), not a sample: the latent is drawn from it every step with
the step's seeded noise, exactly as without the cache. Each item is encoded alone (a batch of
one), so its encodings are a function of the item only: the same bits with no cache, the RAM
cache or the disk cache, in any batch, before and after a resume.

    cache = EncodingCache(dir, dataset.fingerprint, vae, text_encoder)   # or None
    ds = CachedDataset(dataset, cache)             # cached items skip loading the image
    enc = BatchEncoder(vae, tokenizer, text_encoder, cache)
    moments, text = enc(items)                     # (B, 2C, h, w), (B, L, D); each item encoded alone
    moments, text, added = enc.encode(items)       # added: None, or SDXL's {"text_embeds", "time_ids"}

SDXL (`text_encoder_2`, `tokenizer_2` given): the text is both encoders' penultimate hidden states
concatenated (B, L, D1 + D2) and an entry also holds `pooled`, the second encoder's projected
embedding (P,), and `time_ids` (6,) float32, the item's size/crop conditioning (`"time_ids"` of the
data set's item; an item without them is taken as an R x R original, uncropped), as
`StableDiffusionXLPipeline.encode_prompt` and diffusers' train_text_to_image_sdxl build them.

Cache layout: `DIR/<key>/<index // 1000>/<index>.safetensors` with tensors `moments` and
`text` (SDXL: also `pooled`, `time_ids`); `<key>` hashes the data set fingerprint and the encoders
(config + weight checksums + dtype), so a different data set, resolution or encoder never reads
stale entries. Each file is written atomically; processes write disjoint indices.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from slimdiff.data.common import time_ids
from slimdiff.io import atomic_path, read_json, write_json


def module_fingerprint(module: torch.nn.Module) -> str:
    """Config + dtype + per-tensor sums: changes when the weights do (cheap: one pass, no copy).
    Config keys starting with "_" are left out: they are bookkeeping, not the model, and diffusers'
    `_use_default_values` is a list made from a set, whose order changes from process to process
    (hash randomisation), which made the key of a VAE built from defaults differ in every process."""
    h = hashlib.sha1()
    config = getattr(module, "config", None)
    if config is not None:
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config) if isinstance(config, dict) \
            else vars(config)
        cfg = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in module.state_dict().items():
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{t.double().sum().item():.10e}|"
                     f"{t.double().abs().sum().item():.10e}".encode())
    return h.hexdigest()


class EncodingCache:
    def __init__(self, root: str | Path, dataset_fingerprint: str, vae: torch.nn.Module,
                 text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module | None = None):
        key_src = f"{dataset_fingerprint}|vae={module_fingerprint(vae)}|text={module_fingerprint(text_encoder)}"
        if text_encoder_2 is not None:  # SDXL
            key_src += f"|text2={module_fingerprint(text_encoder_2)}"
        self.key = hashlib.sha1(key_src.encode()).hexdigest()[:20]
        self.dir = Path(root) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.about = self.dir / "about.json"
        if not self.about.exists():
            write_json(self.about, {"dataset": dataset_fingerprint, "key_source": key_src})
        self.dtype = next(vae.parameters()).dtype  # what the encoders give
        # shapes of an entry: moments (2C, h, w), text (L, D); h, w, L recorded with the first entry
        self.shapes = read_json(self.about).get("shapes") or {}
        # name -> (dimensions, the dimension of known width, that width)
        self.widths = {"moments": (3, 0, 2 * vae.config.latent_channels), "text": (2, 1, text_encoder.config.hidden_size)}
        if text_encoder_2 is not None:
            self.widths.update(text=(2, 1, text_encoder.config.hidden_size + text_encoder_2.config.hidden_size),
                               pooled=(1, 0, text_encoder_2.config.projection_dim), time_ids=(1, 0, 6))

    def path(self, index: int) -> Path:
        return self.dir / f"{index // 1000:05d}" / f"{index:08d}.safetensors"

    def has(self, index: int) -> bool:
        return self.path(index).is_file()

    def load(self, index: int) -> dict[str, torch.Tensor]:
        """The entry of item `index`; ValueError naming the file when it is damaged (unreadable,
        truncated, other keys, shape or dtype than the encoders give, non-finite values)."""
        path = self.path(index)
        try:
            entry = load_file(str(path))
        except Exception as e:  # safetensors' errors name no file
            problem = "empty file" if path.stat().st_size == 0 else f"unreadable ({type(e).__name__}: {e})"
        else:
            problem = self.problem(entry)
        if problem:
            raise ValueError(f"damaged encoding-cache entry {path}: {problem}; delete it (it is encoded anew) or "
                             f"the whole cache {self.dir}")
        return entry

    def problem(self, entry: dict[str, torch.Tensor]) -> str | None:
        """What is wrong with a loaded entry, or None."""
        if set(entry) != set(self.widths):
            return f"tensors {sorted(entry)}, expected {sorted(self.widths)}"
        for name, t in entry.items():
            ndim, dim, width = self.widths[name]
            expected = self.shapes.get(name)
            dtype = torch.float32 if name == "time_ids" else self.dtype  # sizes in pixels stay exact
            if t.dtype != dtype:
                return f"{name} is {t.dtype}, the encoders give {dtype}"
            if expected and list(t.shape) != expected:
                return f"{name} has shape {tuple(t.shape)}, expected {tuple(expected)}"
            if t.dim() != ndim or t.shape[dim] != width:
                return f"{name} has shape {tuple(t.shape)}, expected {ndim} dimensions, dimension {dim} = {width}"
            if not torch.isfinite(t).all():
                return f"{name} holds NaN or infinite values"
        return None

    def save(self, index: int, moments: torch.Tensor, text: torch.Tensor, **added: torch.Tensor) -> None:
        """Item `index`'s encodings; `added`: SDXL's `pooled` and `time_ids`."""
        entry = {"moments": moments, "text": text, **added}
        if not self.shapes:  # the first entry's shapes: later loads must match them
            self.shapes = {k: list(v.shape) for k, v in entry.items()}
            write_json(self.about, {**read_json(self.about), "shapes": self.shapes})
        with atomic_path(self.path(index)) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in entry.items()}, str(tmp))


class MemoryCache:
    """`EncodingCache`'s interface in RAM, for one run: the encodings of items already seen, up to
    `max_bytes` (later items are simply not kept). Exact in the same sense as the disk cache:
    a hit returns the values the encoders gave when the item was first encoded."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: dict[int, dict[str, torch.Tensor]] = {}

    def has(self, index: int) -> bool:
        return index in self.items

    def load(self, index: int) -> dict[str, torch.Tensor]:
        return dict(self.items[index])

    def save(self, index: int, moments: torch.Tensor, text: torch.Tensor, **added: torch.Tensor) -> None:
        entry = {"moments": moments, "text": text, **added}
        size = sum(v.numel() * v.element_size() for v in entry.values())
        if index not in self.items and self.bytes + size <= self.max_bytes:
            self.items[index] = {k: v.detach().clone() for k, v in entry.items()}
            self.bytes += size


class CachedDataset(Dataset):
    """Wraps a data set: an item already in the cache is returned as its encodings only."""

    def __init__(self, base: Dataset, cache: EncodingCache | MemoryCache | None):
        self.base, self.cache = base, cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None and self.cache.has(i):
            return {"index": i, **self.cache.load(i)}
        return self.base[i]


class BatchEncoder:
    """items (list of data-set dicts) -> latent moments (B, 2C, h, w) and text embeddings (B, L, D);
    SDXL (`tokenizer_2`, `text_encoder_2`): also the pooled text (B, P) and the time ids (B, 6)."""

    def __init__(self, vae, tokenizer, text_encoder, cache: EncodingCache | MemoryCache | None = None, timer=None,
                 tokenizer_2=None, text_encoder_2=None):
        self.vae, self.tokenizer, self.text_encoder, self.cache = vae, tokenizer, text_encoder, cache
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.sdxl = text_encoder_2 is not None
        self.device = next(vae.parameters()).device
        self.dtype = next(vae.parameters()).dtype
        self.timer = timer if timer is not None else (lambda phase: contextlib.nullcontext())  # phase -> context

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """captions -> (B, L, D), as `StableDiffusionPipeline.encode_prompt` does (padded to max length)."""
        tok = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(self.device)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(self.device)
        return self.text_encoder(ids, attention_mask=mask)[0]

    @torch.no_grad()
    def encode_captions(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{"text": (B, L, D)}; SDXL as `StableDiffusionXLPipeline.encode_prompt` (clip_skip None): "text" the
        two encoders' penultimate hidden states concatenated (B, L, D1 + D2), "pooled" the second's
        projected embedding (B, P)."""
        if not self.sdxl:
            return {"text": self.encode_text(captions)}
        states = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(self.device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
        return {"text": torch.cat(states, dim=-1), "pooled": out[0]}

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) in [-1, 1] -> latent moments (B, 2C, H/f, W/f) (mean, logvar)."""
        return self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.parameters

    def __call__(self, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(moments (B, 2C, h, w), text (B, L, D)) of `items` (`encode`)."""
        return self.encode(items)[:2]

    @torch.no_grad()
    def encode(self, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """(moments, text, added): added is None, or SDXL's U-Net keywords {"text_embeds": (B, P),
        "time_ids": (B, 6)}. Items already encoded (from the cache) are not encoded again."""
        if self.cache is not None:  # items a DataLoader worker loaded before the cache had them
            items = [{"index": it["index"], **self.cache.load(it["index"])}
                     if "moments" not in it and self.cache.has(it["index"]) else it for it in items]
        names = ("moments", "text", "pooled", "time_ids") if self.sdxl else ("moments", "text")
        entries = [{n: it[n] for n in names} if "moments" in it else None for it in items]
        todo = [k for k, e in enumerate(entries) if e is None]
        if todo:
            # each item alone: the encoders are not batch-invariant (the toy VAE on the CPU: 1.4e-5
            # between an item encoded alone and in a batch of 64), so an item's encoding must not
            # depend on the items beside it. Alone, it is the same whether encoded now, kept in RAM,
            # read from --cache-dir, or re-encoded after a resume (exact resume with the RAM cache).
            with self.timer("vae encode"):
                new_m = torch.cat([self.encode_images(items[k]["pixel_values"][None]) for k in todo])  # (n, 2C, h, w)
            with self.timer("text encoder"):
                new_t = [self.encode_captions([items[k]["caption"]]) for k in todo]  # each {"text": (1, L, D), ...}
            for j, k in enumerate(todo):
                entry = {"moments": new_m[j], **{n: v[0] for n, v in new_t[j].items()}}
                if self.sdxl:
                    entry["time_ids"] = item_time_ids(items[k])
                entries[k] = entry
                if self.cache is not None:
                    self.cache.save(items[k]["index"], **entry)
        moments, text = (torch.stack([e[n].to(self.device) for e in entries]) for n in ("moments", "text"))
        if not self.sdxl:
            return moments, text, None
        added = {"text_embeds": torch.stack([e["pooled"].to(self.device) for e in entries]),
                 "time_ids": torch.stack([e["time_ids"].to(self.device) for e in entries])}
        return moments, text, added


def item_time_ids(item: dict) -> torch.Tensor:
    """An item's SDXL time ids (6,) float32: its own `"time_ids"`, else those of an R x R image, uncropped."""
    if "time_ids" in item:
        return torch.as_tensor(item["time_ids"], dtype=torch.float32)
    r = item["pixel_values"].shape[-1]
    return time_ids((r, r), (0, 0), (r, r))


def fill_cache(dataset: Dataset, encoder: BatchEncoder, batch_size: int, progress: bool = True) -> int:
    """Encode every item of `dataset` not yet in `encoder.cache` (batches of `batch_size`, a
    progress bar); returns how many were encoded. Later runs with the same cache skip the encoders."""
    from tqdm.auto import tqdm

    cache = encoder.cache
    todo = [i for i in range(len(dataset)) if not cache.has(i)]
    bar = tqdm(total=len(todo), disable=not progress, unit="item", desc="cache")
    for start in range(0, len(todo), batch_size):
        chunk = [dataset[i] for i in todo[start:start + batch_size]]
        encoder(chunk)  # saves each new item into the cache
        bar.update(len(chunk))
    bar.close()
    return len(todo)


def sample_latents(moments: torch.Tensor, eps: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """z = (mean + exp(logvar / 2) * eps) * scaling_factor; moments (B, 2C, h, w), eps (B, C, h, w).

    Same as `DiagonalGaussianDistribution.sample()` (logvar clamped to [-30, 20]) with given noise.
    """
    mean, logvar = moments.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return (mean + std * eps.to(mean.device)) * scaling_factor
