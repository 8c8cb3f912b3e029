"""Image-generation metrics: FID, Inception Score, CLIP score, and the toy world's judge-FID.

All take images as anything `slimdiff.eval.images.to_tensor` accepts (PIL images, uint8 arrays,
or float tensors (N, 3, H, W) in [0, 1]). Weights are never downloaded: each real-model metric
takes a local path and raises FileNotFoundError naming it and the file it expects.

    judge_fid(gen, ref, judge)                       # toy world: Fréchet distance on judge features
    fid(gen, ref, inception_weights="pt_inception-2015-12-05-6726825d.pth")
    inception_score(gen, inception_weights=...)      # -> (mean, std) over splits
    clip_score(gen, prompts, clip_dir="clip-vit-large-patch14/")   # mean raw cosine

Fréchet distance (Heusel et al. 2017, eq. 6), computed by torchmetrics' FrechetInceptionDistance:
    d^2 = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))
over features of the generated (g) and reference (r) sets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from slimdiff.eval.images import ImagesLike, to_tensor
from slimdiff.eval.inception import InceptionLogits, load_inception

DEFAULT_BATCH = 32  # images per feature-extractor forward


class FeatureModule(nn.Module):
    """Wraps any object with `features(images) -> (N, D)` (the toy judge) as the nn.Module that
    torchmetrics' FID takes as `feature=`; `num_features` (D) is what torchmetrics reads."""

    def __init__(self, extractor, num_features: int):
        super().__init__()
        self.extractor = extractor
        self.num_features = int(num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor.features(images)  # (N, D)


def _module_device(module) -> torch.device:
    params = module.parameters() if isinstance(module, nn.Module) else iter(())
    p = next(params, None)
    return p.device if p is not None else torch.device("cpu")


def _batches(x: torch.Tensor, batch_size: int):
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


def _check_two(name: str, x: torch.Tensor):
    if x.shape[0] < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per set; the {name} set has {x.shape[0]}")


@torch.no_grad()
def frechet_distance(
    gen_images: ImagesLike,
    ref_images: ImagesLike,
    feature_module: nn.Module,
    batch_size: int = DEFAULT_BATCH,
) -> float:
    """Fréchet distance between the feature distributions of two image sets.

    `feature_module`: an nn.Module mapping float images (N, 3, H, W) in [0, 1] to (N, D)
    features, or any object with a `features(images)` method (wrapped in FeatureModule).
    Images are fed at their own size: resize beforehand if the extractor needs a fixed one.
    """
    gen, ref = to_tensor(gen_images), to_tensor(ref_images)
    _check_two("generated", gen)
    _check_two("reference", ref)
    device = _module_device(feature_module)
    # 1. the feature dimension D, from one forward on two reference images
    if not isinstance(feature_module, nn.Module) or (
        callable(getattr(feature_module, "features", None)) and not isinstance(feature_module.features, nn.Module)
    ):
        num = feature_module.features(ref[:2].to(device)).shape[-1]
        feature_module = FeatureModule(feature_module, num)
    if not hasattr(feature_module, "num_features"):
        feature_module.num_features = int(feature_module(ref[:2].to(device)).shape[-1])
    # 2. accumulate sums and second moments of both sets in torchmetrics (float64 states)
    metric = FrechetInceptionDistance(feature=feature_module, normalize=True).to(device)
    for batch in _batches(ref, batch_size):
        metric.update(batch.to(device), real=True)
    for batch in _batches(gen, batch_size):
        metric.update(batch.to(device), real=False)
    return float(metric.compute().item())


def judge_fid(
    gen_images: ImagesLike, ref_images: ImagesLike, feature_module, batch_size: int = DEFAULT_BATCH
) -> float:
    """The toy world's FID analogue: Fréchet distance on the judge's features.

    `feature_module`: the judge (`slimdiff.toy.judge.load_judge()`, whose `features(images)`
    gives (N, D)) or any feature nn.Module. Images float in [0, 1] at the judge's resolution.
    """
    return frechet_distance(gen_images, ref_images, feature_module, batch_size=batch_size)


def fid(
    gen_images: ImagesLike,
    ref_images: ImagesLike,
    inception_weights: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
) -> float:
    """FID with pytorch-fid's Inception-v3 (pool3, 2048 features) loaded from a local file."""
    net = load_inception(inception_weights, device=device)
    return frechet_distance(gen_images, ref_images, net, batch_size=batch_size)


@torch.no_grad()
def inception_score(
    gen_images: ImagesLike,
    inception_weights: str | os.PathLike,
    splits: int = 10,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over `splits`.

    Uses the 1008 unbiased logits of the FID Inception (as torch-fidelity). torchmetrics shuffles
    the images before splitting; the shuffle is seeded by `seed` so the score is reproducible.
    """
    gen = to_tensor(gen_images)
    if gen.shape[0] < splits:
        raise ValueError(f"inception_score needs at least splits={splits} images, got {gen.shape[0]}")
    net = load_inception(inception_weights, device=device)
    metric = InceptionScore(feature=InceptionLogits(net), splits=splits, normalize=False).to(device)
    for batch in _batches(gen, batch_size):
        metric.update(batch.to(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean.item()), float(std.item())


CLIP_FILES = (
    "config.json, model.safetensors (or pytorch_model.bin), the image processor config "
    "(preprocessor_config.json or processor_config.json) and the tokenizer files"
)


def resolve_clip_dir(clip_dir: str | os.PathLike) -> Path:
    """The CLIP directory; FileNotFoundError naming it and the files expected when absent."""
    path = Path(clip_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"CLIP directory not found or incomplete: {path} (no config.json). clip_score needs a local "
            f"transformers CLIP directory with {CLIP_FILES}, e.g. a download of openai/clip-vit-large-patch14 "
            f"or laion/CLIP-ViT-g-14-laion2B-s12B-b42K; pass it with --clip-dir DIR."
        )
    return path


def load_clip(clip_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """(CLIPModel, CLIPProcessor) from a local transformers directory; never downloads."""
    from transformers import CLIPModel, CLIPProcessor

    path = resolve_clip_dir(clip_dir)
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(f"could not load CLIP from {path}: it needs {CLIP_FILES} ({e})") from e
    return model.to(device).eval(), processor


def _embedding(out) -> torch.Tensor:
    # transformers < 5 returns the projected embedding; >= 5 an output whose pooler_output is it
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_score(
    images: ImagesLike,
    prompts: Sequence[str],
    clip_dir: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
) -> float:
    """Mean raw cosine similarity between CLIP image and text embeddings (METHODS.md section 7).

    (torchmetrics' CLIPScore reports 100 x the same cosine, clipped at 0; it is not used because it
    accepts only hub names, and transformers >= 5 changed the return type it relies on.)
    """
    x = to_tensor(images)
    prompts = list(prompts)
    if len(prompts) != x.shape[0]:
        raise ValueError(f"clip_score needs one prompt per image: {x.shape[0]} images, {len(prompts)} prompts")
    model, processor = load_clip(clip_dir, device=device)
    max_len = model.config.text_config.max_position_embeddings
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        # the processor resizes / crops / normalises uint8 images itself
        pix = [(im * 255).round().to(torch.uint8) for im in x[i : i + batch_size]]
        img_in = processor(images=pix, return_tensors="pt")
        txt_in = processor(
            text=prompts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_len
        )
        img = _embedding(model.get_image_features(pixel_values=img_in["pixel_values"].to(device)))  # (B, E)
        txt = _embedding(
            model.get_text_features(
                input_ids=txt_in["input_ids"].to(device), attention_mask=txt_in["attention_mask"].to(device)
            )
        )  # (B, E)
        total += torch.nn.functional.cosine_similarity(img, txt, dim=-1).sum().item()
    return total / x.shape[0]
