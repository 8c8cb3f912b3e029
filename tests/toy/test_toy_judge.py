"""The shipped judge reads rendered scenes back (broken ones too); its score counts caption attributes."""

import numpy as np
import pytest
import torch

from slimdiff.toy import JUDGES, world
from slimdiff.toy.judge import HEADS, Judge, summarize


@pytest.fixture(scope="module", params=list(JUDGES))
def judge(request):
    """Every shipped judge version must read rendered scenes and see broken ones."""
    from slimdiff.toy.judge import load_judge

    return load_judge(version=request.param)


def test_judge_reads_rendered_test_scenes(judge):
    assert not judge.training and judge.pca is not None
    scenes = world.sample_scenes("test", 128, seed=11)
    images = world.to_tensor(world.render_batch(scenes))
    result = judge.score(images, scenes)
    assert result["alignment"] >= 0.98 and result["all_correct"] >= 0.9
    assert min(result["per_attribute"].values()) >= 0.97
    assert result["alignment_score"] >= 0.95
    feats = judge.features(images)
    assert feats.shape == (128, 256) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match=r"reads \(N, 3, 64, 64\) images"):
        judge.score(torch.zeros(2, 3, 32, 32), scenes[:2])


def test_judge_sees_missing_extra_and_broken_objects(judge):
    """Empty canvases read as 0 objects, 4-5 objects as '4+', blobs as no shape: never a scene."""
    rng = np.random.default_rng(5)
    clutter = [world.clutter_scene(rng) for _ in range(32)]
    blobs = [world.with_blobs(s, rng, p=1.0) for s in world.sample_scenes("test", 32, seed=3)]
    preds = judge.predict(world.to_tensor(world.render_batch(clutter + blobs + [world.EMPTY_SCENE] * 4)))
    assert np.mean([p["count"] == "4+" for p in preds[:32]]) >= 0.8
    blob_shapes = [p[f"shape{i}"] for p, s in zip(preds[32:64], blobs) for i in range(len(s.objects))]
    assert np.mean([b == world.BLOB for b in blob_shapes]) >= 0.8
    assert all(p["count"] == "0" for p in preds[64:])


def test_score_counts_attributes_per_caption():
    """A judge that always answers the same thing: exact expected fractions and probabilities."""
    judge = Judge().eval()
    one = world.Scene((world.Obj("red", "circle", "small", 16, 32),), "left")
    two = world.Scene((world.Obj("red", "circle", "small", 16, 32), world.Obj("blue", "square", "large", 48, 32)),
                      "left_of")
    # answer `one`'s attributes with probability 0.9 for every image; slot 1 blue square large
    answer = {**one.attributes(), "colour1": "blue", "shape1": "square", "size1": "large"}

    def probabilities(images, batch_size=512):
        out = {}
        for k, classes in HEADS.items():
            p = torch.full((len(images), len(classes)), 0.1 / (len(classes) - 1))
            if k in answer:
                p[:, classes.index(answer[k])] = 0.9
            out[k] = p
        return out

    judge.probabilities = probabilities
    result = judge.score(torch.zeros(2, 3, 64, 64), [one, two])
    # `one`: 5/5 right; `two`: colour0/shape0/size0 + slot-1 three right, count and layout wrong -> 6/8
    assert result["alignment"] == pytest.approx(11 / 13)
    assert result["all_correct"] == 0.5
    assert result["per_attribute"]["count"] == 0.5 and result["per_attribute"]["colour"] == 1.0
    # mean probability of the caption's attributes: one 0.9; two (6 x 0.9 + count 0.1/4 + layout 0.1/8) / 8
    p_two = (6 * 0.9 + 0.1 / (len(HEADS["count"]) - 1) + 0.1 / (len(HEADS["layout"]) - 1)) / 8
    assert result["alignment_score"] == pytest.approx((0.9 + p_two) / 2, rel=1e-5)
    per = judge.per_image(torch.zeros(2, 3, 64, 64), [one, two])
    assert summarize(per, np.array([0, 0]))["all_correct"] == 1.0  # a draw of image 0 twice
    assert set(HEADS) >= set(two.attributes())
    with pytest.raises(ValueError, match="2 images but 1 scenes"):
        judge.score(torch.zeros(2, 3, 64, 64), [one])


def test_judge_versions_switch_with_their_own_features_and_pca():
    """Each shipped judge loads by version with its own weights and feature basis; the default is one of them."""
    from slimdiff.eval.config import EvalConfig
    from slimdiff.eval.toy import features, shared_judge
    from slimdiff.toy import DEFAULT_JUDGE, JUDGES, judge_path
    from slimdiff.toy.judge import load_judge

    judges = {v: load_judge(version=v) for v in JUDGES}
    assert [j.version for j in judges.values()] == list(JUDGES) and load_judge().version == DEFAULT_JUDGE
    assert load_judge(judge_path("v2")).version == str(judge_path("v2"))
    images = world.to_tensor(world.render_batch(world.sample_scenes("test", 4, seed=0)))
    v2, v3 = judges["v2"], judges["v3"]
    assert not torch.equal(v2.features(images), v3.features(images))
    assert not torch.equal(v2.pca["mean"], v3.pca["mean"])  # judge-FID / KID standardise with the judge's own basis
    assert torch.equal(features(v3, images), features(load_judge(version="v3"), images))
    assert shared_judge("v3") is shared_judge("v3") and shared_judge(None) is shared_judge(DEFAULT_JUDGE)
    with pytest.raises(ValueError, match=r"judge version 'v9' is not one of \['v2', 'v3'\]"):
        load_judge(version="v9")
    with pytest.raises(ValueError, match="a judge path or a version, not both"):
        load_judge(judge_path("v2"), version="v2")
    with pytest.raises(ValueError, match=r"judge_version 'v1' is not one of"):
        EvalConfig(judge_version="v1")
