"""The toy world: seeded scenes of simple coloured shapes, their captions and their images.

A scene holds one or two objects. Each object has a colour, a shape and a size. A one-object
scene also has a position word; a two-object scene has a relation between its objects:

    "a large red circle on the left"
    "a small green square left of a large blue triangle"
    "a large yellow triangle above a small cyan circle"

The first object named is always the left (or upper) one, so every caption has exactly one
image layout and the judge can read attributes back per slot (slot 0 = first named object).

Splits (`SPLITS`). Scenes are split by their *structure* (what the caption states: the layout
and every object's size, colour and shape; not the exact pixel positions), hashed with SHA-256:
- `train`: ~80% of structures, never containing a held-out colour-shape pair.
- `validation`: ~10% of structures, also without held-out pairs.
- `test`: the remaining ~10% of structures (compositions never seen whole in training) and,
  for a quarter of the test scenes, structures containing one of `HELD_OUT_PAIRS`: colour-shape
  combinations that never occur in any training image (compositional generalisation).
- `all`: any structure (for the judge, which must read every combination).

Images are 32x32 RGB uint8 on a dark background, rendered with 4x supersampling so edges
are anti-aliased. Everything is a pure function of the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

IMAGE_SIZE = 32  # pixels (H = W)
SUPERSAMPLE = 4  # render at 128x128, then average 4x4 blocks
BACKGROUND = (16, 16, 24)  # dark blue-grey, RGB

# colour name -> RGB; chosen far apart in RGB so a blurry generation still reads unambiguously
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 245),
    "yellow": (240, 220, 40),
    "purple": (190, 60, 230),
    "cyan": (40, 220, 230),
}
SHAPES = ("circle", "square", "triangle")
# size name -> half-extent in pixels (a large object is 14 px across, a small one 8 px)
SIZES: dict[str, float] = {"small": 4.0, "large": 7.0}
# one-object position words -> caption phrase
POSITIONS: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}
RELATIONS: dict[str, str] = {"left_of": "left of", "above": "above"}
# one label space for the judge's layout head: five positions, then two relations
LAYOUTS: tuple[str, ...] = tuple(POSITIONS) + tuple(RELATIONS)

# colour-shape pairs that never appear in train or validation images (only in test)
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({("red", "triangle"), ("blue", "circle")})

SPLITS = ("train", "validation", "test", "all")
_SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}  # of structures w/o held-out pairs
TEST_NOVEL_FRACTION = 0.25  # share of test scenes containing a held-out colour-shape pair


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object. `x`, `y`: centre in pixels (0..32, y down); the rest are vocabulary words."""

    colour: str
    shape: str
    size: str
    x: float
    y: float

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r} is not one of {list(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {list(SHAPES)}")
        if self.size not in SIZES:
            raise ValueError(f"size {self.size!r} is not one of {list(SIZES)}")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One or two objects and their layout: a position (one object) or a relation (two).

    `objects[0]` is the first object named in the caption (the left or upper one).
    """

    objects: tuple[Obj, ...]
    layout: str  # one of LAYOUTS

    def __post_init__(self):
        n = len(self.objects)
        if n == 1 and self.layout not in POSITIONS:
            raise ValueError(f"one-object layout {self.layout!r} is not one of {list(POSITIONS)}")
        if n == 2 and self.layout not in RELATIONS:
            raise ValueError(f"two-object layout {self.layout!r} is not one of {list(RELATIONS)}")
        if n not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 objects, got {n}")

    def structure(self) -> tuple:
        """What the caption says (no pixel positions): the unit of the train/test split."""
        return (self.layout,) + tuple((o.size, o.colour, o.shape) for o in self.objects)

    def attributes(self) -> dict[str, str]:
        """Every attribute the caption states: {"count", "layout", "colour0", "shape0", ...}."""
        out = {"count": str(len(self.objects)), "layout": self.layout}
        for i, o in enumerate(self.objects):
            out[f"colour{i}"], out[f"shape{i}"], out[f"size{i}"] = o.colour, o.shape, o.size
        return out


def caption(scene: Scene) -> str:
    """The caption that fully describes `scene`, e.g. 'a small red circle left of a large blue square'."""
    words = [f"a {o.size} {o.colour} {o.shape}" for o in scene.objects]
    if len(words) == 1:
        return f"{words[0]} {POSITIONS[scene.layout]}"
    return f"{words[0]} {RELATIONS[scene.layout]} {words[1]}"


def vocabulary() -> list[str]:
    """Every word any caption can use, in a fixed order (for the word-level tokenizer)."""
    words = ["a"] + list(SIZES) + list(COLOURS) + list(SHAPES)
    for phrase in list(POSITIONS.values()) + list(RELATIONS.values()):
        words += [w for w in phrase.split() if w not in words]
    return list(dict.fromkeys(words))


def is_novel(scene: Scene) -> bool:
    """True when the scene contains a held-out colour-shape pair (never in training)."""
    return any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects)


def split_of(scene: Scene) -> str:
    """The split a scene's structure belongs to ('train', 'validation' or 'test')."""
    if is_novel(scene):
        return "test"
    digest = hashlib.sha256(repr(scene.structure()).encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64  # uniform in [0, 1)
    if u < _SPLIT_FRACTIONS["train"]:
        return "train"
    if u < _SPLIT_FRACTIONS["train"] + _SPLIT_FRACTIONS["validation"]:
        return "validation"
    return "test"


# ---------------------------------------------------------------------------------------------
# sampling


def _random_object(rng: np.random.Generator, x: float, y: float) -> Obj:
    return Obj(
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        shape=SHAPES[rng.integers(len(SHAPES))],
        size=list(SIZES)[rng.integers(len(SIZES))],
        x=x,
        y=y,
    )


def _centres(layout: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Object centres (x, y) in pixels for `layout`, drawn from its ranges."""
    if layout in POSITIONS:
        # centre ranges per position; large objects (half-extent 7) stay inside the 32 px frame
        lo, hi, mid = (7.0, 11.0), (21.0, 25.0), (12.0, 20.0)
        centre = {"left": (lo, mid), "right": (hi, mid), "top": (mid, lo), "bottom": (mid, hi), "middle": ((14.0, 18.0), (14.0, 18.0))}
        (x0, x1), (y0, y1) = centre[layout]
        return [(rng.uniform(x0, x1), rng.uniform(y0, y1))]
    # the first object in one half, the second in the other: centres 7..9 and 23..25 on the
    # relation axis (so two large objects can touch but not overlap), 8..24 on the other
    near, far, free = (7.0, 9.0), (23.0, 25.0), (8.0, 24.0)
    a, b = rng.uniform(*near), rng.uniform(*far)
    u, v = rng.uniform(*free), rng.uniform(*free)
    return [(a, u), (b, v)] if layout == "left_of" else [(u, a), (v, b)]


def random_scene(rng: np.random.Generator) -> Scene:
    """One scene from the whole world (any split): 1 object with p=1/3, else 2."""
    if rng.random() < 1 / 3:
        layout = list(POSITIONS)[rng.integers(len(POSITIONS))]
    else:
        layout = list(RELATIONS)[rng.integers(len(RELATIONS))]
    centres = _centres(layout, rng)  # drawn before the objects' words (the order fixes the splits)
    return Scene(tuple(_random_object(rng, x, y) for x, y in centres), layout)


def same_caption(scene: Scene, seed: int) -> Scene:
    """Another scene with `scene`'s caption: the same objects and layout, centres redrawn.

    What a generator that follows the caption perfectly may draw; rendered, these give the
    judge-FID ceiling (rendered vs rendered, same captions, different placements).
    """
    centres = _centres(scene.layout, np.random.default_rng([seed, 104729]))
    objs = tuple(dataclasses.replace(o, x=x, y=y) for o, (x, y) in zip(scene.objects, centres))
    return Scene(objs, scene.layout)


def sample_scenes(split: str, n: int, seed: int = 0) -> list[Scene]:
    """`n` scenes of `split` (see module docstring), a pure function of (split, n, seed).

    For 'test', scene i is a novel (held-out pair) scene when its own draw says so with
    probability TEST_NOVEL_FRACTION; otherwise it comes from the test structures without them.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    split_index = SPLITS.index(split)
    rng = np.random.default_rng([seed, split_index, 7919])
    scenes: list[Scene] = []
    while len(scenes) < n:
        want_novel = split == "test" and rng.random() < TEST_NOVEL_FRACTION
        while True:  # rejection sampling; the rarest target (novel) has p ~ 0.18
            s = random_scene(rng)
            if split == "all":
                break
            if split == "test":
                if (is_novel(s) == want_novel) and split_of(s) == "test":
                    break
            elif split_of(s) == split:
                break
        scenes.append(s)
    return scenes


# ---------------------------------------------------------------------------------------------
# rendering


def _mask(obj: Obj, res: int) -> np.ndarray:
    """Coverage mask (res, res) bool of `obj` on a grid `res / IMAGE_SIZE` times finer."""
    scale = res / IMAGE_SIZE
    coords = (np.arange(res) + 0.5) / scale  # pixel centres in image units
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    dx, dy, r = xx - obj.x, yy - obj.y, SIZES[obj.size]
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        s = r * 0.9  # a square of the same half-extent looks bigger than the circle; even out area
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    # upward triangle with its bounding box [-r, r]^2: apex at top centre
    t = (dy + r) / (2 * r)  # 0 at apex, 1 at base
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)


def render(scene: Scene) -> np.ndarray:
    """The image of `scene`: uint8 array (32, 32, 3), anti-aliased by 4x supersampling."""
    res = IMAGE_SIZE * SUPERSAMPLE
    img = np.empty((res, res, 3), dtype=np.float32)
    img[:] = BACKGROUND
    for obj in scene.objects:
        img[_mask(obj, res)] = COLOURS[obj.colour]
    # (128, 128, 3) -> (32, 4, 32, 4, 3) -> mean over the 4x4 blocks -> (32, 32, 3)
    img = img.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(img).astype(np.uint8)


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """uint8 (N, 32, 32, 3) images of `scenes`."""
    return np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


def to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float torch tensor (N, 3, H, W) in [0, 1] (the judge's input)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
