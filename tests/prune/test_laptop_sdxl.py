"""LAPTOP-Diff on SDXL (issue 23 item 3): the output-loss criterion with the pipeline's pooled text
and time ids, inner Transformer blocks as candidates, the knapsack at 50% of the parameters and
under a latency budget, and a student that plain diffusers loads."""

import pytest
import torch

from slimdiff.profile import LatencyLUT, ProfileSettings
from slimdiff.prune.calibration import CalibrationConfig, pipeline_calibration, random_calibration
from slimdiff.prune.criteria import OutputLossCriterion, removable_units
from slimdiff.prune.laptop import Budget, laptop_select
from slimdiff.testing import tiny_sdxl_base_unet_config, tiny_sdxl_unet
from slimdiff.unet import remove_units


@pytest.fixture(scope="module")
def teacher():
    return tiny_sdxl_unet(seed=4, **tiny_sdxl_base_unet_config())  # SDXL-base topology, depths 2 and 10


def test_deep_transformer_units_are_candidates_through_their_inner_blocks(teacher):
    names = removable_units(teacher)
    assert "down.2.layer.0.attn.tblock.9" in names and "down.1.layer.1.attn.tblock.0" in names
    assert "down.2.layer.0.attn" not in names and "mid.attn" not in names  # represented by their blocks
    assert "up.2.layer.1.resnet" in names


def test_the_criterion_scores_an_inner_block_by_the_output_loss_of_removing_it(teacher):
    calib = random_calibration(teacher, CalibrationConfig(size=4, batch_size=4))
    assert calib.added_cond_kwargs["time_ids"].shape == (4, 6)
    crit = OutputLossCriterion(calib)
    name = "down.2.layer.0.attn.tblock.3"
    score = crit(teacher, [name])[name]
    x, t, c, added = next(calib.batches())
    with torch.no_grad():
        full = teacher(x, t, c, added_cond_kwargs=added).sample
        pruned = remove_units(teacher, [name])(x, t, c, added_cond_kwargs=added).sample
    assert score == pytest.approx(float(((full - pruned) ** 2).mean()), rel=1e-5) and score > 0


def test_laptop_at_half_the_parameters(teacher):
    calib = random_calibration(teacher, CalibrationConfig(size=4, batch_size=4))
    student, result = laptop_select(teacher, OutputLossCriterion(calib), Budget("params", 0.5))
    assert result.measured_ratio >= 0.5 - 1e-9
    assert student.num_parameters() <= 0.5 * teacher.num_parameters()
    assert any(".tblock." in u for u in result.removed)  # inner blocks were chosen
    assert result.predicted_ratio == pytest.approx(sum(result.costs[u] for u in result.removed) / result.total)


def test_laptop_under_a_latency_budget_from_a_table(teacher):
    settings = ProfileSettings(latent_size=8, repeats=1, warmup=0, threads=1, clock="cpu")
    lut = LatencyLUT.build(teacher, settings)
    assert lut.inner  # every Transformer unit's shell and inner blocks are in the table
    criterion = {u: float(i) for i, u in enumerate(removable_units(teacher))}  # any scores: the budget is tested
    student, result = laptop_select(teacher, criterion, Budget("latency", 0.3), lut=lut)
    # the student's deep units have new depths: predicted as shell + inner blocks, no table miss
    assert result.measured_ratio == pytest.approx(1 - lut.predict(student) / lut.predict(teacher))
    assert result.predicted_ratio >= 0.3 - 1e-9


def test_a_laptop_student_of_an_sdxl_pipeline_loads_in_plain_diffusers(tiny_sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from slimdiff.sample import load_pipeline
    from slimdiff.unet import save_pipeline_with_unet

    pipe = load_pipeline(tiny_sdxl_dir)
    prompts = ["a red circle", "a blue square", "two green triangles", "a small star"]
    calib = pipeline_calibration(pipe, prompts, CalibrationConfig(size=4, batch_size=4))
    assert calib.added_cond_kwargs["text_embeds"].shape == (4, 32)  # the second encoder's pooled projection
    student, result = laptop_select(pipe.unet, OutputLossCriterion(calib), Budget("params", 0.5))
    assert result.measured_ratio >= 0.5 - 1e-9
    out = save_pipeline_with_unet(tiny_sdxl_dir, student, tmp_path / "laptop50")
    again = StableDiffusionXLPipeline.from_pretrained(out)  # diffusers' own loader
    assert {"text_encoder_2", "tokenizer_2"} <= set(again.components)
    assert again.unet.num_parameters() == student.num_parameters()
    image = again("a red circle", num_inference_steps=2, height=32, width=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
