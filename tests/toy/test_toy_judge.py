"""The shipped judge reads rendered scenes back; its score counts caption attributes."""

import pytest
import torch

from slimdiff.toy import world
from slimdiff.toy.judge import HEADS, Judge



def test_judge_reads_rendered_test_scenes():
    from slimdiff.toy.judge import load_judge

    judge = load_judge()
    assert not judge.training
    scenes = world.sample_scenes("test", 96, seed=11)
    images = world.to_tensor(world.render_batch(scenes))
    result = judge.score(images, scenes)
    assert result["alignment"] >= 0.97
    assert min(result["per_attribute"].values()) >= 0.97
    feats = judge.features(images)
    assert feats.shape == (96, 256) and torch.isfinite(feats).all()
    # upsampled inputs are resized back to 32x32
    big = torch.nn.functional.interpolate(images[:8], scale_factor=2, mode="nearest")
    assert judge.score(big, scenes[:8])["alignment"] >= 0.9


def test_score_counts_attributes_per_caption():
    """A judge that always answers the same thing: exact expected fractions."""
    judge = Judge().eval()
    one = world.Scene((world.Obj("red", "circle", "small", 8, 16),), "left")
    two = world.Scene((world.Obj("red", "circle", "small", 8, 16), world.Obj("blue", "square", "large", 24, 16)),
                      "left_of")
    # answer exactly `one`'s attributes for every image (count 1, left, red circle small; slot 1 blue square large)
    answer = {**one.attributes(), "colour1": "blue", "shape1": "square", "size1": "large"}
    judge.predict = lambda images: [answer for _ in range(len(images))]
    result = judge.score(torch.zeros(2, 3, 32, 32), [one, two])
    # `one`: 5/5 right; `two`: colour0/shape0/size0 + slot-1 three right, count and layout wrong -> 6/8
    assert result["alignment"] == pytest.approx(11 / 13)
    assert result["all_correct"] == 0.5
    assert result["per_attribute"]["count"] == 0.5 and result["per_attribute"]["colour"] == 1.0
    assert set(HEADS) >= set(two.attributes())
    with pytest.raises(ValueError, match="2 images but 1 scenes"):
        judge.score(torch.zeros(2, 3, 32, 32), [one])
