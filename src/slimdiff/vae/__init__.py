"""slimdiff.vae: SnapFusion's efficient VAE decoder (METHODS.md section 5).

    from slimdiff.vae import VaePruneConfig, load_vae, prune_decoder, save_vae
    vae = load_vae("toy")                                         # or sd15-arch, a pipeline, a VAE dir
    student, info = prune_decoder(vae, VaePruneConfig(ratio=0.5))  # decoder channels halved
    save_vae(student, "runs/vae-half", recipe=info)

`model`: `SlimAutoencoderKL` (a decoder narrower than the encoder), loading and saving, pipelines
with another VAE; `prune`: uniform channel pruning of the decoder with Torch-Pruning's
dependency graph (the optional extra `slimdiff[vae]`); `distill`: decoder distillation.
"""

from slimdiff.vae.model import (
    BUILTIN_VAE_CONFIGS,
    SlimAutoencoderKL,
    build_builtin_vae,
    decoder_params,
    decoder_widths,
    load_vae,
    pipeline_with_vae,
    save_pipeline_with_vae,
    save_vae,
    vae_dir,
)
from slimdiff.vae.prune import VaePruneConfig, planned_widths, prune_decoder, pruned_width

__all__ = [
    "BUILTIN_VAE_CONFIGS", "SlimAutoencoderKL", "VaePruneConfig", "build_builtin_vae", "decoder_params",
    "decoder_widths", "load_vae", "pipeline_with_vae", "planned_widths", "prune_decoder", "pruned_width",
    "save_pipeline_with_vae", "save_vae", "vae_dir",
]
