"""Metrics on known inputs: FID identities, a reference FID from scipy, Inception layout, CLIP, errors."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from slimdiff.eval import metrics
from slimdiff.eval.inception import FID_WEIGHTS_NAME, FIDInceptionV3, load_inception
from slimdiff.report.images import to_pil, to_tensor


def _images(n, seed, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class MeanColour(nn.Module):
    """Features = per-channel mean and std: (N, 6). No num_features attribute (it is inferred)."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Heusel et al. (2017) eq. 6 with scipy's matrix square root (pytorch-fid's formula)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    a = _images(32, 0)
    feat = MeanColour()
    assert abs(metrics.frechet_distance(a, a, feat)) < 1e-6
    small = metrics.frechet_distance((a + 0.05).clamp(0, 1), a, feat)
    large = metrics.frechet_distance((a + 0.3).clamp(0, 1), a, feat)
    assert 0 < small < large


def test_fid_matches_the_reference_formula():
    a, b = _images(40, 1), _images(30, 2) * 0.7 + 0.2
    feat = MeanColour()
    expected = _reference_fid(feat(a).double().numpy(), feat(b).double().numpy())
    assert metrics.frechet_distance(a, b, feat) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_judge_fid_wraps_the_judges_features_for_torchmetrics(fake_judge):
    a, b = _images(24, 3), _images(24, 4) * 0.5
    value = metrics.judge_fid(b, a, fake_judge)
    with torch.no_grad():
        expected = _reference_fid(fake_judge.features(b).double().numpy(), fake_judge.features(a).double().numpy())
    assert value == pytest.approx(expected, rel=1e-4)
    assert abs(metrics.judge_fid(a, a, fake_judge)) < 1e-6
    # the wrapper torchmetrics sees: an nn.Module with num_features = the judge's D
    wrapped = metrics.FeatureModule(fake_judge, 8)
    assert wrapped(a[:2]).shape == (2, 8) and wrapped.num_features == 8


def test_fid_inputs_pil_and_arrays_equal_tensors():
    a = (_images(6, 5) * 255).round() / 255
    as_uint8 = (a * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    assert torch.equal(to_tensor(as_uint8), a)
    feat = MeanColour()
    pil = to_pil(a)
    assert metrics.frechet_distance(pil, a[:3], feat) == pytest.approx(metrics.frechet_distance(a, a[:3], feat))


def test_fid_needs_two_images_and_unit_range():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(_images(1, 0), _images(4, 1), MeanColour())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.frechet_distance(_images(4, 0) * 2, _images(4, 1), MeanColour())


def test_fid_inception_has_pytorch_fid_layout():
    net = FIDInceptionV3()
    state = net.state_dict()
    # torchvision Inception3 (1008 classes, no aux head) has 23,850,960 parameters
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["fc.weight"].shape == (1008, 2048)
    x = _images(2, 0, size=24)
    with torch.no_grad():
        assert net(x).shape == (2, 2048) and net.logits(x).shape == (2, 1008)
        assert [net.pool(x, d).shape[1] for d in (64, 192, 768)] == [64, 192, 768]


def test_missing_weights_errors_name_the_path_and_the_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_NAME) as e:
        metrics.fid(_images(2, 0), _images(2, 1), inception_weights=missing)
    assert str(missing) in str(e.value)
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_NAME):
        metrics.inception_score(_images(10, 0), inception_weights=tmp_path)  # a directory without the file
    with pytest.raises(FileNotFoundError, match="config.json") as e:
        metrics.clip_score(_images(2, 0), ["a", "b"], clip_dir=tmp_path / "clip")
    assert str(tmp_path / "clip") in str(e.value)


def test_wrong_state_dict_is_refused(tmp_path):
    path = tmp_path / FID_WEIGHTS_NAME
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an FID Inception-v3 state dict"):
        load_inception(tmp_path)


def test_fid_and_inception_score_with_a_weights_file(inception_file):
    """The whole path with random weights (the real file cannot be downloaded here)."""
    a, b = _images(3, 0), _images(3, 1) * 0.3
    # dims=64 (first block only) keeps this fast; 2048 costs a 2048x2048 eigendecomposition
    assert abs(metrics.fid(a, a, inception_file, dims=64)) < 1e-4
    assert metrics.fid(a, b, inception_file, dims=64) > 1e-2
    mean, std = metrics.inception_score(torch.cat([a, b]), inception_file, splits=2, seed=0)
    assert mean >= 1.0 and std >= 0.0


def test_fid_streams_folders(tmp_path):
    a, b = [(x * 255).round() / 255 for x in (_images(6, 0), _images(5, 1) * 0.5)]  # exact in a PNG
    for name, images in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(to_pil(images)):
            im.save(tmp_path / name / f"{i}.png")
    feat = MeanColour()
    expected = metrics.frechet_distance(b, a, feat)
    assert metrics.frechet_distance(tmp_path / "b", tmp_path / "a", feat, batch_size=2) == pytest.approx(expected)
    with pytest.raises(FileNotFoundError, match="no images"):
        metrics.frechet_distance(a, tmp_path, feat)


def test_clip_score_is_the_mean_cosine_of_clip_embeddings(tiny_clip_dir):
    images = _images(3, 7)
    prompts = ["a red circle", "a large blue square on the left", "a small green triangle"]
    score = metrics.clip_score(images, prompts, tiny_clip_dir)
    # by hand for the first pair: embed, normalise, dot
    model, processor = metrics.load_clip(tiny_clip_dir)
    with torch.no_grad():
        pix = processor(images=[(images[0] * 255).round().to(torch.uint8)], return_tensors="pt")["pixel_values"]
        txt = processor(text=prompts[:1], return_tensors="pt", padding=True)
        img_e = metrics._embedding(model.get_image_features(pixel_values=pix))
        txt_e = metrics._embedding(model.get_text_features(**txt))
    first = torch.nn.functional.cosine_similarity(img_e, txt_e).item()
    assert metrics.clip_score(images[:1], prompts[:1], tiny_clip_dir) == pytest.approx(first, abs=1e-5)
    assert -1 <= score <= 1
    assert metrics.clip_score(images, prompts, tiny_clip_dir, batch_size=1) == pytest.approx(score, abs=1e-5)
    with pytest.raises(ValueError, match="one prompt per image"):
        metrics.clip_score(images, prompts[:2], tiny_clip_dir)
