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


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size): shorter side resized to `size` (bicubic, antialiased), centre crop.

    The field's FID preprocessing (METHODS.md section 7): 512px generations and reference images
    of any aspect ratio both become `size` x `size` (256) before the Inception.
    """
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        images = images[..., top : top + size, left : left + size].clamp(0, 1)
    return images


def image_batches(
    images: ImagesLike | str | os.PathLike, batch_size: int, size: int | None = None
) -> Iterator[torch.Tensor]:
    """Float batches (B, 3, H, W) in [0, 1] of in-memory images or of a folder (streamed from disk).

    `size`: every image is resized and centre-cropped to `size` x `size` (`resize_center_crop`).
    None: images are used at their own size, and a folder whose images differ in size is refused
    (ValueError naming two files and their sizes) rather than squashed to one of them.
    A file that is not a readable image raises ValueError naming it.
    """
    if size is not None and size < 1:
        raise ValueError(f"image size must be >= 1 pixel, got {size}")
    if isinstance(images, (str, os.PathLike)):
        files = image_files(images)
        first: tuple[Path, tuple[int, int]] | None = None
        for i in range(0, len(files), batch_size):
            batch = []
            for f in files[i : i + batch_size]:
                x = to_tensor([open_image(f)])  # (1, 3, H, W)
                if size is not None:
                    x = resize_center_crop(x, size)
                elif first is None:
                    first = (f, tuple(x.shape[-2:]))
                elif tuple(x.shape[-2:]) != first[1]:
                    raise ValueError(
                        f"reference images differ in size: {first[0]} is {first[1][1]}x{first[1][0]}, {f} is "
                        f"{x.shape[-1]}x{x.shape[-2]} (WxH); give a size (FID: fid_size / --fid-size) to resize "
                        f"and centre-crop them all"
                    )
                batch.append(x)
            yield torch.cat(batch)
        return
    x = to_tensor(images)
    if size is not None:
        x = resize_center_crop(x, size)
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


def open_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image, fully decoded; ValueError naming the file when it is not a readable image."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated data
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}: {e})") from None
