"""The toy world as a training set: seeded train-split scenes rendered on the fly.

`ToyDataset(n, seed)` holds `n` scenes of `slimdiff.toy.world.sample_scenes("train", n, seed)`
(cheap: attributes only); item i is rendered when asked for, so no image is stored.
`is_toy_source(name)`: whether a model or pipeline source is the toy world (the rooms above
`data/` ask here rather than naming the world themselves).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from slimdiff.data.common import image_time_ids, image_to_tensor
from slimdiff.toy import pipeline_path, world


class ToyDataset(Dataset):
    def __init__(self, n: int = 4096, seed: int = 0, resolution: int = 64, split: str = "train"):
        if n < 1:
            raise ValueError(f"toy data set size must be >= 1, got {n}")
        self.world = world
        self.scenes = world.sample_scenes(split, n, seed)
        self.captions = [world.caption(s) for s in self.scenes]
        self.resolution = resolution
        self.fingerprint = f"toy:{split}:n={n}:seed={seed}:res={resolution}"

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict:
        image = self.world.render(self.scenes[i])  # uint8 (64, 64, 3)
        return {"index": i, "pixel_values": image_to_tensor(image, self.resolution), "caption": self.captions[i],
                "time_ids": image_time_ids(image.shape[1], image.shape[0], self.resolution)}


WORLD = "toy"  # the toy world's name wherever a model, pipeline or data source is named


def is_toy_source(source: str | None) -> bool:
    """Whether a model / pipeline source is the embedded toy world: its name, or the shipped pipeline directory."""
    if source is None:
        return False
    if source == WORLD:
        return True
    try:
        return Path(source).resolve() == Path(pipeline_path()).resolve()
    except FileNotFoundError:  # the package ships without its toy assets
        return False
