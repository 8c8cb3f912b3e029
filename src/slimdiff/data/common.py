"""What every image-text data set of slimdiff returns, and the image preprocessing they share.

A data set is map-style: `len(ds)`, and `ds[i] -> {"index": i, "pixel_values": (3, R, R) float
in [-1, 1], "caption": str}`, plus `ds.fingerprint` (a string that changes when the items do,
used as the cache key). Map-style with a seeded order makes a run's batches a pure function of
(seed, step), which is what resuming and 1-vs-N-process equality rely on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def image_to_tensor(image: Image.Image | np.ndarray, resolution: int) -> torch.Tensor:
    """RGB image -> (3, R, R) float in [-1, 1]: shorter side resized to R (bicubic), centre crop.

    Same preprocessing as diffusers' train_text_to_image (no random flip: captions name positions).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        image = image.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (R, R, 3) in [-1, 1]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, R, R)
