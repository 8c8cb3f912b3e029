"""Frozen feature networks for A-SDM's perceptual loss (semantic-aware supervision).

- `VGG16Features`: torchvision's `vgg16().features` layout (same module indices, so a
  torchvision state dict `features.N.weight/bias` loads as is, the classifier is ignored),
  returning the activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (the LPIPS taps).
  Weights come from a local file only: nothing is downloaded.
- `JudgeFeatures`: the toy world's judge `features(images)` (one level), the default on the toy world.

Both take images (B, 3, H, W) in [0, 1] and return a list of feature tensors; both are frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from slimdiff.io import load_torch_file
from slimdiff.toy.judge import load_judge

# torchvision vgg16 "D" configuration: conv widths, "M" = 2x2 max-pool
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_TAPS = (3, 8, 15, 22, 29)  # indices in `features` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    def __init__(self, taps: tuple[int, ...] = VGG16_TAPS):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = v
        self.features = nn.Sequential(*layers)  # indices match torchvision's vgg16().features
        self.taps = tuple(sorted(taps))
        if not self.taps or self.taps[-1] >= len(self.features):
            raise ValueError(f"VGG16 taps {taps} must be indices in [0, {len(self.features)})")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path, taps: tuple[int, ...] = VGG16_TAPS) -> "VGG16Features":
        """Load torchvision-format VGG16 weights (`.pth`/`.pt`/`.bin` state dict or `.safetensors`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights file not found: {path} (give a local torchvision-format "
                                    f"vgg16 state dict, e.g. vgg16-397923af.pth)")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_torch_file(path, "VGG16 weights file")  # tensors only: a pickle of code is refused
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        net = cls(taps)
        wanted = net.features.state_dict()
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        missing = [f"features.{k}" for k in wanted if f"features.{k}" not in feats]
        if missing:
            raise ValueError(f"{path} is not a torchvision VGG16 state dict: missing {missing[:4]}"
                             f"{' ...' if len(missing) > 4 else ''}")
        bad = [f"{k} {tuple(feats['features.' + k].shape)} != {tuple(v.shape)}" for k, v in wanted.items()
               if feats[f"features.{k}"].shape != v.shape]
        if bad:
            raise ValueError(f"{path}: VGG16 tensor shapes differ: {bad[:4]}")
        net.features.load_state_dict({k[len("features."):]: v for k, v in feats.items()}, strict=False)
        return net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> [relu1_2 (B, 64, H, W), ..., relu5_3 (B, 512, H/16, W/16)]."""
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class JudgeFeatures(nn.Module):
    """The toy judge's penultimate features as a one-level perceptual network."""

    def __init__(self, judge: nn.Module):
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)

    @classmethod
    def load(cls) -> "JudgeFeatures":
        # v2, whatever the evaluations' default: v3 is trained to ignore softness, which a perceptual loss must see
        return cls(load_judge(version="v2"))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.judge.features(images)]


def load_perceptual_net(kind: str, weights: str | None, toy_world: bool) -> nn.Module:
    """The frozen feature network for `--perceptual-net` (auto: judge on the toy world, else VGG16)."""
    if kind == "auto":
        kind = "judge" if toy_world and weights is None else "vgg16"
    if kind == "judge":
        return JudgeFeatures.load()
    if kind == "vgg16":
        if weights is None:
            raise ValueError("the perceptual loss with perceptual_net='vgg16' needs --perceptual-weights FILE "
                             "(a local torchvision-format vgg16 state dict); nothing is downloaded")
        return VGG16Features.from_file(weights)
    raise ValueError(f"perceptual net {kind!r} is not one of ['auto', 'judge', 'vgg16']")
