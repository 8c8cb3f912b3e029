"""slimdiff.modules: new unit types of the editable U-Net (DESIGN.md "One representation").

- `condconv`: CLME-CondConv resnets (A-SDM section 2.3): `apply_condconv(student, teacher, CondConvSettings())`
- `gri`: global-regional interactive attention (A-SDM section 1): `apply_gri(model, GRISettings())`

Both register their unit types at import (`slimdiff.unet.register_unit_type`), so models using them save
with `save_pretrained`, load with `from_pretrained` and serve as a pipeline's `unet`.
"""

from .condconv import CondConv2d, CondConvResnetBlock2D, CondConvSettings, apply_condconv
from .gri import GRIAttnProcessor, GRISettings, GRITransformer2DModel, apply_gri, gri_attention

__all__ = ["CondConv2d", "CondConvResnetBlock2D", "CondConvSettings", "apply_condconv", "GRIAttnProcessor",
           "GRISettings", "GRITransformer2DModel", "apply_gri", "gri_attention"]
