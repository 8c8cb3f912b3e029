"""Profiling: parameters, FLOPs and measured latency per unit and block; latency lookup table.

    from slimdiff.profile import ProfileSettings, profile_unet, LatencyLUT
    result = profile_unet(unet, ProfileSettings(resolution=512), name="sd15-arch")
    lut = LatencyLUT.from_profile(result)        # or LatencyLUT.build(unet, settings)
    lut.predict(student)                          # ms, no forward pass

See METHODS.md section 1. FLOPs are 2 x MACs (slimdiff.profile.flops).
"""

from .flops import (
    UnitFlopCounter,
    analytic_unit_flops,
    downsample_flops,
    resnet_flops,
    transformer_flops,
    upsample_flops,
)
from .latency import UNetInputs, make_unet_inputs, model_latencies
from .lut import LatencyLUT, LUTMissError
from .profiler import ProfileResult, ProfileSettings, Row, profile_unet
from .signature import StemSignature, UnitSignature
from .units import ProfiledUnit, list_units

__all__ = [
    "LUTMissError",
    "LatencyLUT",
    "ProfileResult",
    "ProfileSettings",
    "ProfiledUnit",
    "Row",
    "StemSignature",
    "UNetInputs",
    "UnitFlopCounter",
    "UnitSignature",
    "analytic_unit_flops",
    "downsample_flops",
    "list_units",
    "make_unet_inputs",
    "model_latencies",
    "profile_unet",
    "resnet_flops",
    "transformer_flops",
    "upsample_flops",
]
