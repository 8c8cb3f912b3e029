"""The toy world (v2): seeded scenes of coloured shapes, their captions and their 64x64 images.

A scene holds one, two or three objects. Each object has a colour (8, including the near pairs
red/orange and purple/pink), a shape (5) and a size (3). The layout is a position word for one
object, a relation for two, an arrangement for three:

    "a large red circle on the left"
    "a small green square left of a medium blue diamond"
    "a small red circle , a large orange cross and a medium pink triangle in a row"

Objects are named in reading order (left to right, top to bottom), so every caption has one
image layout and the judge reads attributes back per slot (slot i = the i-th object named).

Splits (`SPLITS`). Scenes are split by their *structure* (what the caption states: the layout
and every object's size, colour and shape; not the pixel positions), hashed with SHA-256:
- `train`: ~80% of structures, never containing a held-out colour-shape pair.
- `validation`: ~10% of structures, also without held-out pairs.
- `test`: the remaining ~10% of structures (compositions never seen whole in training) and,
  for a quarter of the test scenes, structures containing one of `HELD_OUT_PAIRS`: colour-shape
  combinations that never occur in any training image (compositional generalisation).
- `all`: any structure (for the VAE and the judge, which must handle every combination).

Images are 64x64 RGB uint8 on a dark background, rendered with 4x supersampling (anti-aliased
edges). Everything is a pure function of the seed. v1 (32x32, 1-2 objects, 6 colours, 3 shapes,
2 sizes) saturated: its teacher scored 100% on every split, so v2 has room above the teacher.

For the judge's training only (never in captions): `clutter_scene` (4-5 objects: more than the
world's maximum), empty canvases, and objects painted as `BLOB` (irregular regions that are no
shape), so that noise and broken generations are never read as a well-formed scene.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

IMAGE_SIZE = 64  # pixels (H = W); an 8x VAE gives 8x8 latents, as SD's 512px -> 64x64 is 8x
SUPERSAMPLE = 4  # render at 256x256, then average 4x4 blocks
BACKGROUND = (16, 16, 24)  # dark blue-grey, RGB

# colour name -> RGB. Near pairs on purpose (red/orange, purple/pink): a generator must get the
# hue right, not only the colour family.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (245, 135, 30),
    "yellow": (240, 225, 50),
    "green": (40, 190, 60),
    "cyan": (40, 215, 225),
    "blue": (45, 80, 240),
    "purple": (150, 55, 220),
    "pink": (240, 110, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
BLOB = "blob"  # judge label for an irregular region that is none of SHAPES (never in captions)
# size name -> half-extent in pixels (11, 16 and 21 px across)
SIZES: dict[str, float] = {"small": 5.5, "medium": 8.0, "large": 10.5}
# one object: position word -> caption phrase
POSITIONS: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}
# two objects: relation -> phrase between the two object phrases
RELATIONS: dict[str, str] = {"left_of": "left of", "above": "above"}
# three objects: arrangement -> phrase after the list of objects
ARRANGEMENTS: dict[str, str] = {"row": "in a row", "column": "in a column"}
# one label space for the judge's layout head
LAYOUTS: tuple[str, ...] = tuple(POSITIONS) + tuple(RELATIONS) + tuple(ARRANGEMENTS)
MAX_OBJECTS = 3
COUNT_PROBS = (0.25, 0.40, 0.35)  # P(1 object), P(2), P(3)

# colour-shape pairs that never appear in train or validation images (only in test)
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("blue", "circle"), ("orange", "square")}
)

SPLITS = ("train", "validation", "test", "all")
_SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}  # of structures w/o held-out pairs
TEST_NOVEL_FRACTION = 0.25  # share of test scenes containing a held-out colour-shape pair


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object. `x`, `y`: centre in pixels (0..64, y down); the rest are vocabulary words.

    `shape` may be `BLOB` only in judge-training scenes (`blob_seed` then fixes its outline).
    """

    colour: str
    shape: str
    size: str
    x: float
    y: float
    blob_seed: int = 0

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r} is not one of {list(COLOURS)}")
        if self.shape not in SHAPES and self.shape != BLOB:
            raise ValueError(f"shape {self.shape!r} is not one of {list(SHAPES)}")
        if self.size not in SIZES:
            raise ValueError(f"size {self.size!r} is not one of {list(SIZES)}")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One to three objects and their layout; `objects[i]` is the i-th object named.

    `layout` "clutter" (4+ objects) or "empty" (none) exist only for judge training.
    """

    objects: tuple[Obj, ...]
    layout: str

    def __post_init__(self):
        n = len(self.objects)
        allowed = {1: POSITIONS, 2: RELATIONS, 3: ARRANGEMENTS}
        if self.layout == "clutter" and n > MAX_OBJECTS:
            return
        if self.layout == "empty" and n == 0:
            return
        if n not in allowed:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {n}")
        if self.layout not in allowed[n]:
            raise ValueError(f"{n}-object layout {self.layout!r} is not one of {list(allowed[n])}")

    def structure(self) -> tuple:
        """What the caption says (no pixel positions): the unit of the train/test split."""
        return (self.layout,) + tuple((o.size, o.colour, o.shape) for o in self.objects)

    def attributes(self) -> dict[str, str]:
        """Every attribute the caption states: {"count", "layout", "colour0", "shape0", "size0", ...}."""
        out = {"count": count_label(len(self.objects))}
        if self.layout in ("clutter", "empty"):
            return out
        out["layout"] = self.layout
        for i, o in enumerate(self.objects):
            out[f"colour{i}"], out[f"shape{i}"], out[f"size{i}"] = o.colour, o.shape, o.size
        return out


def count_label(n: int) -> str:
    """The judge's count class of `n` objects: '0', '1', '2', '3' or '4+'."""
    return str(n) if n <= MAX_OBJECTS else f"{MAX_OBJECTS + 1}+"


COUNTS: tuple[str, ...] = tuple(count_label(n) for n in range(MAX_OBJECTS + 2))  # '0'..'3', '4+'


def caption(scene: Scene) -> str:
    """The caption that fully describes `scene` (see the module docstring for the three forms)."""
    words = [f"a {o.size} {o.colour} {o.shape}" for o in scene.objects]
    if len(words) == 1:
        return f"{words[0]} {POSITIONS[scene.layout]}"
    if len(words) == 2:
        return f"{words[0]} {RELATIONS[scene.layout]} {words[1]}"
    if len(words) == 3:
        return f"{words[0]} , {words[1]} and {words[2]} {ARRANGEMENTS[scene.layout]}"
    raise ValueError(f"a {scene.layout!r} scene of {len(words)} objects has no caption")


def vocabulary() -> list[str]:
    """Every word any caption can use, in a fixed order (for the word-level tokenizer)."""
    words = ["a", ",", "and"] + list(SIZES) + list(COLOURS) + list(SHAPES)
    for phrase in list(POSITIONS.values()) + list(RELATIONS.values()) + list(ARRANGEMENTS.values()):
        words += phrase.split()
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
    """Object centres (x, y) in pixels for `layout`, drawn from its ranges.

    Ranges keep a large object (half-extent 10.5) inside the 64 px frame; neighbours on the
    layout's axis are >= 19 px apart (two large ones, 21 px across, overlap by 2 px at most).
    """
    if layout in POSITIONS:
        lo, hi, mid = (12.0, 18.0), (46.0, 52.0), (24.0, 40.0)
        centre = {"left": (lo, mid), "right": (hi, mid), "top": (mid, lo), "bottom": (mid, hi),
                  "middle": ((29.0, 35.0), (29.0, 35.0))}
        (x0, x1), (y0, y1) = centre[layout]
        return [(rng.uniform(x0, x1), rng.uniform(y0, y1))]
    if layout in RELATIONS:
        # first object in one half, second in the other; free axis anywhere inside the frame
        a, b = rng.uniform(12.0, 19.0), rng.uniform(45.0, 52.0)
        u, v = rng.uniform(12.0, 52.0), rng.uniform(12.0, 52.0)
        return [(a, u), (b, v)] if layout == "left_of" else [(u, a), (v, b)]
    # three in a row (or column): thirds of the frame on the axis, a shared line +-3 px across
    axis = [11.5 + rng.uniform(-0.5, 0.5), 32.0 + rng.uniform(-1.0, 1.0), 52.5 + rng.uniform(-0.5, 0.5)]
    line = rng.uniform(16.0, 48.0)
    across = [line + rng.uniform(-3.0, 3.0) for _ in range(3)]
    return list(zip(axis, across)) if layout == "row" else list(zip(across, axis))


def random_scene(rng: np.random.Generator) -> Scene:
    """One scene from the whole world (any split): 1, 2 or 3 objects with COUNT_PROBS."""
    n = 1 + int(rng.choice(3, p=COUNT_PROBS))
    layouts = {1: POSITIONS, 2: RELATIONS, 3: ARRANGEMENTS}[n]
    layout = list(layouts)[rng.integers(len(layouts))]
    centres = _centres(layout, rng)  # drawn before the objects' words (the order fixes the splits)
    return Scene(tuple(_random_object(rng, x, y) for x, y in centres), layout)


def same_caption(scene: Scene, seed: int) -> Scene:
    """Another scene with `scene`'s caption: the same objects and layout, centres redrawn.

    What a generator that follows the caption perfectly may draw; rendered, these give the
    ceiling of the distribution metrics (rendered vs rendered, same captions, new placements).
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
        while True:  # rejection sampling; the rarest target (novel test scenes) has p ~ 0.15
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


def clutter_scene(rng: np.random.Generator) -> Scene:
    """Judge training only: 4-5 objects (more than MAX_OBJECTS) scattered over the frame."""
    n = int(rng.integers(MAX_OBJECTS + 1, MAX_OBJECTS + 3))
    objs = []
    for _ in range(n):
        o = _random_object(rng, 0.0, 0.0)
        objs.append(dataclasses.replace(o, x=rng.uniform(8.0, 56.0), y=rng.uniform(8.0, 56.0),
                                        size=list(SIZES)[rng.integers(2)]))  # small or medium
    return Scene(tuple(objs), "clutter")


def with_blobs(scene: Scene, rng: np.random.Generator, p: float = 0.5) -> Scene:
    """Judge training only: `scene` with each object turned into a BLOB with probability p (>= 1)."""
    pick = rng.random(len(scene.objects)) < p
    pick[rng.integers(len(pick))] = True
    objs = tuple(dataclasses.replace(o, shape=BLOB, blob_seed=int(rng.integers(2**31))) if k else o
                 for o, k in zip(scene.objects, pick))
    return Scene(objs, scene.layout)


EMPTY_SCENE = Scene((), "empty")


# ---------------------------------------------------------------------------------------------
# rendering


def _mask(obj: Obj, res: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Coverage mask of `obj` on a grid `res / IMAGE_SIZE` times finer than the image.

    `box` = (row0, row1, col0, col1) in fine-grid indices restricts it to that window
    (shape (row1 - row0, col1 - col0)); None gives the whole (res, res) grid.
    """
    scale = res / IMAGE_SIZE
    r0, r1, c0, c1 = box if box is not None else (0, res, 0, res)
    rows, cols = (np.arange(r0, r1) + 0.5) / scale, (np.arange(c0, c1) + 0.5) / scale  # image units
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    dx, dy, r = xx - obj.x, yy - obj.y, SIZES[obj.size]
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        s = r * 0.88  # a square of the same half-extent looks bigger than the circle; even out area
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if obj.shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.1
    if obj.shape == "cross":
        arm = r * 0.36  # half-width of each bar
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if obj.shape == "triangle":  # upward, bounding box [-r, r]^2, apex at top centre
        t = (dy + r) / (2 * r)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    # BLOB: a star-convex region whose radius wobbles with 2-4 random harmonics (radius <= 1.5 r)
    g = np.random.default_rng(obj.blob_seed)
    theta, rad = np.arctan2(dy, dx), np.sqrt(dx * dx + dy * dy)
    wobble = np.ones_like(theta)
    for k in g.integers(2, 6, size=g.integers(2, 5)):
        wobble += g.uniform(0.15, 0.35) * np.sin(k * theta + g.uniform(0, 2 * np.pi))
    return rad <= r * 0.85 * wobble


def _box(obj: Obj, res: int) -> tuple[int, int, int, int]:
    """Fine-grid window (row0, row1, col0, col1) that holds all of `obj` (1.6 half-extents)."""
    scale, half = res / IMAGE_SIZE, 1.6 * SIZES[obj.size] + 1
    clip = lambda v: int(min(res, max(0, v)))  # noqa: E731
    return (clip((obj.y - half) * scale), clip((obj.y + half) * scale + 1),
            clip((obj.x - half) * scale), clip((obj.x + half) * scale + 1))


def render(scene: Scene) -> np.ndarray:
    """The image of `scene`: uint8 array (64, 64, 3), anti-aliased by 4x supersampling."""
    res = IMAGE_SIZE * SUPERSAMPLE
    img = np.empty((res, res, 3), dtype=np.float32)
    img[:] = BACKGROUND
    for obj in scene.objects:  # later objects paint over earlier ones
        r0, r1, c0, c1 = box = _box(obj, res)
        img[r0:r1, c0:c1][_mask(obj, res, box)] = COLOURS[obj.colour]
    # (256, 256, 3) -> (64, 4, 64, 4, 3) -> mean over the 4x4 blocks -> (64, 64, 3)
    img = img.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(img).astype(np.uint8)


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """uint8 (N, 64, 64, 3) images of `scenes`."""
    return np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


def to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float torch tensor (N, 3, H, W) in [0, 1] (the judge's input)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
