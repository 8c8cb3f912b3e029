"""VGG16-layout feature network loading torchvision-format weights; judge features; the SAS terms."""

import json

import pytest
import torch

from slimdiff.distill import distill
from slimdiff.distill.perceptual import VGG16Features, JudgeFeatures, load_perceptual_net


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-format vgg16 state dict (random features, a stub classifier entry)."""
    net = VGG16Features()
    g = torch.Generator().manual_seed(0)
    state = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.05 for k, v in net.features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(state, path)
    return path, state


def test_vgg16_loads_torchvision_layout(vgg_file, tmp_path):
    path, state = vgg_file
    net = VGG16Features.from_file(path)
    assert torch.equal(net.features[0].weight, state["features.0.weight"])  # conv1_1 at index 0
    assert torch.equal(net.features[28].bias, state["features.28.bias"])  # conv5_3 at index 28
    assert not any(p.requires_grad for p in net.parameters())
    feats = net(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                   (512, 2, 2)]
    partial = {k: v for k, v in state.items() if not k.startswith("features.28")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing \\['features.28.weight'"):
        VGG16Features.from_file(tmp_path / "partial.pth")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_perceptual_net("vgg16", str(tmp_path / "nothing.pth"), toy_world=False)
    with pytest.raises(ValueError, match="--perceptual-weights"):
        load_perceptual_net("auto", None, toy_world=False)


def test_judge_features_are_one_level():
    class Judge(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)

        def features(self, images):
            return self.lin(images.mean((2, 3)))

    feats = JudgeFeatures(Judge())(torch.rand(2, 3, 8, 8))
    assert len(feats) == 1 and feats[0].shape == (2, 4)
    assert JudgeFeatures.load().judge.version == "v2"  # the perceptual loss keeps the softness-sensitive judge


def test_sas_terms_train(make_config, vgg_file, tmp_path):
    cfg = make_config(tmp_path / "o", max_steps=1, lambda_mid=1.0, lambda_perc=1.0, perceptual_net="vgg16",
                      perceptual_weights=str(vgg_file[0]))
    result = distill(cfg, progress=False)
    record = json.loads(result.log_path.read_text().splitlines()[0])
    assert record["loss_perc"] > 0 and record["loss_mid"] > 0
    assert record["loss"] == pytest.approx(sum(record[k] for k in
                                               ("loss_task", "loss_out", "loss_feat", "loss_mid", "loss_perc")),
                                           rel=1e-5)
