"""What every image-text data set of slimdiff returns, and the image preprocessing they share.

A data set is map-style: `len(ds)`, and `ds[i] -> {"index": i, "pixel_values": (3, R, R) float
in [-1, 1], "caption": str}`, plus `ds.fingerprint` (a string that changes when the items do,
used as the cache key). Map-style with a seeded order makes a run's batches a pure function of
(seed, step), which is what resuming and 1-vs-N-process equality rely on. Image data sets also give
`"time_ids"`: SDXL's six size/crop conditioning values of the item (`image_time_ids`), which an
SDXL run feeds its U-Nets (and a StableDiffusionPipeline run ignores).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def resize_crop(width: int, height: int, resolution: int) -> tuple[int, int, int, int]:
    """(resized width, height, crop left, top) of `image_to_tensor`: shorter side to R, centre crop R x R."""
    if (width, height) == (resolution, resolution):
        return width, height, 0, 0
    scale = resolution / min(width, height)
    nw, nh = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    return nw, nh, (nw - resolution) // 2, (nh - resolution) // 2


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """SDXL's size/crop conditioning (Podell et al. 2023, 2.2) as `StableDiffusionXLPipeline._get_add_time_ids`
    orders it: (6,) float32 = (original h, w, crop top, left, target h, w)."""
    return torch.tensor([*original, *crop, *target], dtype=torch.float32)


def image_time_ids(width: int, height: int, resolution: int) -> torch.Tensor:
    """The time ids of an image of `width` x `height` prepared by `image_to_tensor` at `resolution`:
    its size before resizing, the top-left of the centre crop after it, the target R x R (as diffusers'
    train_text_to_image_sdxl records them)."""
    _, _, left, top = resize_crop(width, height, resolution)
    return time_ids((height, width), (top, left), (resolution, resolution))


def image_to_tensor(image: Image.Image | np.ndarray, resolution: int) -> torch.Tensor:
    """RGB image -> (3, R, R) float in [-1, 1]: shorter side resized to R (bicubic), centre crop.

    Same preprocessing as diffusers' train_text_to_image (no random flip: captions name positions).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (resolution, resolution):
        nw, nh, left, top = resize_crop(w, h, resolution)
        image = image.resize((nw, nh), Image.BICUBIC)
        image = image.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (R, R, 3) in [-1, 1]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, R, R)
