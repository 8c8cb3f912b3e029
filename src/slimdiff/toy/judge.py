"""The judge: a small CNN that reads every caption attribute back from a toy-world image.

    judge = load_judge()                                 # eval mode, shipped weights
    feats = judge.features(images)                       # (N, 256), for KID / Fréchet distances
    judge.score(images, scenes)["alignment_score"]       # mean probability of the caption's attributes

`images` are float (N, 3, 64, 64) in [0, 1] (other sizes are refused). Heads, per slot (slot i =
the i-th object named in the caption, in reading order): count ('0'..'3' and '4+': missing and
extra objects are seen), layout (5 positions, 2 relations, 2 arrangements), colour0..2,
shape0..2 (the world's shapes and 'blob': a region that is no shape), size0..2. A caption with
k objects states 2 + 3k attributes (count, layout, then colour, shape and size per object).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimdiff.io import atomic_path
from slimdiff.toy import DEFAULT_JUDGE, judge_path, world

# head name -> class names (the label space of each attribute)
HEADS: dict[str, tuple[str, ...]] = {"count": world.COUNTS, "layout": world.LAYOUTS}
for _i in range(world.MAX_OBJECTS):
    HEADS[f"colour{_i}"] = tuple(world.COLOURS)
    HEADS[f"shape{_i}"] = world.SHAPES + (world.BLOB,)
    HEADS[f"size{_i}"] = tuple(world.SIZES)
FEATURE_DIM = 256
FAMILIES = ("count", "layout", "colour", "shape", "size")  # per-attribute accuracy groups


def _block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Judge(nn.Module):
    """CNN 64x64x3 -> 4x4x128 -> 256 features -> one linear head per attribute.

    One conv at full resolution (the stem), then two per level; each level halves the side.
    """

    def __init__(self, widths: Sequence[int] = (24, 32, 64, 128), feature_dim: int = FEATURE_DIM):
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [_block(cin, w, 1 if i == 0 else 2), nn.MaxPool2d(2)]
            cin = w
        self.body = nn.Sequential(*layers)
        side = world.IMAGE_SIZE >> len(widths)
        # flatten keeps where things are (position, relation and arrangement heads need it)
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in HEADS.items()})
        self.pca: dict[str, torch.Tensor] | None = None  # judge-FID's fixed projection (see load_judge)
        self.version: str | None = None  # a name in slimdiff.toy.JUDGES, or the weights' path (load_judge)

    @staticmethod
    def _prepare(images: torch.Tensor) -> torch.Tensor:
        size = world.IMAGE_SIZE
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"the judge reads (N, 3, {size}, {size}) images in [0, 1], got shape {tuple(images.shape)}")
        return (images.float() - 0.5) / 0.25  # roughly zero-mean, unit-scale inputs

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 256) of images (N, 3, 64, 64) in [0, 1]."""
        return self.neck(self.body(self._prepare(images)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head: {name: (N, classes)}."""
        f = self.features(images)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Softmax per head over all images: {name: (N, classes)}."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in HEADS}
        for i in range(0, len(images), batch_size):
            for k, v in self(images[i : i + batch_size]).items():
                parts[k].append(v.softmax(dim=1))
        return {k: torch.cat(v) if v else torch.zeros(0, len(HEADS[k])) for k, v in parts.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> list[dict[str, str]]:
        """Per image, the most likely value of every head (as attribute words)."""
        idx = {k: v.argmax(dim=1).tolist() for k, v in self.probabilities(images, batch_size).items()}
        return [{k: HEADS[k][idx[k][j]] for k in HEADS} for j in range(len(images))]

    def loss(self, images: torch.Tensor, scenes: Sequence[world.Scene]) -> torch.Tensor:
        """Sum over heads of cross-entropy; a head counts only where the scene states it."""
        logits = self(images)
        total = images.new_zeros(())
        for k, classes in HEADS.items():
            target = [classes.index(s.attributes()[k]) if k in s.attributes() else -100 for s in scenes]
            if any(t >= 0 for t in target):
                total = total + F.cross_entropy(logits[k], torch.tensor(target), ignore_index=-100)
        return total

    @torch.no_grad()
    def per_image(self, images: torch.Tensor, scenes: Sequence[world.Scene]) -> dict[str, np.ndarray]:
        """Per-image results (the units a bootstrap resamples), each an array of shape (N,):

        `hits` / `attrs`: caption attributes confirmed / stated; `all_correct` (0/1);
        `prob`: mean probability the judge gives the caption's attributes (the continuous score);
        `logprob`: mean log-probability of them; `hits_<family>` / `attrs_<family>` per FAMILIES.
        """
        if len(images) != len(scenes):
            raise ValueError(f"{len(images)} images but {len(scenes)} scenes")
        if len(scenes) == 0:
            raise ValueError("the judge needs at least one image")
        probs = self.probabilities(images)
        n = len(scenes)
        out = {k: np.zeros(n) for k in ("hits", "attrs", "all_correct", "prob", "logprob")}
        for fam in FAMILIES:
            out[f"hits_{fam}"], out[f"attrs_{fam}"] = np.zeros(n), np.zeros(n)
        for j, scene in enumerate(scenes):
            truth = scene.attributes()
            p_true, ok = [], []
            for k, v in truth.items():
                p = probs[k][j]
                p_true.append(float(p[HEADS[k].index(v)]))
                ok.append(int(p.argmax()) == HEADS[k].index(v))
                fam = k.rstrip("0123456789")
                out[f"hits_{fam}"][j] += ok[-1]
                out[f"attrs_{fam}"][j] += 1
            out["hits"][j], out["attrs"][j], out["all_correct"][j] = sum(ok), len(ok), float(all(ok))
            out["prob"][j] = float(np.mean(p_true))
            out["logprob"][j] = float(np.mean(np.log(np.clip(p_true, 1e-12, 1.0))))
        return out

    @torch.no_grad()
    def score(self, images: torch.Tensor, scenes: Sequence[world.Scene]) -> dict:
        """Compare what the judge reads with what the captions of `scenes` state.

        Returns {"alignment": fraction of caption attributes confirmed (pooled over images),
        "alignment_score": mean probability of the caption's attributes (continuous, the toy
        analogue of CLIP score), "all_correct": fraction of images with every attribute right,
        "per_attribute": {family: accuracy over the attributes of that family stated}}.
        """
        return summarize(self.per_image(images, scenes))


def summarize(per: dict[str, np.ndarray], index: np.ndarray | None = None) -> dict:
    """Aggregate `Judge.per_image` results (optionally over the rows `index`, e.g. a bootstrap draw)."""
    take = (lambda a: a[index]) if index is not None else (lambda a: a)  # noqa: E731
    out = {
        "alignment": float(take(per["hits"]).sum() / max(1.0, take(per["attrs"]).sum())),
        "alignment_score": float(take(per["prob"]).mean()),
        "all_correct": float(take(per["all_correct"]).mean()),
        "per_attribute": {},
    }
    for fam in FAMILIES:
        attrs = take(per[f"attrs_{fam}"]).sum()
        if attrs:
            out["per_attribute"][fam] = float(take(per[f"hits_{fam}"]).sum() / attrs)
    return out


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
    """Write `model.safetensors` (fp32) and, when set, the fixed PCA basis `pca.safetensors`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp))
    if getattr(judge, "pca", None) is not None:
        with atomic_path(path / "pca.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in judge.pca.items()}, str(tmp))
    return path


def load_judge(path: str | Path | None = None, version: str | None = None) -> Judge:
    """The judge in eval mode: the weights in `path`, or the shipped judge `version` (a name in
    `slimdiff.toy.JUDGES`; None: `DEFAULT_JUDGE`). `judge.version` says which (the name, or the path).

    `judge.pca` is the fixed PCA of its features used by judge-FID (`pca.safetensors`; None
    when absent, and then `slimdiff.eval.toy.pca_basis` fits it on rendered train scenes).
    """
    from safetensors.torch import load_file

    if path is not None and version is not None:
        raise ValueError(f"give a judge path or a version, not both (path={path}, version={version!r})")
    if path is None:
        version = DEFAULT_JUDGE if version is None else version
        path = judge_path(version)
    else:
        version = str(path)
        path = Path(path)
    file = path / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"judge weights not found: {file} (train them with `slimdiff toy train --stage judge`)")
    judge = Judge()
    try:
        judge.load_state_dict(load_file(str(file)))
    except (RuntimeError, OSError) as e:  # a v1 judge, or a damaged file
        raise ValueError(f"{file} is not a judge of this toy world ({str(e).splitlines()[0][:120]})") from None
    judge.pca = load_file(str(path / "pca.safetensors")) if (path / "pca.safetensors").is_file() else None
    judge.version = version
    return judge.eval()
