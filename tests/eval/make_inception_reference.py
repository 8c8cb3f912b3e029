"""Write tests/eval/data/inception_reference.safetensors: torch-fidelity's FID Inception on seeded weights.

torchmetrics' FID feature extractor is torch-fidelity's `FeatureExtractorInceptionV3`; this script
runs it on the seeded random weights of `inception_test_weights()` and two seeded 299x299 uint8
images, and stores its features (64, 192, 768, 2048, logits_unbiased) for the parity test
(tests/eval/test_eval_fid_protocol.py), which then needs no torch-fidelity.

    pip download torch-fidelity==0.4.0 --no-deps -d /tmp/tf && unzip -q /tmp/tf/*.whl -d /tmp/tf/src
    PYTHONPATH=src:/tmp/tf/src python tests/eval/make_inception_reference.py

(torch-fidelity's package __init__ imports torchvision; only its Inception module is imported here.)
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
FEATURES = ("64", "192", "768", "2048", "logits_unbiased")


def inception_test_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded FID-Inception state dict: He-scaled convs, batch norms near identity (activations stay O(1))."""
    from slimdiff.eval.inception import FIDInceptionV3

    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in sorted(FIDInceptionV3().state_dict().items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(t)
        elif t.ndim == 4:  # conv (out, in, kh, kw)
            state[name] = torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5
        elif name.endswith("running_var"):
            state[name] = 1.0 + 0.1 * torch.rand(t.shape, generator=g)
        elif name.endswith(".bn.weight"):
            state[name] = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:  # bn bias / running_mean, fc weight / bias
            state[name] = 0.1 * torch.randn(t.shape, generator=g)
    return state


def reference_images(seed: int = 0) -> torch.Tensor:
    """(2, 3, 299, 299) uint8: smooth random images (noise upsampled), so pooling sees structure."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2, 3, 12, 12, generator=g)
    x = torch.nn.functional.interpolate(low, size=(299, 299), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


def stub_package() -> None:
    """Make `torch_fidelity` a bare package, so its submodules import without its __init__ (torchvision)."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        raise ModuleNotFoundError("torch_fidelity not found (see this script's docstring)")
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = pkg


def fidelity_extractor(weights_path: str, features=FEATURES):
    """torch-fidelity's FeatureExtractorInceptionV3 loaded from a local weights file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3("inception-v3-compat", list(features), feature_extractor_weights_path=weights_path)


def main() -> None:
    stub_package()  # before slimdiff imports torchmetrics, which imports torch_fidelity when present
    state = inception_test_weights()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "w.pth")
        torch.save(state, path)
        net = fidelity_extractor(path)
        with torch.no_grad():
            out = net(reference_images())
    tensors = {name: t.contiguous() for name, t in zip(FEATURES, out)}
    (HERE / "data").mkdir(exist_ok=True)
    save_file(tensors, str(HERE / "data" / "inception_reference.safetensors"),
              metadata={"source": "torch-fidelity 0.4.0 FeatureExtractorInceptionV3", "seed": "0"})
    print({k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
