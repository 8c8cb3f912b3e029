"""The commands on a `StableDiffusionXLPipeline` (issue 23 item 4), on diffusers' tiny SDXL: each
runs and keeps every component, or refuses in one line that names the reason (training: the
refiner, `tests/distill/test_sdxl_training.py`)."""

import json

import pytest

from slimdiff.cli import main


def test_units_lists_the_inner_transformer_blocks(tiny_sdxl_dir, tmp_path, capsys):
    assert main(["units", str(tiny_sdxl_dir), "--inner", "--json", str(tmp_path / "u.json")]) == 0
    listed = json.loads((tmp_path / "u.json").read_text())["units"]
    inner = [u["name"] for u in listed if u["kind"] == "tblock"]
    assert inner[:2] == ["down.1.layer.0.attn.tblock.0", "down.1.layer.0.attn.tblock.1"] and len(inner) == 12
    assert "20 units" in capsys.readouterr().out  # the inner blocks are not counted twice


def test_prune_an_inner_block_writes_a_whole_sdxl_pipeline(tiny_sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_sdxl_dir), "--remove", "up.0.layer.1.attn.tblock.0", "--out", str(out)]) == 0
    pipe = StableDiffusionXLPipeline.from_pretrained(out / "pipeline")
    assert type(pipe.unet) is UNet2DConditionModel and len(pipe.unet.up_blocks[0].attentions[1].transformer_blocks) == 1
    assert {"text_encoder_2", "tokenizer_2"} <= {p.name for p in (out / "pipeline").iterdir()}


def test_prune_vae_keeps_the_second_text_encoder(tiny_sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    import slimdiff.vae  # noqa: F401  (the pruned VAE class, for diffusers' loader)

    out = tmp_path / "vae-half"
    assert main(["prune-vae", str(tiny_sdxl_dir), "--ratio", "0.5", "--out", str(out)]) == 0
    written = {p.name for p in (out / "pipeline").iterdir()}
    assert {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler"} <= written
    pipe = StableDiffusionXLPipeline.from_pretrained(out / "pipeline")
    image = pipe("a red circle", num_inference_steps=1, height=32, width=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


@pytest.mark.parametrize("command", ["distill", "step-distill", "cache"])
def test_training_commands_run_on_sdxl(tiny_sdxl_dir, tmp_path, command):
    """Each writes a whole SDXL pipeline (both text encoders) or the cache `distill --cache-dir` reads."""
    out = tmp_path / "out"
    common = ["--teacher", str(tiny_sdxl_dir), "--data", "toy", "--toy-size", "4", "--batch-size", "2", "--quiet"]
    argv = {"cache": ["cache", *common, "--cache-dir", str(out)],
            "distill": ["distill", *common, "--student", str(tiny_sdxl_dir), "--out", str(out), "--max-steps", "1"],
            "step-distill": ["step-distill", *common, "--student", str(tiny_sdxl_dir), "--out", str(out),
                             "--max-steps", "1", "--steps", "2", "--teacher-steps", "4"]}[command]
    assert main(argv) == 0
    if command == "cache":
        assert len(list(out.rglob("*.safetensors"))) == 4
    else:
        assert {"text_encoder_2", "tokenizer_2", "unet"} <= {p.name for p in (out / "pipeline").iterdir()}


def test_distill_vae_on_sdxl_keeps_every_component(tiny_sdxl_dir, tmp_path):
    """The decoder distiller's latents come from the SDXL pipeline's own sampler (both text encoders)."""
    import slimdiff.vae  # noqa: F401  (the pruned VAE class, for diffusers' loader)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    assert main(["prune-vae", str(tiny_sdxl_dir), "--ratio", "0.5", "--out", str(tmp_path / "half")]) == 0
    out = tmp_path / "out"
    assert main(["distill-vae", "--teacher", str(tiny_sdxl_dir), "--student", str(tmp_path / "half"), "--prompts",
                 str(prompts), "--num-latents", "4", "--eval-latents", "2", "--gen-steps", "2", "--max-steps", "2",
                 "--batch-size", "2", "--out", str(out), "--quiet"]) == 0
    written = {p.name for p in (out / "pipeline").iterdir()}
    assert {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler"} <= written


def test_a_unet_alone_is_hosted_in_its_sdxl_teacher(tiny_sdxl_dir, tmp_path):
    """A pruned SDXL U-Net (no pipeline of its own) runs in its teacher's pipeline: the text width it
    reads is both encoders' concatenated (the check once took the first encoder's alone and refused,
    which broke `demo --model` and `compare` on an SDXL teacher); a U-Net of another width is refused."""
    from slimdiff.sample.load import resolve_pipeline
    from slimdiff.unet import load_unet
    from slimdiff.unet.io import check_text_width

    unet = load_unet(tiny_sdxl_dir)
    check_text_width(unet, tiny_sdxl_dir, "sdxl")  # 32 + 32 = 64: accepted
    no_second = tmp_path / "one-encoder"
    (no_second / "text_encoder").mkdir(parents=True)
    (no_second / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(ValueError, match="reads text of width 64, but the text encoder of one gives 32"):
        check_text_width(unet, no_second, "one")
    pipe = resolve_pipeline(unet, base=str(tiny_sdxl_dir))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"


def test_training_commands_take_the_registered_toy_xl_by_name():
    """`--teacher toy-xl` (a registered pipeline name, not a path) passes the path check every trainer makes;
    an unknown name is one line listing the valid ones."""
    from slimdiff.train.parts import check_path

    check_path("--teacher", "toy-xl")
    with pytest.raises(FileNotFoundError, match=r"'toy-xxl': no such file or directory .*'toy-xl'"):
        check_path("--teacher", "toy-xxl")
