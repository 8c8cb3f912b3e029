"""The toy world: deterministic rendering, captions that match the pixels, splits that hold out."""

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
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == world.BACKGROUND  # corners are never covered


def test_caption_examples():
    a = world.Obj("red", "circle", "small", 8, 16)
    b = world.Obj("blue", "square", "large", 24, 16)
    assert world.caption(world.Scene((a, b), "left_of")) == "a small red circle left of a large blue square"
    assert world.caption(world.Scene((b,), "top")) == "a large blue square at the top"
    with pytest.raises(ValueError, match="colour 'pink'"):
        world.Obj("pink", "circle", "small", 8, 8)
    with pytest.raises(ValueError, match="one-object layout"):
        world.Scene((a,), "above")


def _shape_signature(obj, res=512):
    """Which shape the fine coverage mask draws: probe an upper-left point (-0.6r, -0.5r),
    inside circles and squares but outside upward triangles, and a lower corner (0.8r, 0.8r),
    inside squares and triangles but outside circles."""
    mask, scale, r = world._mask(obj, res), res / world.IMAGE_SIZE, world.SIZES[obj.size]
    at = lambda dx, dy: bool(mask[int((obj.y + dy) * scale), int((obj.x + dx) * scale)])
    upper, corner = at(-0.6 * r, -0.5 * r), at(0.8 * r, 0.8 * r)
    return {(True, True): "square", (True, False): "circle", (False, True): "triangle"}.get((upper, corner))


@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_agree_with_caption(split):
    """Read caption attributes back from the pixels: colour at the centre, size from the
    covered area, order along the relation axis, position; shape from the coverage mask."""
    for scene in world.sample_scenes(split, 60, seed=1):
        img = world.render(scene).astype(int)
        covered = np.abs(img - np.array(world.BACKGROUND)).sum(-1) > 30  # (32, 32)
        areas = []
        for obj in scene.objects:
            cy, cx = int(obj.y), int(obj.x)
            assert tuple(img[cy, cx]) == world.COLOURS[obj.colour], world.caption(scene)
            assert _shape_signature(obj) == obj.shape, world.caption(scene)
            r = world.SIZES[obj.size]
            box = covered[max(0, int(obj.y - r - 1)) : int(obj.y + r + 2), max(0, int(obj.x - r - 1)) : int(obj.x + r + 2)]
            areas.append(box.sum())
            # small objects cover < 70 pixels, large ones > 85 (triangles are the smallest)
            assert (box.sum() < 70) if obj.size == "small" else (box.sum() > 85), (world.caption(scene), box.sum())
        if len(scene.objects) == 2:
            a, b = scene.objects
            assert (a.x < b.x) if scene.layout == "left_of" else (a.y < b.y)
        else:
            o = scene.objects[0]
            side = {"left": o.x < 12, "right": o.x > 20, "top": o.y < 12, "bottom": o.y > 20,
                    "middle": 12 < o.x < 20 and 12 < o.y < 20}
            assert side[scene.layout], world.caption(scene)


def test_splits_hold_out_pairs_and_compositions():
    train = world.sample_scenes("train", 2000, seed=0)
    test = world.sample_scenes("test", 400, seed=0)
    assert not any(world.is_novel(s) for s in train)
    assert not any(world.is_novel(s) for s in world.sample_scenes("validation", 300, seed=0))
    novel = [s for s in test if world.is_novel(s)]
    assert 0.15 < len(novel) / len(test) < 0.35  # TEST_NOVEL_FRACTION = 0.25
    train_structures = {s.structure() for s in train}
    assert not train_structures & {s.structure() for s in test}
    # every colour and every shape is still seen in training
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
