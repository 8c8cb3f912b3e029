"""The training recipe: validated settings, a micro run of every stage, resume, the CLI."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from slimdiff.cli import main
from slimdiff.toy.train import ToyTrainConfig, run


def test_config_validation():
    with pytest.raises(ValueError, match="caption_dropout"):
        ToyTrainConfig(caption_dropout=1.5)
    with pytest.raises(ValueError, match="unet_steps must be > 0"):
        ToyTrainConfig(unet_steps=0)
    with pytest.raises(ValueError, match="not divisible"):
        ToyTrainConfig(unet_channels=(32, 64, 96, 100))


def test_micro_run_every_stage_and_resume(tmp_path):
    cfg = dict(vae_steps=2, vae_batch=4, num_latents=16, unet_steps=2, unet_batch=4, judge_steps=2, judge_batch=8,
               judge_pool=16, judge_pca_scenes=64, checkpoint_every=1, vae_channels=(8, 8, 8, 8), unet_channels=(16, 16, 32, 32),
               text_hidden=16, text_layers=1, text_heads=2, unet_heads=2)
    run(ToyTrainConfig(**cfg), tmp_path, stage="all")
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["unet_steps"] == 2 and (tmp_path / "judge" / "model.safetensors").is_file()
    run(ToyTrainConfig(**{**cfg, "unet_steps": 3}), tmp_path, stage="unet", resume=True)
    assert torch.load(tmp_path / "unet.ckpt", weights_only=True)["step"] == 3
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a small red circle on the left", num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 64, 64, 3)  # 4 VAE widths: 64x64 images <-> 8x8 latents
    assert (tmp_path / "judge" / "pca.safetensors").is_file()


def test_cli_render(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["toy", "render", "--split", "test", "-n", "4", "--out", str(out)]) == 0
    assert out.is_file()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(" a " in line for line in lines)


def test_resume_never_unpickles_code_and_names_damaged_files(tmp_path):
    """A crafted checkpoint whose unpickling would run code is refused, naming the file (issue 12, item 15)."""
    import pickle

    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    torch.save({"step": Payload()}, tmp_path / "judge.ckpt", pickle_module=pickle)
    cfg = ToyTrainConfig(judge_steps=1, judge_batch=2, judge_pool=4, judge_pca_scenes=32)
    with pytest.raises(ValueError, match="judge.ckpt is not a readable slimdiff toy checkpoint"):
        run(cfg, tmp_path, stage="judge", resume=True)
    assert not flag.exists()
    (tmp_path / "judge.ckpt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="judge.ckpt"):
        run(cfg, tmp_path, stage="judge", resume=True)


def test_judge_stage_fine_tunes_from_judge_init_and_records_the_degradation(tmp_path):
    """judge_init starts from a shipped judge: at learning rate 0 its weights come back unchanged
    (BatchNorm's running statistics still move); recipe.json says the degradation used."""
    from safetensors.torch import load_file

    from slimdiff.toy import judge_path

    cfg = ToyTrainConfig(judge_init="v2", judge_steps=1, judge_batch=4, judge_pool=8, judge_pca_scenes=32, judge_lr=0.0)
    run(cfg, tmp_path, stage="judge")
    start, tuned = load_file(str(judge_path("v2") / "model.safetensors")), load_file(str(tmp_path / "judge" / "model.safetensors"))
    weights = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert weights and all(torch.equal(start[k], tuned[k]) for k in weights)
    recipe = json.loads((tmp_path / "judge" / "recipe.json").read_text())["recipe"]
    assert recipe["judge_init"] == "v2" and recipe["judge_degrade"]["p"] == 0.75
    assert ToyTrainConfig(**recipe).judge_degrade == cfg.judge_degrade  # the recipe reads back


def test_micro_run_of_the_sdxl_toy_world_and_resume(tmp_path):
    """`topology="sdxl"`: two text encoders, pooled text and time ids; the export loads as a plain
    StableDiffusionXLPipeline whose own encode_prompt feeds the U-Net what training fed it."""
    from diffusers import StableDiffusionXLPipeline

    from slimdiff.toy.tokenizer import build_tokenizer
    from slimdiff.toy.train import TOY_XL, _build_text_encoders, _condition

    cfg = {**TOY_XL, **dict(vae_steps=1, vae_batch=2, num_latents=8, unet_steps=2, unet_batch=4, checkpoint_every=1,
                            vae_channels=(8, 8, 8, 8), text_hidden=16, text_layers=2, text_heads=2,
                            unet_channels=(16, 16, 32), unet_heads=2, unet_groups=8, unet_depths=(1, 1, 2))}
    run(ToyTrainConfig(**cfg), tmp_path, stage="vae")
    run(ToyTrainConfig(**cfg), tmp_path, stage="unet")
    run(ToyTrainConfig(**{**cfg, "unet_steps": 3}), tmp_path, stage="unet", resume=True)
    assert torch.load(tmp_path / "unet.ckpt", weights_only=True)["step"] == 3
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.unet.config.transformer_layers_per_block == [1, 1, 2]
    # what the recipe trains on = what the pipeline samples with
    encoders = _build_text_encoders(ToyTrainConfig(**cfg))
    for key, enc in (("text", pipe.text_encoder), ("text_2", pipe.text_encoder_2)):
        encoders[key].load_state_dict(enc.state_dict())
    caption = "a small red circle on the left"
    tok = build_tokenizer()([caption], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = _condition(encoders, tok)
        emb, _, pooled, _ = pipe.encode_prompt(caption, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(ours["encoder_hidden_states"], emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["added_cond_kwargs"]["text_embeds"], pooled, rtol=0, atol=1e-6)
    ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=torch.float32,
                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(ours["added_cond_kwargs"]["time_ids"], ids)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(caption, num_inference_steps=2, height=64, width=64, output_type="np").images
    assert out.shape == (1, 64, 64, 3)
