"""The SDXL students of the field as presets (issue 23 item 2): exact structures on SDXL-base's
topology, their parameter counts on sdxl-arch against the published ones, inheritance, and a plain
diffusers export with the same outputs, on a tiny SDXL-topology U-Net."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from slimdiff.cli.names import PRESETS as PRESET_NAMES
from slimdiff.testing import tiny_sdxl_base_unet_config, tiny_sdxl_unet, tiny_unet
from slimdiff.unet import PRESETS, apply_preset, to_diffusers
from slimdiff.unet.builtins import SDXL_CONFIG
from slimdiff.unet.presets import topology_of

SDXL = [n for n, p in PRESETS.items() if p.teacher == "sdxl"]
# preset -> (exact parameter count on sdxl-arch, the diffusers config keys of its published U-Net)
EXPECTED = {
    "bk-sdxl": (1_304_160_324, dict(layers_per_block=1, mid_block_type=None)),
    "koala-1b": (1_161_184_324, dict(layers_per_block=1, transformer_layers_per_block=[1, 2, 6])),
    "koala-700m": (782_822_724, dict(layers_per_block=1, transformer_layers_per_block=[1, 2, 5], mid_block_type=None)),
    "ssd-1b": (1_300_195_844, dict(transformer_layers_per_block=[1, 2, 4], mid_block_type=None,
                                   reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1])),
    "vega": (744_102_404, dict(transformer_layers_per_block=[1, 2, 2], mid_block_type=None,
                               reverse_transformer_layers_per_block=[[2, 2, 2], [2, 1, 1], 1])),
}


def test_every_sdxl_preset_is_tested_and_named_for_the_cli():
    assert sorted(SDXL) == sorted(EXPECTED)
    assert set(SDXL) <= set(PRESET_NAMES)


@pytest.fixture(scope="module")
def sdxl_arch():
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_CONFIG)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_on_sdxl_arch_are_the_published_unets(name, sdxl_arch):
    """The student equals (structure and count) a diffusers U-Net built from its published config."""
    params, published = EXPECTED[name]
    student, info = apply_preset(sdxl_arch, name)
    assert info["student_params"] == student.num_parameters() == params
    if PRESETS[name].published_params:  # within 0.5% of the rounded published count
        assert abs(params / PRESETS[name].published_params - 1) < 0.005
    with torch.device("meta"):
        reference = UNet2DConditionModel(**{**SDXL_CONFIG, **published})
    assert reference.num_parameters() == params
    assert topology_of(student) == topology_of(reference)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_on_a_tiny_sdxl_export_plain_with_inherited_weights(name):
    teacher = tiny_sdxl_unet(seed=3, **{k: v for k, v in tiny_sdxl_base_unet_config().items()})
    student, info = apply_preset(teacher, name)
    plain = to_diffusers(student)
    assert type(plain) is UNet2DConditionModel
    for key, value in EXPECTED[name][1].items():  # per-layer lists compared up to compaction ([2, 2, 2] == 2)
        assert _compact(plain.config[key]) == _compact(value), key
    # every tensor is inherited from the teacher (none new), and equal to it
    t = teacher.state_dict()
    s = student.state_dict()
    assert all(src is not None for src in student.inheritance.values())
    assert all(torch.equal(s[k], t[src]) for k, src in student.inheritance.items())
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 64, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        a = student(x, 500, ehs, added_cond_kwargs=added).sample
        b = plain(x, 500, ehs, added_cond_kwargs=added).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_preset_on_the_wrong_teacher_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"needs an SDXL-base U-Net topology"):
        apply_preset(tiny_unet(), "koala-1b")
    with pytest.raises(ValueError, match=r"needs an SD-1.x/2.x U-Net topology"):
        apply_preset(tiny_sdxl_unet(**tiny_sdxl_base_unet_config()), "bk-small")


def _compact(value):
    """A per-block list with each uniform per-layer list written as its one value: [[2, 2, 2], 1] -> [2, 1]."""
    if not isinstance(value, (list, tuple)):
        return value
    return [v[0] if isinstance(v, (list, tuple)) and len(set(v)) == 1 else list(v) if isinstance(v, tuple) else v
            for v in value]
