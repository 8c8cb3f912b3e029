"""`EvalConfig`: the settings of an evaluation (`evaluate`), validated.

    config = EvalConfig(num_images=256, seed=0)                                   # the toy world's test split
    config = EvalConfig(prompts=coco, num_images=30_000, inception_weights=W, ref_images="coco_256/",
                        clip_dir="clip-vit-g-14/", device="cuda")                 # FID, IS, CLIP score

Every check runs on construction, before any generation, and names the offending value.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence, Union

from slimdiff.eval import metrics
from slimdiff.eval.inception import resolve_weights
from slimdiff.report.images import image_files
from slimdiff.sample import SCHEDULERS
from slimdiff.toy import JUDGES

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class EvalConfig:
    split: str = "test"  # toy world: the scene split whose captions are the prompts
    num_images: int = 256  # images per model (>= 2: every metric carries a bootstrap interval)
    steps: int | None = None  # None: the model's (slimdiff.sample.sampling_defaults)
    guidance: float | None = None  # None: the model's
    seed: int = 0  # image i draws its noise with seed + i; the bootstrap draws use it too
    batch_size: int = 16  # images per pipeline call (the images do not depend on it)
    scheduler: str | None = None  # a name in slimdiff.sample.SCHEDULERS; None: the pipeline's own
    toy: bool | None = None  # the toy world's metrics; None: detected from the pipeline's tokenizer
    prompts: Sequence[str] | None = None  # a model that is not the toy world's: its prompts
    ref_images: PathLike | None = None  # FID: a folder of reference images (needs inception_weights)
    inception_weights: PathLike | None = None  # FID / IS: pytorch-fid's Inception-v3 file
    clip_dir: PathLike | None = None  # CLIP score: a local transformers CLIP directory
    fid_dims: int = 2048  # FID's Inception layer (2048 = pool3; 64 / 192 / 768 as pytorch-fid's --dims)
    reference: bool = False  # toy: add the rendered ceiling's figures
    judge_version: str | None = None  # toy: the judge (a name in slimdiff.toy.JUDGES); None: DEFAULT_JUDGE
    grid: PathLike | None = None  # write a PNG grid of the first grid_rows prompts here
    grid_rows: int = 16  # rows of that grid
    images_dir: PathLike | None = None  # also write every image as PNG here
    progress: bool = True  # progress bars
    device: Any = None  # where the pipelines and metric networks run (None: the pipeline's)

    def __post_init__(self):
        if self.num_images < 2:
            raise ValueError(f"num_images must be >= 2 (metrics carry bootstrap intervals), got {self.num_images}")
        if self.batch_size < 1 or self.grid_rows < 1:
            raise ValueError(f"batch_size and grid_rows must be >= 1, got batch_size={self.batch_size}, "
                             f"grid_rows={self.grid_rows}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; valid names: {', '.join(SCHEDULERS)}")
        if self.judge_version is not None and self.judge_version not in JUDGES:
            raise ValueError(f"judge_version {self.judge_version!r} is not one of {list(JUDGES)}")
        if self.ref_images is not None and self.inception_weights is None:
            raise ValueError("ref_images was given but not inception_weights: FID needs both")
        if self.inception_weights is not None:
            resolve_weights(self.inception_weights)
            if self.num_images < metrics.IS_SPLITS:  # no silent change of the IS protocol's 10 splits
                raise ValueError(f"the Inception Score needs num_images >= {metrics.IS_SPLITS} (its splits), "
                                 f"got {self.num_images}")
        if self.ref_images is not None:
            image_files(self.ref_images)
        if self.clip_dir is not None:
            metrics.resolve_clip_dir(self.clip_dir)
        if self.prompts is not None:
            self.prompts = list(self.prompts)
