"""The toy world: deterministic rendering, captions that match the pixels, splits that hold out."""

import dataclasses

import numpy as np
import pytest

from slimdiff.toy import world
from slimdiff.toy.tokenizer import build_tokenizer


def test_same_seed_same_pixels():
    a = world.sample_scenes("train", 16, seed=3)
    b = world.sample_scenes("train", 16, seed=3)
    assert a == b
    assert np.array_equal(world.render_batch(a), world.render_batch(b))
    c = world.sample_scenes("train", 16, seed=4)
    assert not np.array_equal(world.render_batch(a), world.render_batch(c))


def test_render_shape_and_background():
    img = world.render(world.sample_scenes("test", 1, seed=0)[0])
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == world.BACKGROUND  # corners are never covered


def test_caption_examples():
    a = world.Obj("red", "circle", "small", 16, 32)
    b = world.Obj("blue", "square", "large", 48, 32)
    c = world.Obj("pink", "cross", "medium", 52, 32)
    assert world.caption(world.Scene((a, b), "left_of")) == "a small red circle left of a large blue square"
    assert world.caption(world.Scene((b,), "top")) == "a large blue square at the top"
    assert (world.caption(world.Scene((a, b, c), "row"))
            == "a small red circle , a large blue square and a medium pink cross in a row")
    with pytest.raises(ValueError, match="colour 'brown'"):
        world.Obj("brown", "circle", "small", 8, 8)
    with pytest.raises(ValueError, match="1-object layout 'above'"):
        world.Scene((a,), "above")
    with pytest.raises(ValueError, match="1 to 3 objects, got 4"):
        world.Scene((a, b, c, a), "row")
    assert world.EMPTY_SCENE.attributes() == {"count": "0"}
    assert world.clutter_scene(np.random.default_rng(0)).attributes()["count"] == "4+"


# probe points (dx, dy) in half-extents, and which shapes cover them (masks in world._mask)
_PROBES = ((0.8, 0.8), (0.0, -0.9), (0.5, 0.5), (-0.7, 0.0), (0.6, 0.6))
_SIGNATURES = {(0, 1, 1, 1, 1): "circle", (1, 0, 1, 1, 1): "square", (1, 1, 1, 0, 1): "triangle",
               (0, 1, 1, 1, 0): "diamond", (0, 1, 0, 1, 0): "cross"}
# covered area / r^2 per shape: pi, (2 * 0.88)^2, 2 (triangle), 2 * 1.1^2 (diamond), cross bars
_AREA = {"circle": np.pi, "square": 1.76**2, "triangle": 2.0, "diamond": 2 * 1.1**2, "cross": 2 * 0.72 * 2 - 0.72**2}


def _shape_signature(obj, res=512):
    """Which shape the fine coverage mask draws, from the probe points it covers."""
    mask, scale, r = world._mask(obj, res), res / world.IMAGE_SIZE, world.SIZES[obj.size]
    at = lambda dx, dy: int(mask[int((obj.y + dy * r) * scale), int((obj.x + dx * r) * scale)])  # noqa: E731
    return _SIGNATURES.get(tuple(at(dx, dy) for dx, dy in _PROBES))


@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_agree_with_caption(split):
    """Read caption attributes back from the pixels: colour at the centre, shape from the
    coverage mask, size from the covered area, order along the layout's axis, position."""
    for scene in world.sample_scenes(split, 60, seed=1):
        img = world.render(scene).astype(int)
        for obj in scene.objects:
            cy, cx = int(obj.y), int(obj.x)
            assert tuple(img[cy, cx]) == world.COLOURS[obj.colour], world.caption(scene)
            assert _shape_signature(obj) == obj.shape, world.caption(scene)
            area = world._mask(obj, 256).sum() / 16  # pixels at the image's resolution
            r = world.SIZES[obj.size]
            assert abs(area / (_AREA[obj.shape] * r * r) - 1) < 0.05, (world.caption(scene), area)
        objs = scene.objects
        if len(objs) >= 2:
            horizontal = scene.layout in ("left_of", "row")
            coords = [o.x if horizontal else o.y for o in objs]
            assert coords == sorted(coords) and min(np.diff(coords)) >= 19, world.caption(scene)
        else:
            o = objs[0]
            side = {"left": o.x < 20, "right": o.x > 44, "top": o.y < 20, "bottom": o.y > 44,
                    "middle": 28 < o.x < 36 and 28 < o.y < 36}
            assert side[scene.layout], world.caption(scene)
        for o in objs:  # a large object stays inside the frame
            r = world.SIZES[o.size]
            assert r - 1 <= o.x <= 64 - r + 1 and r - 1 <= o.y <= 64 - r + 1, world.caption(scene)


def test_blobs_are_no_shape():
    rng = np.random.default_rng(0)
    for scene in world.sample_scenes("all", 20, seed=2):
        blobbed = world.with_blobs(scene, rng)
        assert any(o.shape == world.BLOB for o in blobbed.objects)
        for o in blobbed.objects:  # a blob's outline matches no shape of the same size and place
            if o.shape == world.BLOB:
                m = world._mask(o, 256)
                for shape in world.SHAPES:
                    other = world._mask(dataclasses.replace(o, shape=shape), 256)
                    assert (m & other).sum() / (m | other).sum() < 0.9
        assert world.render(blobbed).shape == (64, 64, 3)


def test_splits_hold_out_pairs_and_compositions():
    train = world.sample_scenes("train", 2000, seed=0)
    test = world.sample_scenes("test", 400, seed=0)
    assert not any(world.is_novel(s) for s in train)
    assert not any(world.is_novel(s) for s in world.sample_scenes("validation", 300, seed=0))
    novel = [s for s in test if world.is_novel(s)]
    assert 0.15 < len(novel) / len(test) < 0.35  # TEST_NOVEL_FRACTION = 0.25
    train_structures = {s.structure() for s in train}
    assert not train_structures & {s.structure() for s in test}
    # every colour and every shape is still seen in training; all three object counts occur
    assert {len(s.objects) for s in train} == {1, 2, 3}
    assert {o.colour for s in train for o in s.objects} == set(world.COLOURS)
    assert {o.shape for s in train for o in s.objects} == set(world.SHAPES)
    with pytest.raises(ValueError, match="split 'dev'"):
        world.sample_scenes("dev", 1)


def test_tokenizer_covers_every_caption():
    tok = build_tokenizer()
    for s in world.sample_scenes("all", 200, seed=0):
        ids = tok(world.caption(s), padding="max_length", truncation=True).input_ids
        assert len(ids) == tok.model_max_length
        assert tok.unk_token_id not in ids
        assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids


def test_same_caption_keeps_the_caption_and_moves_the_objects():
    from slimdiff.toy import world

    for scene in world.sample_scenes("test", 20, seed=3):
        other = world.same_caption(scene, seed=1)
        assert world.caption(other) == world.caption(scene)
        assert world.split_of(other) == world.split_of(scene)
        assert [(o.x, o.y) for o in other.objects] != [(o.x, o.y) for o in scene.objects]
        assert other == world.same_caption(scene, seed=1)  # seeded
