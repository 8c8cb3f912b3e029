"""The recipe that trains the toy pipeline and its judge, reproducibly from a seed.

    slimdiff toy train --out runs/toy-train --stage all       # vae -> latents -> unet -> judge
    slimdiff toy train --out runs/toy-train --stage unet --resume

Stages (each writes into `--out`, each resumable from its last checkpoint):
1. `vae`: a small KL autoencoder on rendered images (MSE + 1e-6 KL, as SD's), then its
   `scaling_factor` = 1 / std of the latents, and a cache of encoded training latents
   (`latents.pt`: latent means (N, 4, 8, 8) and token ids (N, 16) of the train split).
2. `unet`: the teacher U-Net (SD-1.5 block topology) and the text encoder, jointly, with the
   epsilon loss (Ho et al. 2020, eq. 14) weighted by Min-SNR-5 (Hang et al. 2023, eq. 9),
   10% caption dropout for classifier-free guidance, AdamW, EMA of both; the EMA weights go
   into the exported pipeline (`pipeline/`).
3. `judge`: the attribute classifier (`slimdiff.toy.judge`) on rendered images of every split,
   degraded at random (blur, resample, noise: `judge_degrade`) so that softness is not misread.
Every setting is in `ToyTrainConfig`, written to `recipe.json` in `--out` and in the pipeline.

The SDXL toy world (`topology="sdxl"`, the settings `TOY_XL`; issue 23 item 5, not shipped yet):
the `unet` stage trains a U-Net of SDXL-base's topology (`components.sdxl_unet_config`) with two text
encoders, reading both encoders' penultimate hidden states concatenated, the second's pooled
projection and the time ids of a 64 x 64 render (uncropped), and exports a `StableDiffusionXLPipeline`.
It reuses a VAE and latent cache: copy the toy's `vae/` into `--out` and run `encode_latents`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from slimdiff.data.common import time_ids
from slimdiff.eval.toy import pca_basis
from slimdiff.io import atomic_path, read_json, to_jsonable, write_json
from slimdiff.toy import JUDGES, components, world
from slimdiff.toy.degrade import DegradeConfig, random_degrade
from slimdiff.toy.judge import Judge, augment, load_judge, save_judge
from slimdiff.toy.tokenizer import build_tokenizer
from slimdiff.train.ema import EMA  # the project's one EMA (used plain here: no warm-up of the decay)

STAGES = ("vae", "unet", "judge", "all")
TOPOLOGIES = ("sd15", "sdxl")


@dataclasses.dataclass
class ToyTrainConfig:
    seed: int = 0  # every random draw (weights, scenes, noise) derives from this
    threads: int = 1  # torch.set_num_threads; 1 beats 2 on 2 cores shared with other jobs
    # -- VAE: 64x64x3 images <-> 8x8x4 latents (4 widths = 3 halvings: SD's 8x factor)
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    vae_groups: int = 8  # GroupNorm groups (8 leaves room for 50% channel pruning of the decoder)
    # 1500 steps gave PSNR 30 dB but turned small crosses into diamonds (the judge read 55% of VAE
    # reconstructions all-correct): 4000 steps with an edge term. The shipped VAE ran 1500 steps
    # without the edge term, then resumed to 4000 with it (a warm restart of the cosine schedule).
    vae_steps: int = 4000  # ~0.6 s a step on two cores
    vae_batch: int = 16
    vae_edge_weight: float = 1.0  # L1 of image gradients (see _edge_loss); 0 disables
    vae_lr: float = 1e-3  # AdamW, cosine-decayed to 10%
    vae_kl_weight: float = 1e-6  # SD's KL-f8 uses ~1e-6: a nearly deterministic latent
    num_latents: int = 40_000  # training scenes encoded once and cached (latents.pt)
    # -- text encoder (tiny CLIPTextModel); its width is the U-Net's cross_attention_dim
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    # -- U-Net: "sd15" SD-1.5's block topology (the shipped toy) | "sdxl" SDXL-base's (two text encoders)
    topology: str = "sd15"
    unet_depths: tuple[int, ...] = (1, 2, 10)  # sdxl: Transformer depths per level (SDXL-base's)
    time_embed_dim: int = 8  # sdxl: sinusoid width per time id (SDXL: 256)
    unet_channels: tuple[int, ...] = (32, 64, 96, 96)
    unet_heads: int = 4  # diffusers' `attention_head_dim` (heads per attention)
    unet_groups: int = 16  # GroupNorm groups
    unet_steps: int = 4000  # 48 min at ~1.4 it/s on one shared core; validation all-correct 0.84 (EMA)
    unet_batch: int = 64
    unet_lr: float = 8e-4  # AdamW (v1 used 3e-4 over 8000 steps; v2 has ~4000 steps on 2 shared cores);
    # linear warm-up, then constant (the EMA does the averaging),
    # so a run stopped at step K equals a run with unet_steps=K
    warmup_steps: int = 200
    weight_decay: float = 0.01
    caption_dropout: float = 0.1  # share of empty prompts, for classifier-free guidance
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (0 disables)
    ema_decay: float = 0.999  # EMA of U-Net and text encoder weights
    grad_clip: float = 1.0
    checkpoint_every: int = 500  # steps between resumable checkpoints
    # -- judge
    judge_steps: int = 2500  # ~10 min on one shared core; 99.99% on rendered test images
    judge_batch: int = 64
    judge_pool: int = 40_000  # rendered scenes of every split, re-augmented each time they are drawn
    judge_lr: float = 2e-3
    judge_blob_share: float = 0.12  # pool share with objects painted as blobs (shape 'blob')
    judge_clutter_share: float = 0.06  # pool share with 4-5 objects (count '4+')
    judge_empty_share: float = 0.03  # pool share of empty canvases (count '0')
    judge_pca_scenes: int = 4096  # rendered train scenes judge-FID's fixed 16-dim PCA is fitted on
    # random blur / resample / noise before the mild `augment` (toy.degrade.random_degrade), so that
    # softness is not read as wrong attributes (issue 20); judge v2 trained with p = 0, v3 with these
    judge_degrade: DegradeConfig = dataclasses.field(default_factory=DegradeConfig)
    # None: random init; else the judge (a version in slimdiff.toy.JUDGES, or a directory) whose weights
    # the judge stage fine-tunes. The shipped v3 is v2 fine-tuned (its recipe.json: 200 steps at 1e-3)
    judge_init: str | None = None

    def __post_init__(self):
        self.vae_channels, self.unet_channels = tuple(self.vae_channels), tuple(self.unet_channels)
        self.unet_depths = tuple(self.unet_depths)
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {list(TOPOLOGIES)}, got {self.topology!r}")
        if isinstance(self.judge_degrade, dict):  # read back from recipe.json
            self.judge_degrade = DegradeConfig(**self.judge_degrade)
        positive = ["threads", "vae_groups", "vae_steps", "vae_batch", "num_latents", "text_hidden", "text_layers",
                    "text_heads", "unet_heads", "unet_groups", "unet_steps", "unet_batch",
                    "checkpoint_every", "judge_steps", "judge_batch", "judge_pool", "judge_pca_scenes"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden={self.text_hidden} is not divisible by text_heads={self.text_heads}")
        if len(self.vae_channels) < 2:
            raise ValueError(f"vae_channels needs >= 2 widths, got {self.vae_channels}")
        _unet_config(self)  # checks the widths

    @property
    def latent_size(self) -> int:
        return world.IMAGE_SIZE >> (len(self.vae_channels) - 1)


# the SDXL toy world's settings (issue 23 item 5): SDXL-base's topology (Transformer depths 2 and 10,
# 10 in the mid block: every SDXL preset's unit names apply) at the toy's widths, two 64-wide text
# encoders; a checkpoint every 250 steps, so that a locked chunk of under 20 minutes keeps its work
TOY_XL = dict(topology="sdxl", unet_channels=(32, 64, 96), unet_heads=4, unet_groups=16, unet_depths=(1, 2, 10),
              checkpoint_every=250)


# ---------------------------------------------------------------------------------------------
# helpers


def _lr_lambda(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine from 1 to 0.1 (a multiplier of the peak rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _edge_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of (B, 3, H, W) images: keeps
    shape outlines (corners, thin cross bars) sharp, which MSE on flat-colour images lets blur."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(rec), dx(x)) + F.l1_loss(dy(rec), dy(x))


def _load_ckpt(path: Path) -> dict:
    """A recipe checkpoint, loaded without unpickling code (`weights_only`); a damaged or foreign
    file is a ValueError naming it."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for truncated / pickled files
        raise ValueError(f"{path} is not a readable slimdiff toy checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); delete it to start that stage over") from None


def _save_ckpt(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _images(scenes) -> torch.Tensor:
    """Rendered scenes as float (N, 3, 64, 64) in [-1, 1] (the VAE's range)."""
    return world.to_tensor(world.render_batch(scenes)) * 2 - 1


def _build_vae(cfg: ToyTrainConfig):
    return components.build_vae(cfg.vae_channels, norm_num_groups=cfg.vae_groups, sample_size=world.IMAGE_SIZE, seed=cfg.seed)


def _build_text_encoders(cfg: ToyTrainConfig) -> dict:
    """{"text": the text encoder} (sdxl: and "text_2", the second, with its pooled projection)."""
    def build(k):
        return components.build_text_encoder(cfg.text_hidden, cfg.text_layers, cfg.text_heads, 4 * cfg.text_hidden,
                                             seed=cfg.seed + 1 + 10 * k, with_projection=k == 1)

    return {"text": build(0), "text_2": build(1)} if cfg.topology == "sdxl" else {"text": build(0)}


def _unet_config(cfg: ToyTrainConfig) -> dict:
    if cfg.topology == "sdxl":
        return components.sdxl_unet_config(cfg.unet_channels, 2 * cfg.text_hidden, cfg.text_hidden, cfg.unet_heads,
                                           cfg.unet_groups, cfg.latent_size, cfg.unet_depths, cfg.time_embed_dim)
    return components.unet_config(cfg.unet_channels, cfg.text_hidden, cfg.unet_heads, cfg.unet_groups,
                                  cfg.latent_size)


def _build_unet(cfg: ToyTrainConfig):
    return components.build_unet(_unet_config(cfg), seed=cfg.seed + 2)


def _condition(encoders: dict, tok: torch.Tensor) -> dict:
    """The U-Net's text keywords for token ids (B, 16): the encoder's last hidden states (B, 16, D); sdxl,
    as `StableDiffusionXLPipeline.encode_prompt`: both encoders' penultimate states (B, 16, 2D), the second's
    pooled projection (B, D) and the time ids of a 64 x 64 render, uncropped (B, 6)."""
    if "text_2" not in encoders:
        return {"encoder_hidden_states": encoders["text"](tok).last_hidden_state}
    first, second = (encoders[k](tok, output_hidden_states=True) for k in ("text", "text_2"))
    size = (world.IMAGE_SIZE, world.IMAGE_SIZE)
    return {"encoder_hidden_states": torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1),
            "added_cond_kwargs": {"text_embeds": second.text_embeds,
                                  "time_ids": time_ids(size, (0, 0), size)[None].expand(len(tok), -1)}}


# ---------------------------------------------------------------------------------------------
# stage 1: VAE and latent cache


def train_vae(cfg: ToyTrainConfig, out: Path, resume: bool = False):
    """Train the VAE (checkpoint `vae.ckpt`), save it to `out/vae/`, cache `out/latents.pt`."""
    torch.manual_seed(cfg.seed)
    vae = _build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_lambda(s, cfg.vae_steps, 50))
    step, ckpt = 0, out / "vae.ckpt"
    if resume and ckpt.exists():
        state = _load_ckpt(ckpt)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        step = state["step"]
    vae.train()
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae", dynamic_ncols=True)
    while step < cfg.vae_steps:
        # 1. a fresh batch of scenes from the whole world (the VAE must encode every combination)
        x = _images(world.sample_scenes("all", cfg.vae_batch, seed=cfg.seed * 1_000_003 + step))  # (B, 3, 64, 64)
        # 2. reconstruction + KL (SD's first-stage loss without its GAN and LPIPS terms)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.vae_edge_weight * _edge_loss(rec, x)
                + cfg.vae_kl_weight * post.kl().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        step += 1
        bar.update(1), bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            _save_ckpt(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step})
    bar.close()
    vae.eval()

    # 3. scaling factor = 1 / std of latent means, measured on validation scenes (SD: 0.18215)
    with torch.no_grad():
        x = _images(world.sample_scenes("validation", 512, seed=cfg.seed))
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        psnr = 10 * math.log10(4.0 / F.mse_loss(rec, x).item())  # range [-1, 1] -> peak^2 = 4
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(out / "vae", safe_serialization=True)
    print(f"vae: validation PSNR {psnr:.1f} dB, scaling_factor {vae.config.scaling_factor:.4f}")
    write_json(out / "vae_metrics.json", {"psnr_db": psnr, "scaling_factor": vae.config.scaling_factor})
    encode_latents(cfg, out, vae)
    return vae


@torch.no_grad()
def encode_latents(cfg: ToyTrainConfig, out: Path, vae=None, chunk: int = 512) -> Path:
    """Encode `num_latents` train scenes once: `out/latents.pt` = {latents (N,4,8,8), ids (N,16)}."""
    from diffusers import AutoencoderKL

    vae = vae if vae is not None else AutoencoderKL.from_pretrained(out / "vae")
    vae.eval()
    tok = build_tokenizer()
    scenes = world.sample_scenes("train", cfg.num_latents, seed=cfg.seed + 12345)
    latents, ids = [], []
    for i in tqdm(range(0, len(scenes), chunk), desc="encode latents", dynamic_ncols=True):
        part = scenes[i : i + chunk]
        latents.append(vae.encode(_images(part)).latent_dist.mean.half())  # (chunk, 4, 8, 8)
        ids.append(tok([world.caption(s) for s in part], padding="max_length", truncation=True,
                       return_tensors="pt").input_ids)
    path = out / "latents.pt"
    _save_ckpt(path, {"latents": torch.cat(latents), "ids": torch.cat(ids)})
    return path


# ---------------------------------------------------------------------------------------------
# stage 2: U-Net + text encoder


def _named_ema(ema, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The EMA's shadow weights by parameter name (the checkpoint and export format)."""
    return dict(zip((k for k, _ in model.named_parameters()), ema.shadow))


def train_unet(cfg: ToyTrainConfig, out: Path, resume: bool = False) -> Path:
    """Train U-Net + text encoder on the cached latents; export the EMA pipeline to `out/pipeline`."""
    from diffusers import AutoencoderKL

    data = _load_ckpt(out / "latents.pt")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    latents = data["latents"].float() * vae.config.scaling_factor  # (N, 4, 8, 8), ~unit std
    ids = data["ids"]  # (N, 16)
    empty_ids = build_tokenizer()("", padding="max_length", return_tensors="pt").input_ids  # (1, 16)

    # 1. models, optimiser, EMA, noise schedule
    models = {"unet": _build_unet(cfg), **_build_text_encoders(cfg)}  # sdxl: two text encoders
    unet, encoders = models["unet"], {k: m for k, m in models.items() if k != "unet"}
    params = [q for m in models.values() for q in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))

    ema = {k: EMA(m.parameters(), cfg.ema_decay, warmup=False) for k, m in models.items()}
    noise_sched = components.train_scheduler()
    alphas_cumprod = noise_sched.alphas_cumprod  # (1000,)
    snr = alphas_cumprod / (1 - alphas_cumprod)  # SNR(t) = alpha_bar / (1 - alpha_bar)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    step, ckpt = 0, out / "unet.ckpt"
    if resume and ckpt.exists():
        state = _load_ckpt(ckpt)
        for key, model in models.items():
            model.load_state_dict(state[key])
            ema[key].shadow = [state["ema"][key][k].float() for k, _ in model.named_parameters()]
        opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        step = state["step"]
        gen.set_state(state["gen"])
        print(f"unet: resumed from {ckpt} at step {step}")
    for m in models.values():
        m.train()

    bar = tqdm(total=cfg.unet_steps, initial=step, desc="unet", dynamic_ncols=True)
    t_start, avg = time.time(), None
    while step < cfg.unet_steps:
        # 2. a batch: latents x0 (B, 4, 8, 8), token ids (B, 16) with caption dropout
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        x0, tok = latents[idx], ids[idx].clone()
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
        tok[drop] = empty_ids
        # 3. forward diffusion x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (DDPM eq. 4)
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        xt = noise_sched.add_noise(x0, eps, t)
        # 4. predict eps; loss weighted per sample by min(SNR, gamma) / SNR (Min-SNR, eq. 9)
        pred = unet(xt, t, **_condition(encoders, tok)).sample  # text (B, 16, text_hidden; sdxl: 2 x, + added)
        per_sample = F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma > 0:
            per_sample = per_sample * (snr[t].clamp(max=cfg.min_snr_gamma) / snr[t])
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step(), sched.step()
        for key, model in models.items():
            ema[key].update(model.parameters())
        step += 1
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        bar.update(1), bar.set_postfix(loss=f"{avg:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            _save_ckpt(ckpt, {**{k: m.state_dict() for k, m in models.items()}, "opt": opt.state_dict(),
                              "sched": sched.state_dict(), "step": step,
                              "ema": {k: _named_ema(ema[k], m) for k, m in models.items()}, "gen": gen.get_state(),
                              "recipe": dataclasses.asdict(cfg)})
            bar.write(f"step {step}: loss {avg:.4f}, {(time.time() - t_start) / 60:.1f} min this run")
    bar.close()
    return export_pipeline(cfg, out)


def export_pipeline(cfg: ToyTrainConfig, out: Path, dest: Path | None = None) -> Path:
    """Write the EMA weights of `out/unet.ckpt` with `out/vae` as a diffusers pipeline directory."""
    from diffusers import AutoencoderKL

    state = _load_ckpt(out / "unet.ckpt")
    models = {"unet": _build_unet(cfg), **_build_text_encoders(cfg)}
    for key, model in models.items():
        model.load_state_dict({**model.state_dict(), **state["ema"][key]})
        model.eval()
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    if cfg.topology == "sdxl":
        pipe = components.assemble_xl_pipeline(models["unet"], vae, models["text"], models["text_2"])
    else:
        pipe = components.assemble_pipeline(models["unet"], vae, models["text"])
    dest = dest or out / "pipeline"
    components.save_pipeline(pipe, dest)
    write_json(dest / "recipe.json", {"recipe": cfg, "unet_step": state["step"]})
    return dest


# ---------------------------------------------------------------------------------------------
# stage 3: judge


def _judge_pool(cfg: ToyTrainConfig, out: Path, resume: bool) -> tuple[list, torch.Tensor]:
    """The judge's fixed pool: scenes of every split, and the judge-only cases that teach it to see
    broken generations (objects painted as blobs, more objects than the world has, empty canvases),
    with their renders (P, 64, 64, 3) uint8. Rendering 40K scenes takes minutes: the renders are kept
    in `out/judge_pool.pt`, which a resumed run reuses when its settings match."""
    pool_rng = np.random.default_rng(cfg.seed + 778)
    pool = world.sample_scenes("all", cfg.judge_pool, seed=cfg.seed + 777)
    for i in range(len(pool)):
        u = pool_rng.random()
        if u < cfg.judge_blob_share:
            pool[i] = world.with_blobs(pool[i], pool_rng)
        elif u < cfg.judge_blob_share + cfg.judge_clutter_share:
            pool[i] = world.clutter_scene(pool_rng)
        elif u < cfg.judge_blob_share + cfg.judge_clutter_share + cfg.judge_empty_share:
            pool[i] = world.EMPTY_SCENE
    key = [cfg.seed, cfg.judge_pool, cfg.judge_blob_share, cfg.judge_clutter_share, cfg.judge_empty_share]
    cache = out / "judge_pool.pt"
    if resume and cache.exists():
        state = _load_ckpt(cache)
        if state["key"] == key:
            return pool, state["images"]
    images = torch.from_numpy(world.render_batch(pool))  # (P, 64, 64, 3) uint8
    _save_ckpt(cache, {"key": key, "images": images})
    return pool, images


def train_judge(cfg: ToyTrainConfig, out: Path, resume: bool = False) -> Path:
    """Train the judge on augmented renders of every split; save `out/judge/`."""

    torch.manual_seed(cfg.seed + 4)
    judge = Judge()
    if cfg.judge_init is not None:  # fine-tune a judge (e.g. the shipped v2) rather than start from random weights
        start = load_judge(version=cfg.judge_init) if cfg.judge_init in JUDGES else load_judge(cfg.judge_init)
        judge.load_state_dict(start.state_dict())
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.judge_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_lambda(s, cfg.judge_steps, 100))
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    step, ckpt = 0, out / "judge.ckpt"
    if resume and ckpt.exists():
        state = _load_ckpt(ckpt)
        judge.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]), gen.set_state(state["gen"])
        step = state["step"]
    judge.train()
    # 1. a fixed pool of rendered scenes (rendering costs more than a judge step; `_judge_pool`)
    pool, pool_images = _judge_pool(cfg, out, resume)
    bar = tqdm(total=cfg.judge_steps, initial=step, desc="judge", dynamic_ncols=True)
    while step < cfg.judge_steps:
        # 2. a batch, freshly degraded, then mildly corrupted: (B, 3, 64, 64) in [0, 1]
        idx = torch.randint(0, len(pool), (cfg.judge_batch,), generator=gen)
        scenes = [pool[i] for i in idx.tolist()]
        x = random_degrade(pool_images[idx].permute(0, 3, 1, 2).float() / 255, gen, cfg.judge_degrade)
        x = augment(x, gen)
        loss = judge.loss(x, scenes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        step += 1
        bar.update(1), bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.judge_steps:
            _save_ckpt(ckpt, {"model": judge.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                              "gen": gen.get_state(), "step": step})
    bar.close()
    judge.eval()

    pca_basis(judge, n=cfg.judge_pca_scenes)  # judge-FID's fixed 16-dim PCA of rendered train scenes, saved beside the weights
    dest = save_judge(judge, out / "judge")
    write_json(dest / "recipe.json", {"recipe": cfg, "judge_step": step})
    return dest


def run(cfg: ToyTrainConfig, out: str | Path, stage: str = "all", resume: bool = False) -> None:
    """Run `stage` ('vae', 'unet', 'judge' or 'all') of the recipe into `out`."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {list(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    recipe = out / "recipe.json"
    if resume and recipe.exists() and read_json(recipe) != to_jsonable(cfg):
        print(f"note: settings differ from the saved {recipe}; continuing with the new ones")
    write_json(recipe, cfg)
    if stage in ("vae", "all"):
        train_vae(cfg, out, resume)
    if stage in ("unet", "all"):
        train_unet(cfg, out, resume)
    if stage in ("judge", "all"):
        train_judge(cfg, out, resume)
