"""The judge: a small CNN that reads every caption attribute back from a toy-world image.

    judge = load_judge()                                 # eval mode, shipped weights
    feats = judge.features(images)                       # (N, 256), for a Fréchet distance
    judge.score(images, scenes)["alignment"]             # fraction of caption attributes found

`images` are float (N, 3, H, W) in [0, 1] (resized to 32x32 when H, W differ). Heads, per slot
(slot 0 = the first object named in the caption, i.e. the left or upper one):
count (1 or 2), layout (5 positions + 2 relations), colour0/1, shape0/1, size0/1. A caption
with one object states 5 attributes (count, layout, colour0, shape0, size0); with two, 8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimdiff.toy import world

# head name -> class names (the label space of each attribute)
HEADS: dict[str, tuple[str, ...]] = {
    "count": ("1", "2"),
    "layout": world.LAYOUTS,
    "colour0": tuple(world.COLOURS),
    "shape0": world.SHAPES,
    "size0": tuple(world.SIZES),
    "colour1": tuple(world.COLOURS),
    "shape1": world.SHAPES,
    "size1": tuple(world.SIZES),
}
FEATURE_DIM = 256


def _block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Judge(nn.Module):
    """CNN 32x32x3 -> 4x4x96 -> 256 features -> one linear head per attribute."""

    def __init__(self, widths: Sequence[int] = (24, 48, 96), feature_dim: int = FEATURE_DIM):
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):  # 32 -> 16 -> 8 -> 4; one conv at full resolution, then two
            layers += [_block(cin, w, 1 if i == 0 else 2), nn.MaxPool2d(2)]
            cin = w
        self.body = nn.Sequential(*layers)
        side = world.IMAGE_SIZE >> len(widths)
        # flatten keeps where things are (position and relation heads need it)
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in HEADS.items()})

    @staticmethod
    def _prepare(images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) floats in [0, 1], got shape {tuple(images.shape)}")
        images = images.float()
        if images.shape[-2:] != (world.IMAGE_SIZE, world.IMAGE_SIZE):
            images = F.interpolate(images, size=(world.IMAGE_SIZE,) * 2, mode="bilinear", antialias=True,
                                   align_corners=False)
        return (images - 0.5) / 0.25  # roughly zero-mean, unit-scale inputs

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 256) of images (N, 3, H, W) in [0, 1]."""
        return self.neck(self.body(self._prepare(images)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head: {name: (N, classes)}."""
        f = self.features(images)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> list[dict[str, str]]:
        """Per image, the most likely value of every head (as attribute words)."""
        out: list[dict[str, str]] = []
        for i in range(0, len(images), batch_size):
            logits = self(images[i : i + batch_size])
            idx = {k: v.argmax(dim=1).tolist() for k, v in logits.items()}
            for j in range(len(next(iter(idx.values())))):
                out.append({k: HEADS[k][idx[k][j]] for k in HEADS})
        return out

    def loss(self, images: torch.Tensor, scenes: Sequence[world.Scene]) -> torch.Tensor:
        """Sum over heads of cross-entropy; slot-1 heads only on two-object scenes."""
        logits = self(images)
        total = images.new_zeros(())
        for k, classes in HEADS.items():
            target = [classes.index(s.attributes()[k]) if k in s.attributes() else -100 for s in scenes]
            total = total + F.cross_entropy(logits[k], torch.tensor(target), ignore_index=-100)
        return total

    @torch.no_grad()
    def score(self, images: torch.Tensor, scenes: Sequence[world.Scene]) -> dict:
        """Compare what the judge reads with what the captions of `scenes` state.

        Returns {"alignment": fraction of caption attributes confirmed (over all images),
        "all_correct": fraction of images with every attribute right, "per_attribute":
        {"count", "layout", "colour", "shape", "size": accuracy over the attributes stated}}.
        """
        if len(images) != len(scenes):
            raise ValueError(f"{len(images)} images but {len(scenes)} scenes")
        if len(scenes) == 0:
            raise ValueError("score needs at least one image")
        preds = self.predict(images)
        hits: dict[str, list[bool]] = {k: [] for k in ("count", "layout", "colour", "shape", "size")}
        all_ok = []
        for pred, scene in zip(preds, scenes):
            truth = scene.attributes()
            ok = {k: pred[k] == v for k, v in truth.items()}
            for k, v in ok.items():
                hits[k.rstrip("01")].append(v)
            all_ok.append(all(ok.values()))
        n_attr = sum(len(v) for v in hits.values())
        return {
            "alignment": sum(sum(v) for v in hits.values()) / n_attr,
            "all_correct": sum(all_ok) / len(all_ok),
            "per_attribute": {k: sum(v) / len(v) for k, v in hits.items() if v},
        }


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild corruption so the judge also reads generated images: per image a random 3x3 blur
    (p=0.5), brightness/contrast jitter (+-10%), Gaussian pixel noise (sigma up to 0.06)."""
    n = images.shape[0]
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :]) / 16  # (3, 3) binomial blur
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    use_blur = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
    x = use_blur * blurred + (1 - use_blur) * images
    scale = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    shift = 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = x * scale + shift
    x = x + torch.randn(x.shape, generator=gen) * 0.06 * torch.rand(n, 1, 1, 1, generator=gen)
    return x.clamp(0, 1)


def save_judge(judge: Judge, path: str | Path) -> Path:
    """Write `model.safetensors` (fp32) to the directory `path`."""
    from safetensors.torch import save_file

    from slimdiff.io import atomic_path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp))
    return path


def load_judge(path: str | Path | None = None) -> Judge:
    """The judge in eval mode; `path` defaults to the weights shipped in `slimdiff/toy/assets/judge`."""
    from safetensors.torch import load_file

    from slimdiff.toy import judge_path

    path = Path(path) if path is not None else judge_path()
    file = path / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"judge weights not found: {file} (train them with `slimdiff toy train --stage judge`)")
    judge = Judge()
    judge.load_state_dict(load_file(str(file)))
    return judge.eval()
