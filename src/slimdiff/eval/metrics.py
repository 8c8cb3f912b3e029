"""Image-generation metrics: FID, Inception Score, CLIP score, and the toy world's judge-FID.

Images are anything `slimdiff.report.images.to_tensor` accepts (PIL images, uint8 arrays, float
tensors (N, 3, H, W) in [0, 1]) or, for FID and IS, a folder (streamed from disk). Weights are
never downloaded: each real-model metric takes a local path and raises FileNotFoundError
naming it and the file it expects.

    judge_fid(gen, ref, judge)                       # toy world: Fréchet distance on judge features
    fid(gen, "coco_val/", inception_weights="pt_inception-2015-12-05-6726825d.pth")   # at 256x256
    inception_score(gen, inception_weights=...)      # -> (mean, std) over splits
    clip_score(gen, prompts, clip_dir="clip-vit-large-patch14/")   # mean raw cosine

For generation runs too large to hold in memory, the scorers accumulate batch by batch (the
evaluation engine's scorer interface: `update(images, prompts)`, `result()`):
    scorer = FIDScorer(weights, ref_images="coco_val_256/"); scorer.update(batch); scorer.result()
    # {"fid": 12.3, "ci": {"fid": [lo, hi]}}

Every scorer's `result()` carries a 95% bootstrap interval over the generated images (draws
`stats.draws(N, seed)`, shared with the toy metrics of the same run): FID resamples the generated
set's features against the fixed reference statistics (`stats.frechet_draws`, bias-shifted as
judge-FID), IS recomputes the score on resampled logits, CLIP score resamples per-image cosines.
The point estimates are those of the whole set, as before.

FID protocol (METHODS.md section 7): generated and reference images are both resized (shorter
side, bicubic) and centre-cropped to `FID_SIZE` = 256 before the Inception, which resizes them
to 299 itself. `size=None` keeps the images' own size and refuses reference sets of mixed sizes.

Fréchet distance (Heusel et al. 2017, eq. 6), computed by torchmetrics' FrechetInceptionDistance:
    d^2 = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))
over features of the generated (g) and reference (r) sets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from slimdiff.eval import stats
from slimdiff.eval.inception import FIDInceptionV3, InceptionFeatures, InceptionLogits, load_inception
from slimdiff.report.images import ImagesLike, image_batches, resize_center_crop, to_tensor

DEFAULT_BATCH = 32  # images per feature-extractor forward
IS_SPLITS = 10  # the field's Inception Score splits (Salimans et al. 2016)
FID_SIZE = 256  # the field's FID resolution: 512px generations resized to 256 (METHODS.md section 7)


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


def as_feature_module(extractor, example: torch.Tensor) -> nn.Module:
    """An nn.Module with `num_features` for torchmetrics: the judge (an object with a
    `features(images)` method) is wrapped; a plain feature nn.Module gets `num_features` from
    one forward on `example` (N >= 1 images) when it has none."""
    has_method = callable(getattr(extractor, "features", None)) and not isinstance(extractor.features, nn.Module)
    if has_method or not isinstance(extractor, nn.Module):
        return FeatureModule(extractor, extractor.features(example).shape[-1])
    if not hasattr(extractor, "num_features"):
        extractor.num_features = int(extractor(example).shape[-1])
    return extractor


class FrechetScorer:
    """Fréchet distance accumulated batch by batch: `add_reference(batch)`, `update(batch)`, `result()`.

    Wraps torchmetrics' FrechetInceptionDistance (float64 sums of features and their outer
    products), so memory does not grow with the number of images.
    """

    key = "frechet_distance"

    def __init__(self, feature_module: nn.Module, size: int | None = None, seed: int = 0):
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1 pixel (or None: the images' own size), got {size}")
        self.size = size  # every image is resized and centre-cropped to size x size first (None: as is)
        self.seed = seed  # of the bootstrap draws
        self.device = _module_device(feature_module)
        self.metric = FrechetInceptionDistance(feature=feature_module, normalize=True).to(self.device)
        self._last: list[torch.Tensor] = []  # the feature module's output of the current update
        self.generated: list[torch.Tensor] = []  # generated features (N, D) float32, kept for the interval
        self.metric.inception.register_forward_hook(lambda module, args, out: self._last.append(out))

    @torch.no_grad()
    def add_reference(self, images: torch.Tensor) -> None:
        self.metric.update(self._prepare(images), real=True)
        self._last.clear()

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> None:
        self.metric.update(self._prepare(images), real=False)
        self.generated.extend(f.detach().float().cpu().reshape(-1, f.shape[-1]) for f in self._last)
        self._last.clear()

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        return images if self.size is None else resize_center_crop(images, self.size)

    def value(self) -> float:
        counts = {"generated": int(self.metric.fake_features_num_samples),
                  "reference": int(self.metric.real_features_num_samples)}
        for name, n in counts.items():
            if n < 2:
                raise ValueError(f"a Fréchet distance needs at least 2 images per set; the {name} set has {n}")
        return float(self.metric.compute().item())

    def interval(self, value: float) -> list[float]:
        """95% bootstrap interval: the generated features resampled, the reference statistics fixed."""
        m = self.metric
        n_ref = m.real_features_num_samples
        ref_mean = (m.real_features_sum / n_ref).double()
        ref_cov = ((m.real_features_cov_sum - n_ref * torch.outer(ref_mean, ref_mean)) / (n_ref - 1)).cpu().numpy()
        gen = torch.cat(self.generated).double().numpy()
        idx = stats.draws(len(gen), seed=self.seed)[: stats.RECOMPUTE_DRAWS]
        return stats.shifted_interval(stats.frechet_draws(gen, ref_mean.cpu().numpy(), ref_cov, idx), value)

    def result(self) -> dict:
        value = self.value()
        return {self.key: value, "ci": {self.key: self.interval(value)}}


@torch.no_grad()
def frechet_distance(
    gen_images: ImagesLike | str | os.PathLike,
    ref_images: ImagesLike | str | os.PathLike,
    feature_module,
    batch_size: int = DEFAULT_BATCH,
    size: int | None = None,
) -> float:
    """Fréchet distance between the feature distributions of two image sets (or folders).

    `feature_module`: an nn.Module mapping float images (N, 3, H, W) in [0, 1] to (N, D)
    features, or any object with a `features(images)` method (wrapped in FeatureModule).
    `size`: both sets resized and centre-cropped to size x size first; None: fed at their own
    size (a reference folder of mixed sizes is refused).
    """
    ref_batches = image_batches(ref_images, batch_size, size=size)
    first = next(ref_batches)
    device = _module_device(feature_module)
    scorer = FrechetScorer(as_feature_module(feature_module, first[:2].to(device)))
    scorer.add_reference(first)
    for batch in ref_batches:
        scorer.add_reference(batch)
    for batch in image_batches(gen_images, batch_size, size=size):
        scorer.update(batch)
    return scorer.value()


def judge_fid(
    gen_images: ImagesLike, ref_images: ImagesLike, feature_module, batch_size: int = DEFAULT_BATCH
) -> float:
    """The toy world's FID analogue: Fréchet distance on the judge's features.

    `feature_module`: the judge (`slimdiff.toy.judge.load_judge()`, whose `features(images)`
    gives (N, D)) or any feature nn.Module. Images float in [0, 1] at the judge's resolution.
    Like FID, it is biased by the set size: compare values computed on the same number of images.
    """
    return frechet_distance(gen_images, ref_images, feature_module, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# FID and IS with the FID Inception-v3


class FIDScorer(FrechetScorer):
    """FID of generated batches against a reference set, with pytorch-fid's Inception-v3.

    `ref_images`: a folder (streamed) or images. `size`: generated and reference images are
    resized and centre-cropped to size x size (FID_SIZE = 256, the field's protocol); None: their
    own size, and a reference folder of mixed sizes is refused.
    `dims`: the feature layer (2048 = pool3, the standard; 64 / 192 / 768 as pytorch-fid's --dims).
    """

    key = "fid"

    def __init__(
        self,
        inception: str | os.PathLike | FIDInceptionV3,
        ref_images: ImagesLike | str | os.PathLike,
        size: int | None = FID_SIZE,
        dims: int = 2048,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH,
        seed: int = 0,
    ):
        net = inception if isinstance(inception, FIDInceptionV3) else load_inception(inception, device=device)
        super().__init__(InceptionFeatures(net, dims), size=size, seed=seed)
        for batch in image_batches(ref_images, batch_size, size=size):
            self.add_reference(batch)


class ISScorer:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

    Images are resized and centre-cropped to `size` (256, as FID; METHODS.md section 7).
    Uses the 1008 unbiased logits of the FID Inception (as torch-fidelity). torchmetrics keeps
    the logits of every image (4 KB each) and shuffles them before splitting; the shuffle is
    seeded by `seed`, so the score is reproducible.
    """

    def __init__(
        self,
        inception: str | os.PathLike | FIDInceptionV3,
        splits: int = IS_SPLITS,
        seed: int = 0,
        device: str | torch.device = "cpu",
        size: int | None = FID_SIZE,
    ):
        if splits < 1:
            raise ValueError(f"splits must be >= 1, got {splits}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1 pixel (or None: the images' own size), got {size}")
        self.size = size  # images resized and centre-cropped to size x size first, as for FID
        net = inception if isinstance(inception, FIDInceptionV3) else load_inception(inception, device=device)
        self.device, self.splits, self.seed, self.count = _module_device(net), splits, seed, 0
        self.metric = InceptionScore(feature=InceptionLogits(net), splits=splits, normalize=False).to(self.device)

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> None:
        images = images.to(self.device)
        self.metric.update(images if self.size is None else resize_center_crop(images, self.size))
        self.count += images.shape[0]

    def value(self) -> tuple[float, float]:
        if self.count < self.splits:
            raise ValueError(f"the Inception Score needs at least splits={self.splits} images, got {self.count}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            mean, std = self.metric.compute()
        return float(mean.item()), float(std.item())

    def interval(self) -> list[float]:
        """95% bootstrap interval of the score: the images' logits resampled, the score recomputed."""
        logits = torch.cat([f.detach().cpu() for f in self.metric.features])
        idx = stats.draws(len(logits), seed=self.seed)[: stats.RECOMPUTE_DRAWS]
        return stats.interval(np.array([stats.inception_score_of(logits[torch.from_numpy(i)], self.splits)
                                        for i in idx]))

    def result(self) -> dict:
        mean, std = self.value()
        return {"is": mean, "is_std": std, "ci": {"is": self.interval()}}


def fid(
    gen_images: ImagesLike | str | os.PathLike,
    ref_images: ImagesLike | str | os.PathLike,
    inception_weights: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
    dims: int = 2048,
    size: int | None = FID_SIZE,
) -> float:
    """FID with pytorch-fid's Inception-v3 loaded from a local file (images or folders).

    `size`: both sets resized and centre-cropped to size x size first (256, the field's protocol).
    `dims`: the feature layer (2048 = pool3, the standard; 64 / 192 / 768 as pytorch-fid's --dims).
    Needs more than `dims` images per set for a full-rank covariance (the field uses 30K).
    """
    net = load_inception(inception_weights, device=device)
    return frechet_distance(gen_images, ref_images, InceptionFeatures(net, dims), batch_size=batch_size, size=size)


def inception_score(
    gen_images: ImagesLike | str | os.PathLike,
    inception_weights: str | os.PathLike,
    splits: int = IS_SPLITS,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Inception Score of images (or a folder): (mean, std) over `splits` (see ISScorer)."""
    scorer = ISScorer(inception_weights, splits=splits, seed=seed, device=device)
    for batch in image_batches(gen_images, batch_size):
        scorer.update(batch)
    return scorer.value()


# ---------------------------------------------------------------------------------------------
# CLIP score

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


class CLIPScorer:
    """Mean raw cosine similarity between CLIP image and text embeddings (METHODS.md section 7).

    (torchmetrics' CLIPScore reports 100 x the same cosine, clipped at 0; it is not used because it
    accepts only hub names, and transformers >= 5 changed the return type it relies on.)
    """

    def __init__(self, clip_dir: str | os.PathLike, device: str | torch.device = "cpu", seed: int = 0):
        self.model, self.processor = load_clip(clip_dir, device=device)
        self.device = torch.device(device)
        self.max_len = self.model.config.text_config.max_position_embeddings
        self.total, self.count = 0.0, 0
        self.seed = seed  # of the bootstrap draws
        self.per_image: list[float] = []  # cosine of each image with its prompt, for the interval

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: Sequence[str]) -> None:
        prompts = list(prompts)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"clip_score needs one prompt per image: {images.shape[0]} images, {len(prompts)} prompts")
        # the processor resizes / crops / normalises uint8 images itself
        pix = [(im * 255).round().to(torch.uint8).cpu() for im in images]
        img_in = self.processor(images=pix, return_tensors="pt")
        txt_in = self.processor(text=prompts, return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_len)
        img = _embedding(self.model.get_image_features(pixel_values=img_in["pixel_values"].to(self.device)))  # (B, E)
        txt = _embedding(self.model.get_text_features(
            input_ids=txt_in["input_ids"].to(self.device), attention_mask=txt_in["attention_mask"].to(self.device)
        ))  # (B, E)
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)  # (B,)
        self.total += cos.sum().item()
        self.count += len(prompts)
        self.per_image.extend(cos.double().cpu().tolist())

    def value(self) -> float:
        if self.count == 0:
            raise ValueError("clip_score has seen no images")
        return self.total / self.count

    def result(self) -> dict:
        value = self.value()
        ci = stats.mean_ci(np.array(self.per_image), seed=self.seed)["ci"] if self.count >= 2 else [value, value]
        return {"clip_score": value, "ci": {"clip_score": ci}}


def clip_score(
    images: ImagesLike,
    prompts: Sequence[str],
    clip_dir: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
) -> float:
    """Mean raw cosine similarity between the CLIP embeddings of each image and its prompt."""
    x, prompts = to_tensor(images), list(prompts)
    if len(prompts) != x.shape[0]:
        raise ValueError(f"clip_score needs one prompt per image: {x.shape[0]} images, {len(prompts)} prompts")
    scorer = CLIPScorer(clip_dir, device=device)
    for i in range(0, x.shape[0], batch_size):
        scorer.update(x[i : i + batch_size], prompts[i : i + batch_size])
    return scorer.value()
