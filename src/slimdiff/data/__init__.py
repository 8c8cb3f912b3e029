"""slimdiff.data: image-text data sets for distillation, and caching of their encodings.

    ds = build_dataset("toy", resolution=32, seed=0)          # or an image folder, or .tar shards
    ds[0] -> {"index": 0, "pixel_values": (3, 32, 32) in [-1, 1], "caption": "a red circle ..."}
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from slimdiff.data.imagefolder import ImageFolderDataset
from slimdiff.data.toy import WORLD, ToyDataset
from slimdiff.data.webdataset import WebDatasetShards


def build_dataset(source: str, resolution: int, seed: int = 0, toy_size: int = 4096,
                  caption_column: str = "text", image_column: str = "file_name") -> Dataset:
    """`toy` | an image folder (imagefolder layout) | webdataset shard(s): file, dir of *.tar, glob, {a..b}."""
    if source == WORLD:
        return ToyDataset(toy_size, seed=seed, resolution=resolution)
    path = Path(source)
    is_tar_dir = path.is_dir() and any(path.glob("*.tar")) and not any(
        (path / m).is_file() for m in ("metadata.jsonl", "metadata.csv"))
    if source.endswith(".tar") or "{" in source or any(c in source for c in "*?[") or is_tar_dir:
        return WebDatasetShards(source, resolution, caption_column=caption_column)
    if path.is_dir():
        return ImageFolderDataset(path, resolution, caption_column=caption_column, image_column=image_column)
    raise FileNotFoundError(f"data {source!r} not found: give 'toy', an image folder with metadata.jsonl/.csv, "
                            f"or webdataset .tar shard(s)")


def collate_items(items: list[dict]) -> list[dict]:
    """DataLoader collate: keep the list (items may be raw or already encoded; the trainer stacks)."""
    return items
