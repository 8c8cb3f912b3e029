"""Channel pruning of a VAE decoder: identities, widths, tensors, save/load, pipelines, errors."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

import slimdiff
from slimdiff.cli import main
from slimdiff.vae import (
    SlimAutoencoderKL,
    VaePruneConfig,
    decoder_params,
    decoder_widths,
    load_vae,
    pipeline_with_vae,
    prune_decoder,
    save_vae,
)


def _latents(n=2, seed=0):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _decode(vae, z):
    return vae.decode(z).sample


def test_ratio_zero_is_the_identity(tiny_vae):
    student, info = prune_decoder(tiny_vae, VaePruneConfig(ratio=0.0))
    assert type(student) is AutoencoderKL and student is not tiny_vae
    assert torch.equal(_decode(student, _latents()), _decode(tiny_vae, _latents()))
    assert info["decoder_params"]["student"] == info["decoder_params"]["teacher"]
    assert all(g["channels"][0] == g["channels"][1] for g in info["groups"])


@pytest.mark.parametrize("ratio, widths", [(0.5, (4, 8, 16)), (0.25, (8, 12, 24)), (0.4, (4, 8, 20))])
def test_widths_are_the_ratio_rounded_to_groups(tiny_vae, ratio, widths):
    # C' = 4 * round((1 - r) * C / 4), halves up: 0.75 * 8 = 6 -> 8; 0.6 * 8 = 4.8 -> 4; 0.6 * 32 = 19.2 -> 20
    student, info = prune_decoder(tiny_vae, VaePruneConfig(ratio=ratio))
    assert isinstance(student, SlimAutoencoderKL) and decoder_widths(student) == widths
    assert student.config.block_out_channels == (8, 16, 32)  # the encoder is untouched
    for name, m in student.decoder.named_modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_groups == 4 and m.num_channels % 4 == 0, name
    # the same parameters as the decoder diffusers builds at these widths
    fresh = SlimAutoencoderKL(**{k: v for k, v in student.config.items() if not k.startswith("_")})
    assert decoder_params(student) == decoder_params(fresh) == info["decoder_params"]["student"]
    for key, value in tiny_vae.state_dict().items():
        if not key.startswith("decoder."):
            assert torch.equal(student.state_dict()[key], value), key


def test_pruned_tensors_are_the_teachers_at_the_kept_channels(tiny_vae):
    """Every layer of a group keeps the same indices; GroupNorm groups keep C'/G channels each;
    to_q carries the sqrt(d'/d) that keeps the attention logits; importance = filter L1."""
    student, info = prune_decoder(tiny_vae, VaePruneConfig(ratio=0.5))
    t, s = dict(tiny_vae.decoder.named_modules()), dict(student.decoder.named_modules())
    coverage = {}
    for group in info["groups"]:
        kept = torch.tensor(group["kept"])
        c, c_new = group["channels"]
        size = c // group["groups"]
        assert len(kept) == c_new and all(((kept // size) == j).sum() == c_new // group["groups"]
                                          for j in range(group["groups"]))
        for entry in group["layers"]:
            name, side = entry.split(":")
            tw, sw = t[name].weight, s[name].weight
            dim = 0 if side == "out" or isinstance(t[name], torch.nn.GroupNorm) else 1
            expected = tw.index_select(dim, kept)
            if name.endswith("to_q") and side == "out":
                expected = expected * math.sqrt(c_new / c)
            other = [d for d in range(tw.ndim) if d != dim]
            if other and sw.shape[other[0]] != tw.shape[other[0]]:
                coverage[entry] = "both"  # the other dim belongs to another group: compared there
                continue
            assert torch.allclose(sw, expected), entry
            coverage[entry] = "checked"
    assert sum(v == "checked" for v in coverage.values()) > 10
    # a ResNet's hidden width is produced by conv1 alone: kept = its filters' top L1 per GN group
    hidden = next(g for g in info["groups"] if g["root"] == "mid_block.resnets.0.conv1")
    l1 = t["mid_block.resnets.0.conv1"].weight.abs().flatten(1).sum(1).view(4, -1)  # (G, C/G)
    top = (l1.topk(4, dim=1).indices + torch.arange(4)[:, None] * 8).flatten().sort().values
    assert hidden["kept"] == top.tolist()


def test_save_then_load_gives_the_same_outputs(tiny_vae, tmp_path):
    student, info = prune_decoder(tiny_vae, VaePruneConfig(ratio=0.5))
    kind = save_vae(student, tmp_path / "v", recipe=info)
    assert kind == ["slimdiff", "SlimAutoencoderKL"]
    assert json.loads((tmp_path / "v" / "recipe.json").read_text())["prune_vae"]["ratio"] == 0.5
    for loaded in (load_vae(tmp_path / "v"), slimdiff.load_vae(str(tmp_path / "v")),
                   SlimAutoencoderKL.from_pretrained(tmp_path / "v")):
        assert torch.equal(_decode(loaded, _latents()), _decode(student, _latents()))
    # no width changed: written as a plain AutoencoderKL, loadable without slimdiff
    same, _ = prune_decoder(tiny_vae, VaePruneConfig(ratio=0.0))
    assert save_vae(same, tmp_path / "p") == ["diffusers", "AutoencoderKL"]
    assert torch.equal(_decode(AutoencoderKL.from_pretrained(tmp_path / "p"), _latents()),
                       _decode(tiny_vae, _latents()))


def test_a_pipeline_with_the_pruned_vae_generates(tiny_pipe, tmp_path, capsys):
    assert main(["prune-vae", str(tiny_pipe), "--ratio", "0.5", "--out", str(tmp_path / "o")]) == 0
    assert "of the teacher's" in capsys.readouterr().out
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "o" / "pipeline")  # plain diffusers loader
    assert type(pipe.vae) is SlimAutoencoderKL and decoder_widths(pipe.vae) == (4, 4, 8, 8)
    assert json.loads((tmp_path / "o" / "pipeline" / "model_index.json").read_text())["vae"] == \
        ["slimdiff", "SlimAutoencoderKL"]
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert image.shape == (1, 64, 64, 3) and float(image.std()) > 0
    # the same VAE placed into the teacher pipeline in memory decodes the same latents alike
    teacher = StableDiffusionPipeline.from_pretrained(tiny_pipe)
    swapped = pipeline_with_vae(teacher, tmp_path / "o")
    assert swapped.vae is not teacher.vae and teacher.vae.__class__ is AutoencoderKL
    assert torch.equal(_decode(swapped.vae, _latents()), _decode(pipe.vae, _latents()))


def test_bad_input_is_a_one_line_error(tiny_vae, tiny_pipe, tmp_path, capsys):
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"ratio=.* in \[0, 1\)"):
            VaePruneConfig(ratio=ratio)
    with pytest.raises(ValueError, match=r"ratio 0.8 leaves 1.6 of decoder stage 0 .* 8 channels, fewer than its 4 GroupNorm "
                                         r"groups; the largest ratio it allows is 0.5"):
        prune_decoder(tiny_vae, VaePruneConfig(ratio=0.8))
    with pytest.raises(ValueError, match="not a VAE"):
        prune_decoder(torch.nn.Linear(2, 2))
    from slimdiff.testing import tiny_unet

    tiny_unet().save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="UNet2DConditionModel, not a VAE"):
        load_vae(tmp_path / "unet")
    index = json.loads((tiny_pipe / "model_index.json").read_text())
    (tmp_path / "novae").mkdir()
    (tmp_path / "novae" / "model_index.json").write_text(json.dumps({**index, "vae": [None, None]}))
    with pytest.raises(ValueError, match="has no VAE"):
        load_vae(tmp_path / "novae")
    for argv in (["prune-vae", "sd15-arch", "--ratio", "1", "--out", str(tmp_path / "x")],
                 ["prune-vae", str(tmp_path / "novae"), "--out", str(tmp_path / "x")],
                 ["prune-vae", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("slimdiff prune-vae: error:") and err.count("\n") == 1, err


def test_generate_with_vae_decodes_with_it(tiny_pipe, tmp_path, capsys):
    from slimdiff.sample import generate

    student, info = prune_decoder(load_vae(tiny_pipe), VaePruneConfig(ratio=0.5))
    save_vae(student, tmp_path / "v", recipe=info)
    kw = dict(steps=2, guidance=1.0, progress=False)
    plain = generate(str(tiny_pipe), ["a red circle"], **kw)[0]
    slim = generate(str(tiny_pipe), ["a red circle"], vae=str(tmp_path / "v"), **kw)[0]
    assert plain.size == slim.size and not np.array_equal(np.asarray(plain), np.asarray(slim))
    # a VAE module in memory gives the same images as its saved directory
    assert np.array_equal(np.asarray(generate(str(tiny_pipe), ["a red circle"], vae=student, **kw)[0]),
                          np.asarray(slim))
    assert main(["generate", str(tiny_pipe), "a red circle", "--steps", "1", "--vae", str(tmp_path / "v"),
                 "--out", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "000_a_red_circle.png").is_file()


def test_evaluate_with_vae_records_it(tiny_pipe, tmp_path):
    from slimdiff.eval.evaluation import evaluate

    student, info = prune_decoder(load_vae(tiny_pipe), VaePruneConfig(ratio=0.5))
    save_vae(student, tmp_path / "v", recipe=info)
    result = evaluate(str(tiny_pipe), num_images=2, steps=1, batch_size=2, progress=False, vae=str(tmp_path / "v"))
    assert result["settings"]["vae"] == str(tmp_path / "v") and "alignment" in result
