"""The FID Inception-v3 (pytorch-fid / torch-fidelity layout), defined here without torchvision.

The field's FID (METHODS.md section 7) uses TensorFlow's 2015 Inception-v3 ported to PyTorch by
pytorch-fid: torchvision's Inception3 with 1008 classes, no auxiliary head, and three patches
(average pools that ignore padding in the A/C/E_1 blocks, a max pool in the last E block).
Weights are never downloaded: pass the local file `pt_inception-2015-12-05-6726825d.pth`
(pytorch-fid's release asset). Any state dict with torchvision's Inception3 names and these
shapes loads, e.g. torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`.

    net = load_inception("weights/pt_inception-2015-12-05-6726825d.pth")
    # network parity: equal to torch-fidelity's FeatureExtractorInceptionV3 (torchmetrics' FID
    # extractor) on the same weights; inputs are resized to 299 and scaled as pytorch-fid does
    feats = net(images)                  # (N, 2048) pool3 features, images (N, 3, H, W) in [0, 1]
    feats = net.pool(images, dims=768)   # (N, 768) an earlier layer (pytorch-fid's --dims)
    logits = net.logits(images)          # (N, 1008) unbiased logits, for the Inception Score

Module names equal torchvision's (`Conv2d_1a_3x3.conv.weight`, `Mixed_7c.branch_pool.bn.*`,
`fc.weight`), so the state dict loads as is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimdiff.io import load_torch_file

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299  # Inception-v3's training resolution; every image is resized to it
NUM_CLASSES = 1008  # the TF 2015 graph has 1008 logits (1000 ImageNet classes + 8 unused)
FEATURE_DIMS = (64, 192, 768, 2048)  # feature layers pytorch-fid offers; 2048 (pool3) is the standard


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, as TF) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # FID patch: TensorFlow's average pool does not count the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block; out channels 64 + 64 + 96 + pool_features."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction; out channels 384 + 96 + c_in."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions; out channels 4 x 192."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction; out channels 320 + 192 + c_in."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block; out channels 320 + 768 + 768 + 192 = 2048.

    `max_pool`: the FID graph's last block (Mixed_7c) pools with max instead of average.
    """

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_no_pad(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used for FID. `forward` -> (N, 2048) pool3 features; `logits` -> (N, 1008).

    Input: float images (N, 3, H, W) in [0, 1]; resized bilinearly to 299x299 and scaled to
    [-1, 1] inside, as pytorch-fid does. Always in eval mode (batch norm uses running stats).
    """

    num_features = 2048  # read by torchmetrics' FrechetInceptionDistance for a custom module

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, NUM_CLASSES)
        self.eval()

    def train(self, mode: bool = True) -> "FIDInceptionV3":
        return super().train(False)  # a metric network never trains

    def pool(self, images: torch.Tensor, dims: int = 2048) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, dims) spatially averaged features.

        dims 2048: after the final block (pool3, the standard FID); 768: after Mixed_6e;
        192 / 64: after the second / first max pool (pytorch-fid's `--dims` choices).
        """
        if dims not in FEATURE_DIMS:
            raise ValueError(f"dims must be one of {FEATURE_DIMS}, got {dims}")
        x = F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        if dims == 64:
            return x.mean(dim=(2, 3))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        if dims == 192:
            return x.mean(dim=(2, 3))
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"):
            x = getattr(self, f"Mixed_{name}")(x)  # ... -> (N, 768, 17, 17)
        if dims == 768:
            return x.mean(dim=(2, 3))
        for name in ("7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)  # ... -> (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(images, 2048)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1008) logits without the fc bias ("logits_unbiased", as torch-fidelity's IS)."""
        return self.pool(images, 2048) @ self.fc.weight.T


class InceptionFeatures(nn.Module):
    """Adapter for torchmetrics' FrechetInceptionDistance(feature=...): (N, dims) features."""

    def __init__(self, net: FIDInceptionV3, dims: int = 2048):
        super().__init__()
        if dims not in FEATURE_DIMS:
            raise ValueError(f"dims must be one of {FEATURE_DIMS}, got {dims}")
        self.net, self.num_features = net, dims  # num_features: read by torchmetrics

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.pool(images, self.num_features)


class InceptionLogits(nn.Module):
    """Adapter for torchmetrics' InceptionScore(feature=...): forward -> (N, 1008) logits."""

    def __init__(self, net: FIDInceptionV3):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.logits(images)


def resolve_weights(weights: str | os.PathLike) -> Path:
    """The weights file (a directory is searched for FID_WEIGHTS_NAME); FileNotFoundError if absent."""
    path = Path(weights)
    if path.is_dir():
        path = path / FID_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found: {path}. FID and IS need the FID Inception-v3 weights as a local "
            f"file ({FID_WEIGHTS_NAME}, pytorch-fid's release asset, or torch-fidelity's "
            f"weights-inception-2015-12-05-6726825d.pth); nothing is downloaded. Pass its path "
            f"(--inception-weights FILE)."
        )
    return path


def load_inception(weights: str | os.PathLike, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build FIDInceptionV3 and load the local weights file; errors name the path and the file expected."""
    path = resolve_weights(weights)
    state = load_torch_file(path, f"FID Inception-v3 weights file ({FID_WEIGHTS_NAME})")  # no pickled code
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not an FID Inception-v3 state dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = FIDInceptionV3()
    expected = net.state_dict()
    # tolerated differences: batch-norm counters (absent in old files), the unused auxiliary head
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.startswith("AuxLogits.")]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} is not an FID Inception-v3 state dict ({FID_WEIGHTS_NAME} layout): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}), "
            f"wrong shape {wrong[:5]} ({len(wrong)})"
        )
    net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return net.to(device).eval()
