"""slimdiff.modules: new unit types of the editable U-Net (DESIGN.md "One representation").

- `condconv`: CLME-CondConv resnets (A-SDM section 2.3): `apply_condconv(student, teacher, CondConvSettings())`
- `gri`: global-regional interactive attention (A-SDM section 1): `apply_gri(model, GRISettings())`
- `md_units`, `mobilediffusion`: MobileDiffusion's block types (separable ResNets; decoupled, shared-K/V,
  ReLU-attention, trimmed-FF, swish transformers): `apply_md_tricks(model, MDTricks(...))`, presets `md`, `md-lite`

Both register their unit types at import (`slimdiff.unet.register_unit_type`), so models using them save
with `save_pretrained`, load with `from_pretrained` and serve as a pipeline's `unet`.
"""

from .condconv import CondConv2d, CondConvResnetBlock2D, CondConvSettings, apply_condconv
from .gri import GRIAttnProcessor, GRISettings, GRITransformer2DModel, apply_gri, gri_attention
from .md_units import MDTransformer2DModel, SeparableResnetBlock2D, md_attention, set_relu_mix
from .mobilediffusion import MDTricks, apply_md_tricks, build_md, replacement_options

__all__ = ["CondConv2d", "CondConvResnetBlock2D", "CondConvSettings", "apply_condconv", "GRIAttnProcessor",
           "GRISettings", "GRITransformer2DModel", "apply_gri", "gri_attention", "MDTransformer2DModel",
           "SeparableResnetBlock2D", "md_attention", "set_relu_mix", "MDTricks", "apply_md_tricks", "build_md",
           "replacement_options"]
