"""`SlimAutoencoderKL`: an `AutoencoderKL` whose decoder may be narrower than its encoder.

A diffusers `AutoencoderKL` has one `block_out_channels` for encoder and decoder, so a VAE
whose decoder alone was channel-pruned (SnapFusion's efficient decoder, METHODS.md section 5)
is not expressible as one. This subclass adds one config entry, `decoder_block_out_channels`;
everything else (encode, decode, tiling, slicing, `save_pretrained` / `from_pretrained`) is
diffusers' own, and it can be the `vae` of a `StableDiffusionPipeline` (model_index.json names
it `["slimdiff", "SlimAutoencoderKL"]`).

    vae = load_vae("runs/vae-half")            # a prune-vae / distill-vae output, a pipeline, toy, sd15-arch
    save_vae(vae, "out/vae", recipe={...})     # plain AutoencoderKL when the widths agree
    pipe = pipeline_with_vae(pipe, vae)        # a new pipeline object; `pipe` is left alone
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder

from slimdiff.io import read_json, write_json
from slimdiff.unet.io import resolve_source, save_pipeline_with, write_dir  # atomic per file

# SD-1.5's VAE (runwayml/stable-diffusion-v1-5 vae/config.json; SD-2.1 uses the same one):
# 512x512x3 <-> 64x64x4, decoder 49.5M parameters.
SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
# built-in name -> AutoencoderKL config (random weights: structure and speed work only)
BUILTIN_VAE_CONFIGS = {"sd15-arch": SD15_VAE_CONFIG, "sd21-arch": SD15_VAE_CONFIG}
DIFFUSERS_VAE = ["diffusers", "AutoencoderKL"]
SLIM_VAE = ["slimdiff", "SlimAutoencoderKL"]


class SlimAutoencoderKL(AutoencoderKL):
    """`AutoencoderKL` with its own decoder widths (`decoder_block_out_channels`, same length as
    `block_out_channels`; None: the encoder's). The encoder, quant convs and latent space are
    unchanged, so latents of the original VAE decode with it as they are."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        decoder_block_out_channels: tuple[int, ...] | None = None,
    ):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            act_fn=act_fn, latent_channels=latent_channels, norm_num_groups=norm_num_groups,
            sample_size=sample_size, scaling_factor=scaling_factor, shift_factor=shift_factor,
            latents_mean=latents_mean, latents_std=latents_std, force_upcast=force_upcast,
            use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if decoder_block_out_channels is not None:
            widths = tuple(decoder_block_out_channels)
            bad = [c for c in widths if c < norm_num_groups or c % norm_num_groups]
            if len(widths) != len(block_out_channels) or bad:
                raise ValueError(f"decoder_block_out_channels={widths}: needs {len(block_out_channels)} widths, "
                                 f"each a positive multiple of norm_num_groups={norm_num_groups}")
            # the same Decoder diffusers builds, at the decoder's own widths
            self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                                   up_block_types=up_block_types, block_out_channels=widths,
                                   layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                                   act_fn=act_fn, mid_block_add_attention=mid_block_add_attention)


def decoder_widths(vae: AutoencoderKL) -> tuple[int, ...]:
    """The decoder's `block_out_channels` (the encoder's for a plain AutoencoderKL)."""
    return tuple(getattr(vae.config, "decoder_block_out_channels", None) or vae.config.block_out_channels)


def decoder_params(vae: AutoencoderKL) -> int:
    """Parameters (elements) of what decoding runs: post_quant_conv + decoder."""
    mods = [vae.decoder] + ([vae.post_quant_conv] if vae.post_quant_conv is not None else [])
    return sum(p.numel() for m in mods for p in m.parameters())


def moved_like(module: torch.nn.Module, other: torch.nn.Module) -> torch.nn.Module:
    """`module` moved to `other`'s device and dtype (no cast when the dtype already agrees)."""
    ref = next(other.parameters())
    module = module.to(ref.device)
    return module if next(module.parameters()).dtype == ref.dtype else module.to(ref.dtype)


def build_builtin_vae(name: str, seed: int = 0) -> AutoencoderKL:
    """A plain `AutoencoderKL` with a built-in config and seeded random weights."""
    if name not in BUILTIN_VAE_CONFIGS:
        raise ValueError(f"unknown built-in VAE {name!r}; valid: {sorted(BUILTIN_VAE_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        vae = AutoencoderKL(**BUILTIN_VAE_CONFIGS[name])
    return vae.eval()


# ---------------------------------------------------------------------------------- loading


def _load_vae_dir(path: Path) -> AutoencoderKL:
    classes = {"AutoencoderKL": AutoencoderKL, "SlimAutoencoderKL": SlimAutoencoderKL}
    cls_name = read_json(path / "config.json").get("_class_name")
    if cls_name not in classes:
        raise ValueError(f"{path}/config.json has _class_name={cls_name!r}; a VAE is one of {list(classes)}")
    return classes[cls_name].from_pretrained(path)


def vae_dir(name_or_path: str | os.PathLike) -> Path | None:
    """Where the VAE of a model argument is stored (None for a built-in name).

    `toy` and pipeline directories: their `vae/`; a prune-vae / distill-vae output or a VAE
    directory: itself. Raises ValueError / FileNotFoundError naming the argument otherwise.
    """
    name = str(name_or_path)
    if name in BUILTIN_VAE_CONFIGS:
        return None

    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        if read_json(path / "config.json").get("_class_name") not in ("AutoencoderKL", "SlimAutoencoderKL"):
            raise ValueError(f"{path} holds a {read_json(path / 'config.json').get('_class_name')}, not a VAE "
                             "(give a pipeline, a VAE directory or a prune-vae output)")
        return path
    kind, source = resolve_source(name)
    if kind != "pipeline":
        raise ValueError(f"{name!r} has no VAE: give a pipeline directory, 'toy', a VAE directory or one of "
                         f"{sorted(BUILTIN_VAE_CONFIGS)}")
    index = read_json(source / "model_index.json")
    if not (index.get("vae") or [None])[0] or not (source / "vae" / "config.json").is_file():
        raise ValueError(f"the pipeline {name!r} has no VAE (model_index.json 'vae' is {index.get('vae')}, "
                         f"or {source / 'vae'} is missing)")
    return source / "vae"


def load_vae(name_or_path: str | os.PathLike) -> AutoencoderKL:
    """An `AutoencoderKL` or `SlimAutoencoderKL` in eval mode, from anything `vae_dir` accepts
    (`sd15-arch` / `sd21-arch`: SD's VAE config with random weights, seeded with 0)."""
    path = vae_dir(name_or_path)
    if path is None:
        return build_builtin_vae(str(name_or_path))
    return _load_vae_dir(path).eval()


def save_vae(vae: AutoencoderKL, path: str | os.PathLike, recipe: dict | None = None) -> list[str]:
    """Save `vae` (safetensors) and `recipe.json` to `path`; returns its `[library, class]`.

    A `SlimAutoencoderKL` whose decoder has the encoder's widths is saved as a plain
    `AutoencoderKL` (loadable without slimdiff)."""

    path = Path(path)
    if isinstance(vae, SlimAutoencoderKL) and decoder_widths(vae) == tuple(vae.config.block_out_channels):
        keep = {k: v for k, v in vae.config.items() if not k.startswith("_") and k != "decoder_block_out_channels"}
        plain = AutoencoderKL(**keep)
        plain.load_state_dict(vae.state_dict())
        vae = plain
    kind = SLIM_VAE if isinstance(vae, SlimAutoencoderKL) else DIFFUSERS_VAE
    write_dir(path, lambda tmp: vae.save_pretrained(tmp, safe_serialization=True))
    if recipe is not None:
        write_json(path / "recipe.json", {**recipe, "vae_class": kind})
    return kind


# ---------------------------------------------------------------------------------- pipelines


LATENT_SPACE_KEYS = ("latent_channels", "scaling_factor", "shift_factor")  # what a latent means to a VAE


def check_same_latent_space(vae_config: Any, other_config: Any, what: str, name: str = "the VAE") -> None:
    """ValueError unless a VAE reads the latents of `what` (e.g. "the pipeline's VAE"): the same
    `latent_channels`, `scaling_factor` and `shift_factor` (z = (mean - shift) * scaling_factor;
    a VAE of scaling factor 0.18215 against the toy's 0.923 would decode latents 5x too large)."""
    get = lambda cfg, k: cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None)  # noqa: E731
    for key in LATENT_SPACE_KEYS:
        mine, theirs = get(vae_config, key), get(other_config, key)
        if key == "shift_factor" and not mine and not theirs:
            continue  # None and 0 are the same (no shift)
        if mine != theirs:
            raise ValueError(f"{name} has {key}={mine}, {what} has {theirs}: another latent space (it cannot "
                             f"decode these latents; valid: a VAE with {key}={theirs})")


def pipeline_with_vae(pipe: Any, vae: AutoencoderKL | str | os.PathLike):
    """A new pipeline of `pipe`'s class with the same components but `vae` (a module or anything
    `load_vae` accepts); `pipe` itself is not changed."""
    if not isinstance(vae, torch.nn.Module):
        vae = load_vae(vae)
    if "vae" not in getattr(pipe, "components", {}):
        raise ValueError(f"{type(pipe).__name__} has no 'vae' component to replace")
    old = pipe.vae
    if old is not None:
        check_same_latent_space(vae.config, old.config, "the pipeline's VAE")
    if old is not None:
        vae = moved_like(vae, old)
    return type(pipe)(**{**pipe.components, "vae": vae})


def save_pipeline_with_vae(source: str | os.PathLike, vae: AutoencoderKL, out: str | os.PathLike) -> Path:
    """Write the pipeline `source` (toy or a directory) with `vae` in place of its own to `out`
    (every other component copied: `slimdiff.unet.io.save_pipeline_with`)."""
    _, src = resolve_source(source)
    own = src / "vae" / "config.json" if src is not None else None
    if own is not None and own.is_file():
        check_same_latent_space(vae.config, read_json(own), "the pipeline's VAE")
    return save_pipeline_with(source, out, {"vae": lambda dest: save_vae(vae, dest)})
