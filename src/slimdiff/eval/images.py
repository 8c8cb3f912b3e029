"""Image conversions shared by the metrics, the runner and the report.

slimdiff's metrics take images as a float tensor (N, 3, H, W) in [0, 1]; pipelines return PIL
images; the toy renderer returns uint8 arrays (H, W, 3). `to_tensor` accepts all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from slimdiff.data.common import IMAGE_EXTENSIONS  # the one list, shared with the data readers

ImagesLike = Union[torch.Tensor, np.ndarray, Sequence[Image.Image], Sequence[np.ndarray]]


def to_tensor(images: ImagesLike) -> torch.Tensor:
    """PIL images / uint8 arrays (H, W, 3) / a uint8 array (N, H, W, 3) / a tensor -> float (N, 3, H, W) in [0, 1].

    A tensor is passed through when it is already float (N, 3, H, W); a uint8 tensor is scaled.
    Raises ValueError for an empty list, mixed sizes or a value range that is not [0, 1].
    """
    if isinstance(images, torch.Tensor):
        x = images
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
    elif isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected an array (N, H, W, 3), got shape {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        x = x.float() / 255.0 if images.dtype == np.uint8 else x.float()
    else:
        images = list(images)
        if not images:
            raise ValueError("expected at least one image, got an empty list")
        arrays = [np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else np.asarray(im) for im in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"all images must have the same size, got shapes {sorted(shapes)}")
        return to_tensor(np.stack(arrays))
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got shape {tuple(x.shape)}")
    x = x.float()
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"float images must lie in [0, 1], got values in [{x.min().item():.3f}, {x.max().item():.3f}]"
        )
    return x


def to_pil(images: ImagesLike) -> list[Image.Image]:
    """Anything `to_tensor` accepts -> a list of RGB PIL images (values rounded to uint8)."""
    if not isinstance(images, torch.Tensor) and not isinstance(images, np.ndarray):
        images = list(images)
        if images and all(isinstance(im, Image.Image) for im in images):
            return [im.convert("RGB") for im in images]
    x = to_tensor(images)
    arrays = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of (N, 3, H, W) to `size` = (H', W'); identity when equal."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of `folder`, sorted by name; FileNotFoundError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def image_batches(
    images: ImagesLike | str | os.PathLike, batch_size: int, size: tuple[int, int] | None = None
) -> Iterator[torch.Tensor]:
    """Float batches (B, 3, H, W) in [0, 1] of in-memory images or of a folder (streamed from disk).

    A folder's images are resized (bicubic, no crop) to `size` (H, W), default the first
    image's size, so any folder stacks; in-memory images are resized only when `size` is given.
    """
    if isinstance(images, (str, os.PathLike)):
        files = image_files(images)
        for i in range(0, len(files), batch_size):
            batch = [Image.open(f).convert("RGB") for f in files[i : i + batch_size]]
            if size is None:
                size = (batch[0].height, batch[0].width)
            h, w = size
            yield to_tensor([im if im.size == (w, h) else im.resize((w, h), Image.BICUBIC) for im in batch])
        return
    x = to_tensor(images)
    if size is not None:
        x = resize(x, size)
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]
