"""Start-up (issue 19 item 6): `slimdiff --help`, `slimdiff CMD --help` and a bad flag answer
without importing torch or diffusers; the heavy imports happen once a command runs."""

import subprocess
import sys

import pytest

from slimdiff.cli import SUBCOMMANDS, names

HEAVY = ("torch", "diffusers", "transformers", "accelerate")

# run in a fresh interpreter: parse argv (help / bad flag end in SystemExit), then list heavy modules
PROBE = """
import sys
from slimdiff.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY:" + " ".join(m for m in {heavy!r} if m in sys.modules))
"""


def _heavy_imported(argv: list[str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True,
                         text=True, timeout=120)
    marks = [line for line in out.stdout.splitlines() if line.startswith("HEAVY:")]
    assert marks, out.stderr[-2000:]
    return marks[-1].removeprefix("HEAVY:")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["evaluate", "--no-such-flag"],
                                  *[[name, "--help"] for name in SUBCOMMANDS]])
def test_help_and_bad_flags_import_no_heavy_library(argv):
    assert _heavy_imported(argv) == ""


def test_the_choice_names_are_the_registries():
    from slimdiff.prune.criteria import CRITERIA
    from slimdiff.prune.search import SEARCHES
    from slimdiff.unet import ASSEMBLIES
    from slimdiff.modules import mobilediffusion  # registers the plug-in presets md, md-lite
    from slimdiff.unet.presets import PRESETS
    from slimdiff.vae.prune import IMPORTANCES

    assert names.PRESETS == tuple(PRESETS) and names.ASSEMBLIES == tuple(ASSEMBLIES)
    assert names.CRITERIA == tuple(CRITERIA) and names.SEARCHES == tuple(SEARCHES)
    assert names.VAE_IMPORTANCES == tuple(IMPORTANCES)
    assert names.REPLACEMENTS == tuple(mobilediffusion.REPLACEMENTS)
    from slimdiff.toy import JUDGES

    assert names.JUDGES == tuple(JUDGES)
