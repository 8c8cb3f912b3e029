"""The FID protocol (METHODS.md section 7) and the Inception's parity with torch-fidelity's.

Parity: tests/eval/data/inception_reference.safetensors holds the features torch-fidelity's
FeatureExtractorInceptionV3 (the extractor torchmetrics' FID uses) gives for seeded random
weights and images; `make_inception_reference.py` (beside this file) regenerates it.
"""

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from slimdiff.eval import metrics
from slimdiff.report.images import image_batches, resize_center_crop
from slimdiff.eval.inception import FIDInceptionV3, load_inception

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_inception_reference import FEATURES, inception_test_weights, reference_images  # noqa: E402


def test_inception_equals_torch_fidelity_feature_extractor_on_the_same_weights():
    net = FIDInceptionV3()
    net.load_state_dict(inception_test_weights())
    ref = load_file(str(HERE / "data" / "inception_reference.safetensors"))
    assert set(ref) == set(FEATURES)
    # torch-fidelity scales uint8 u as (u - 128) / 128, pytorch-fid (ours) x in [0, 1] as 2x - 1: x = u / 256
    x = reference_images().float() / 256
    with torch.no_grad():
        for dims in (64, 192, 768, 2048):
            torch.testing.assert_close(net.pool(x, dims), ref[str(dims)], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.logits(x), ref["logits_unbiased"], rtol=1e-5, atol=1e-4)
    assert ref["2048"].std(dim=0).mean() > 1e-3  # the two images give different features


def test_resize_center_crop_keeps_the_centre():
    x = torch.zeros(1, 3, 256, 512)
    x[..., :, 128:384] = 1.0  # the centre square is white, the sides black
    y = resize_center_crop(x, 128)
    assert y.shape == (1, 3, 128, 128) and y[..., 2:-2].min() > 0.99 and y.min() > 0.9  # bicubic edge
    assert resize_center_crop(y, 128) is y  # already the size: unchanged


def _folder(path, sizes, seed=0):
    path.mkdir()
    g = torch.Generator().manual_seed(seed)
    for i, (w, h) in enumerate(sizes):
        arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(path / f"{i}.png")
    return path


def test_fid_resizes_and_centre_crops_both_sides_to_256(tmp_path, inception_file):
    g = torch.Generator().manual_seed(0)
    gen = torch.rand(3, 3, 320, 320, generator=g)  # generated at 320, scored at 256
    ref_dir = _folder(tmp_path / "ref", [(400, 300)] * 3)
    value = metrics.fid(gen, ref_dir, inception_file, dims=64)
    ref = torch.cat(list(image_batches(ref_dir, 8, size=256)))
    assert ref.shape == (3, 3, 256, 256)
    expected = metrics.fid(resize_center_crop(gen, 256), ref, inception_file, dims=64, size=None)
    assert value == pytest.approx(expected, rel=1e-6)
    scorer = metrics.FIDScorer(load_inception(inception_file), ref_dir, dims=64)  # the runner's scorer
    scorer.update(gen)
    assert scorer.size == metrics.FID_SIZE == 256 and scorer.value() == pytest.approx(expected, rel=1e-6)


def test_mixed_size_references_are_refused_unless_a_size_is_given(tmp_path, inception_file):
    ref_dir = _folder(tmp_path / "ref", [(64, 64), (64, 64), (80, 64)])
    gen = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"differ in size: .*0\.png is 64x64, .*2\.png is 80x64"):
        metrics.frechet_distance(gen, ref_dir, load_inception(inception_file).eval(), size=None)
    with pytest.raises(ValueError, match="differ in size"):
        list(image_batches(ref_dir, 2))
    assert metrics.fid(gen, ref_dir, inception_file, dims=64) > 0  # size 256 (the default): resized, cropped


def test_unreadable_images_and_weights_are_named(tmp_path):
    ref_dir = _folder(tmp_path / "ref", [(32, 32)] * 2)
    data = (ref_dir / "1.png").read_bytes()
    (ref_dir / "1.png").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"1\.png is not a readable image"):
        list(image_batches(ref_dir, 8))
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x65" * 200)  # `evaluate --inception-weights` of a wrong file
    with pytest.raises(ValueError, match=r"weights\.pth is not a readable FID Inception-v3 weights file"):
        load_inception(bad)
    torch.save([1, 2], bad)
    with pytest.raises(ValueError, match="holds a list"):
        load_inception(bad)


def test_inception_score_splits_are_not_lowered_silently(tmp_path, inception_file):
    from slimdiff import sample
    from slimdiff.eval import evaluation
    from slimdiff.eval import toy as eval_toy
    from slimdiff.sample import load as sample_load

    with pytest.raises(ValueError, match=r"num_images >= 10 .*got 3"):
        evaluation.evaluate("toy", toy=False, prompts=["a"] * 3, num_images=3, inception_weights=inception_file)
