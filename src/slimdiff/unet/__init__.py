"""slimdiff.unet: the editable U-Net (DESIGN.md "One representation of a U-Net").

    from slimdiff.unet import load_unet, remove_units, save_unet
    teacher = load_unet("sd15-arch")                        # diffusers UNet2DConditionModel
    student = remove_units(teacher, ["down.1.layer.1", "mid"])
    save_unet(student, "out/student")                       # plain diffusers when expressible

Names: blocks `down.0..3`, `mid`, `up.0..3`; layers `down.1.layer.0`; units
`down.1.layer.0.resnet`, `down.1.layer.0.attn`, `down.1.downsample`, `mid.resnet.0`,
`mid.attn`, `mid.resnet.1`, `up.0.upsample`; `conv_in`, `conv_out`; the inner blocks of a
Transformer unit of depth > 1 (SDXL) `down.2.layer.0.attn.tblock.3` (`list_units(m, inner=True)`).
Built-ins: `sd15-arch`, `sd21-arch`, `sdxl-arch` (architecture only, random weights).
"""

from .assemble import ASSEMBLIES, assemble
from .access import (
    added_cond_inputs,
    block_names,
    get_module,
    is_slim,
    list_units,
    module_names,
    module_output_tensor,
    num_params,
    text_width,
    text_widths,
)
from .export import is_expressible, to_diffusers
from .model import SlimUNet2DConditionModel
from .registry import register_unit_type
from .structure import UNetEditError, UnitInfo
from .io import load_unet, resolve_source, save_pipeline_with, save_pipeline_with_unet, save_student, save_unet
from .lora import read_lora, remap_lora, remap_lora_files
from .presets import PRESETS, Preset, apply_preset, register_preset
from .surgery import check_removal, insert_unit, rebuild, remove_units, replace_unit, replace_units, slim_view, to_slim

__all__ = [
    "SlimUNet2DConditionModel", "UnitInfo", "UNetEditError", "register_unit_type",
    "get_module", "is_slim", "module_names", "module_output_tensor", "block_names", "list_units", "num_params",
    "text_width", "text_widths", "added_cond_inputs",
    "to_diffusers", "is_expressible", "remove_units", "check_removal", "insert_unit", "replace_unit", "to_slim",
    "slim_view",
    "load_unet", "save_unet", "save_pipeline_with", "save_student", "save_pipeline_with_unet", "resolve_source",
    "remap_lora", "remap_lora_files", "read_lora",
    "PRESETS", "Preset", "apply_preset", "register_preset", "ASSEMBLIES", "assemble", "replace_units", "rebuild",
]
