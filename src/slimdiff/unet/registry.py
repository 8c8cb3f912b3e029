"""Unit types: the module class each unit description builds, and how new types register.

    from slimdiff.unet import register_unit_type
    register_unit_type("condconv_resnet", CondConvResnetBlock2D, "resnet")   # at import of its module

The core knows diffusers' four unit types (`resnet`, `attn`, `downsample`, `upsample`). A plug-in
(e.g. `slimdiff.modules.condconv`) registers its own types when it is imported; the core never
names it. A model built with a registered type records, in its config's `unit_modules`, the
module that registered each such type, so loading a saved model imports that module first
(only modules of the `slimdiff` package are imported automatically; another package's module
must be imported by the caller, and the error says which).
"""

from __future__ import annotations

import importlib

from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from .structure import ROLES, UNIT_ROLES, UNetEditError, role_of

# unit type -> module class (its role is in structure.UNIT_ROLES)
UNIT_CLASSES: dict[str, type[nn.Module]] = {"resnet": ResnetBlock2D, "attn": Transformer2DModel,
                                            "downsample": Downsample2D, "upsample": Upsample2D}
BUILTIN_TYPES = tuple(UNIT_CLASSES)
# registered (non-built-in) unit type -> the module that defines its class (imported on load)
UNIT_MODULES: dict[str, str] = {}
AUTO_IMPORT_PACKAGE = "slimdiff."  # unit modules imported on load without the caller's help


def register_unit_type(type_name: str, cls: type[nn.Module], role: str) -> None:
    """Make `cls` a unit type: `{"type": type_name, "kwargs": {...}}` builds `cls(**kwargs)`.

    `role` (one of `ROLES`) fixes how forward calls it and its channel rules (structure.py);
    the unit is named by its role, so e.g. a GRI attention in place of `down.0.layer.0.attn`
    keeps that name. Call it at import of the module that defines `cls`; `cls.__module__` is
    recorded in every model using the type, so loading that model imports the module.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} for unit type {type_name!r}; valid: {ROLES}")
    if UNIT_ROLES.get(type_name, role) != role or UNIT_CLASSES.get(type_name, cls) is not cls:
        raise ValueError(f"unit type {type_name!r} is already registered as {UNIT_CLASSES[type_name].__name__} "
                         f"with role {UNIT_ROLES[type_name]!r}")
    UNIT_ROLES[type_name], UNIT_CLASSES[type_name] = role, cls
    if type_name not in BUILTIN_TYPES:
        UNIT_MODULES[type_name] = cls.__module__


def build_unit(unit: dict) -> nn.Module:
    """Instantiate one unit from its description (`{"type", "kwargs"}`)."""
    role_of(unit)  # raises for an unregistered type
    return UNIT_CLASSES[unit["type"]](**unit["kwargs"])


def unit_types_of(blocks: dict) -> list[str]:
    """The unit types a structure description uses, sorted (read without resolving roles, so
    a type not yet registered is listed too)."""
    units = list(blocks.get("mid") or [])
    for side, sampler in (("down", "downsample"), ("up", "upsample")):
        for block in blocks[side]:
            units += [u for layer in block["layers"] for u in layer] + ([block[sampler]] if block.get(sampler) else [])
    return sorted({u["type"] for u in units})


def unit_modules_of(blocks: dict) -> dict[str, str]:
    """Registered type -> defining module, for the non-built-in unit types `blocks` uses."""
    return {t: UNIT_MODULES[t] for t in unit_types_of(blocks) if t in UNIT_MODULES}


def import_unit_types(blocks: dict, unit_modules: dict[str, str] | None) -> None:
    """Import the module recorded for each unregistered unit type of `blocks` (it registers the
    type on import); raise `UNetEditError` in one line naming the type and what to import."""
    recorded = unit_modules or {}
    for type_name in unit_types_of(blocks):
        if type_name in UNIT_CLASSES:
            continue
        module = recorded.get(type_name)
        if module is None:
            raise UNetEditError(f"unit type {type_name!r} is not registered and the model does not say which "
                                f"module defines it; import that module first (slimdiff's own CondConv and GRI "
                                f"types: `import slimdiff.modules`; registered: {list(UNIT_CLASSES)})")
        if not module.startswith(AUTO_IMPORT_PACKAGE):
            raise UNetEditError(f"unit type {type_name!r} is not registered: `import {module}` before loading "
                                "this model (only slimdiff's own unit modules are imported automatically)")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UNetEditError(f"unit type {type_name!r} is defined in {module}, which cannot be imported: {e}") \
                from None
        if type_name not in UNIT_CLASSES:
            raise UNetEditError(f"unit type {type_name!r}: importing {module} did not register it "
                                f"(registered: {list(UNIT_CLASSES)})")
