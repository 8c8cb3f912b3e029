"""One helper per job across the package (issue 12 items 4 and 12): repeated copies drift apart.

Each check names what must be used instead, and where the one definition lives, so that a new
copy anywhere fails.
"""

import re
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "slimdiff"


def _grep(pattern: str) -> list[str]:
    rx = re.compile(pattern, re.M)
    return sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if rx.search(p.read_text()))


@pytest.mark.parametrize("pattern, allowed, use", [
    (r"\.savefig\(", ["report/plots.py"], "slimdiff.report.plots.save_figure"),
    (r"^IMAGE_EXTENSIONS\s*=", ["data/common.py"], "slimdiff.data.common.IMAGE_EXTENSIONS"),
    (r"sum\(\w\.numel\(\) for \w in \w+\.parameters\(\)\)", ["unet/access.py"],
     "ModelMixin.num_parameters() or slimdiff.unet.num_params"),
    (r"def (time_ms|_sync)\b", ["profile/latency.py"], "slimdiff.profile.latency.time_call"),
    (r"def (cross_attention_dims?|text_width)\b", ["unet/access.py"], "slimdiff.unet.text_width"),
    (r"class EMA\b|EMAModel\(|\.mul_\(\w*decay\)", ["train/ema.py"], "slimdiff.train.ema.EMA"),
])
def test_one_definition(pattern, allowed, use):
    assert _grep(pattern) == allowed, f"use {use}"


def test_save_figure_writes_and_closes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimdiff.report.plots import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = save_figure(fig, tmp_path / "f.png", dpi=50)
    assert path.read_bytes()[:4] == b"\x89PNG" and not plt.fignum_exists(fig.number)
    assert not list(tmp_path.glob(".*"))  # no temporary left


def test_num_params_of_models_and_units():
    from slimdiff.testing import tiny_unet
    from slimdiff.unet import get_module, num_params, to_slim

    unet = tiny_unet()
    slim = to_slim(unet)
    total = sum(p.numel() for p in unet.parameters())
    assert num_params(unet) == num_params(slim) == slim.num_parameters() == total
    unit = get_module(slim, "mid.attn")
    assert num_params(unit) == sum(p.numel() for p in unit.parameters()) and isinstance(unit, torch.nn.Module)


def test_ema_without_warm_up_is_the_plain_average():
    from slimdiff.train.ema import EMA

    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9, warmup=False)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update([p])
    ema.update([p])
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1 - 0.9**2))  # 0.9 * 0.1 + 0.1
    assert EMA([p], decay=0.9).current_decay() == 0.1  # with warm-up: (1 + 0) / (10 + 0)
