"""A saved CondConv/GRI student loads through every public path (issue 19 items 5 and 7).

The unit types register themselves when slimdiff.modules is imported; the core (slimdiff.unet)
names no plug-in, so a saved model records the module of each of its unit types and loading
imports it. Fresh processes check what a user without `import slimdiff.modules` gets.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from slimdiff.modules import CondConvSettings, GRISettings, apply_condconv, apply_gri
from slimdiff.testing import tiny_pipeline, tiny_unet
from slimdiff.unet import SlimUNet2DConditionModel, UNetEditError, save_pipeline_with_unet, save_unet, to_slim
from slimdiff.unet.io import MODEL_CARD

SRC = Path(__file__).resolve().parents[2] / "src"


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 16, generator=g)


def _student():
    slim = to_slim(tiny_unet(seed=0))
    student = apply_gri(slim, GRISettings(window=4, reduction=2))
    return apply_condconv(student, slim, CondConvSettings(experts=2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A CondConv + GRI student saved alone and inside a tiny pipeline, with its outputs."""
    root = tmp_path_factory.mktemp("student")
    student = _student().eval()
    assert save_unet(student, root / "unet") == ["slimdiff", "SlimUNet2DConditionModel"]
    save_pipeline_with_unet(tiny_pipeline(root / "teacher"), student, root / "pipe", saved_unet=root / "unet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child process (OMP_NUM_THREADS=1): the same reduction order
    try:
        with torch.no_grad():
            torch.save(student(*_inputs()).sample, root / "expected.pt")
    finally:
        torch.set_num_threads(threads)
    return root


CHILD = """
import sys
import torch
from diffusers import DiffusionPipeline

root = sys.argv[1]
try:  # 1. diffusers imports no library a model_index.json names: it says in one line to import slimdiff
    DiffusionPipeline.from_pretrained(root + "/pipe")
    print("loaded without import slimdiff")
except ValueError as e:
    print("refused:", str(e).replace("\\n", "<newline>"))

from slimdiff.unet import load_unet  # 2. the core alone: the saved model names its unit modules

print("core imports plug-ins:", "slimdiff.modules" in sys.modules)
unet = load_unet(root + "/unet")
g = torch.Generator().manual_seed(1)
inputs = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 16, generator=g)
with torch.no_grad():
    same = torch.equal(unet(*inputs).sample, torch.load(root + "/expected.pt"))
print("load_unet:", type(unet).__name__, sorted({u.type for u in unet.units()}), "same output" if same else "DIFFERS")

import slimdiff  # noqa: E402  3. the documented way: the package face, then diffusers' own loader

pipe = DiffusionPipeline.from_pretrained(root + "/pipe")
print("pipeline:", type(pipe).__name__, type(pipe.unet).__name__, sorted({u.type for u in pipe.unet.units()}))
"""


def test_a_saved_student_loads_in_a_fresh_process(saved):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", CHILD, str(saved)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines()
             if line.startswith(("refused", "loaded", "core", "load_unet", "pipeline"))]
    types = "['attn', 'condconv_resnet', 'downsample', 'gri_attn', 'resnet', 'upsample']"
    assert lines[0].startswith("refused: slimdiff is not one of the libraries") and "import slimdiff" in lines[0]
    assert "<newline>" not in lines[0]  # one line
    assert lines[1] == "core imports plug-ins: False"
    assert lines[2] == f"load_unet: SlimUNet2DConditionModel {types} same output"
    assert lines[3] == f"pipeline: StableDiffusionPipeline SlimUNet2DConditionModel {types}"


def test_the_model_card_says_how_it_loads_and_plain_diffusers_cannot(saved, tmp_path):
    card = (saved / "unet" / MODEL_CARD).read_text()
    assert "slimdiff.SlimUNet2DConditionModel.from_pretrained" in card and "DiffusionPipeline" in card
    assert "Without `import slimdiff`, diffusers refuses" in card
    assert "`gri_attn` from `slimdiff.modules.gri`" in card and "cannot load it" in card
    assert (saved / "pipe" / "unet" / MODEL_CARD).is_file()  # the pipeline's copy carries it too
    with pytest.raises(ValueError, match="expected shape"):  # what the card warns of: a shape error
        UNet2DConditionModel.from_pretrained(saved / "unet")
    assert type(SlimUNet2DConditionModel.from_pretrained(saved / "unet")).__name__ == "SlimUNet2DConditionModel"
    # a plain save over the same path drops the slim model's card
    save_unet(tiny_unet(seed=0), tmp_path / "m")
    assert not (tmp_path / "m" / MODEL_CARD).exists()
    save_unet(_student(), tmp_path / "m")
    assert (tmp_path / "m" / MODEL_CARD).is_file()
    save_unet(tiny_unet(seed=0), tmp_path / "m")
    assert not (tmp_path / "m" / MODEL_CARD).exists()


def test_an_unregistered_unit_type_is_a_one_line_error(saved, tmp_path):
    config = json.loads((saved / "unet" / "config.json").read_text())
    assert config["unit_modules"] == {"condconv_resnet": "slimdiff.modules.condconv",
                                      "gri_attn": "slimdiff.modules.gri"}
    for i, (unit_modules, match) in enumerate([
        (None, r"unit type 'condconv_resnet' is not registered and the model does not say which module"),
        ({"condconv_resnet": "someone.units"}, r"`import someone.units` before loading"),
        ({"condconv_resnet": "slimdiff.no_such_module"}, r"defined in slimdiff.no_such_module, which cannot be"),
    ]):
        blocks = json.loads(json.dumps(config["blocks"]).replace('"condconv_resnet"', '"condconv_resnet_x"'))
        modules = {k + "_x": v for k, v in unit_modules.items()} if unit_modules else None
        with pytest.raises(UNetEditError, match=match.replace("condconv_resnet", "condconv_resnet_x")) as e:
            SlimUNet2DConditionModel.from_structure(blocks, unit_modules=modules)
        assert "\n" not in str(e.value)
