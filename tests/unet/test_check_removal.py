"""`check_removal` agrees with `remove_units` on every unit, layer and block of a tiny U-Net."""

import pytest

from slimdiff.unet import UNetEditError, check_removal, remove_units
from slimdiff.unet.surgery import _unit_sets, to_slim


def test_check_removal_agrees_with_remove_units(unet):
    slim = to_slim(unet)
    every = list(_unit_sets(slim.config.blocks))
    assert len(every) > 20
    # units, layers and blocks from both sides, accepted and refused ones (building is the slow part)
    names = every[::4] + ["down.1.layer.0.resnet", "up.2.layer.0.resnet", "mid", "down.3"]
    refused = 0
    for name in names:
        try:
            remove_units(slim, [name])
            built = None
        except UNetEditError as e:
            built = str(e)
        try:
            check_removal(slim, [name])
            checked = None
        except UNetEditError as e:
            checked = str(e)
        assert checked == built, name
        refused += built is not None
    assert refused > 0  # some edits are ill formed (channel-changing resnets)


def test_check_removal_unknown_name(unet):
    with pytest.raises(UNetEditError, match="unknown"):
        check_removal(unet, ["down.9.layer.0.resnet"])
