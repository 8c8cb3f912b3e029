"""slimdiff: make Stable-Diffusion-class text-to-image U-Nets smaller and faster.

Profile, prune (presets, explicit edits, searches), distill, sample and evaluate; every
artifact stays a diffusers model.
"""

__version__ = "0.1.0"

# the worlds shipped with the package register their named pipelines ("toy"); light (pathlib only)
from slimdiff import toy as _toy  # noqa: E402,F401


def __getattr__(name):
    # Lazy top-level API so `import slimdiff` stays cheap (the CLI imports it on every call).
    if name in ("load_unet", "SlimUNet2DConditionModel"):
        # the editable U-Net with slimdiff's own unit types registered (CondConv, GRI: they register
        # themselves on import), so diffusers' loader can build any saved slimdiff student
        from . import modules, unet  # noqa: F401

        return getattr(unet, name)
    if name in ("load_vae", "SlimAutoencoderKL"):
        from . import vae

        return getattr(vae, name)
    if name == "ModelMixin":
        # diffusers' pipeline loader resolves ["slimdiff", "SlimUNet2DConditionModel"] (or
        # "SlimAutoencoderKL") in model_index.json, then looks up its loadable base classes
        # (ModelMixin) in this module.
        from diffusers import ModelMixin

        return ModelMixin
    raise AttributeError(f"module 'slimdiff' has no attribute {name!r}")
