"""The names the parsers offer as choices, without importing the library (issue 19 item 6).

`slimdiff --help`, `slimdiff CMD --help` and a bad flag must answer without torch or diffusers, so
the parsers cannot read the registries themselves (`slimdiff.unet.presets.PRESETS` imports torch).
These tuples are the registries' keys; tests/cli/test_startup.py checks that each equals its
registry, so a new preset or criterion that is not added here fails the suite.
"""

PRESETS = ("bk-base", "bk-small", "bk-tiny", "snapfusion",  # slimdiff.unet.presets.PRESETS (SD teachers)
           "bk-sdxl", "koala-1b", "koala-700m", "ssd-1b", "vega",  # (SDXL teachers)
           "md", "md-lite")  # (plug-in: slimdiff.modules.mobilediffusion, registered at its import)
ASSEMBLIES = ("M1", "M2", "M3")  # slimdiff.unet.assemble.ASSEMBLIES
CRITERIA = ("output", "magnitude", "random")  # slimdiff.prune.criteria.CRITERIA
SEARCHES = ("laptop", "evolve")  # slimdiff.prune.search.SEARCHES
REPLACEMENTS = ("separable", "cross_only", "trim")  # slimdiff.modules.mobilediffusion.REPLACEMENTS
VAE_IMPORTANCES = ("l1", "group-l1")  # slimdiff.vae.prune.IMPORTANCES
JUDGES = ("v2", "v3")  # slimdiff.toy.JUDGES (the toy judge's versions)
