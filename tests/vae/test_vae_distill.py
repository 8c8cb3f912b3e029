"""Decoder distillation on a tiny pipeline: outputs, learning, exact resume, data latents, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from slimdiff.cli import main
from slimdiff.train import loop as trainer_mod
from slimdiff.vae import VaePruneConfig, load_vae, prune_decoder, save_vae
from slimdiff.vae.distill import VaeDistillConfig, VaeTrainer, distill_vae


@pytest.fixture(scope="module")
def pruned(tiny_pipe, tmp_path_factory):
    """The tiny pipeline's VAE with its decoder pruned by half (a prune-vae output directory)."""
    path = tmp_path_factory.mktemp("pruned") / "vae"
    student, info = prune_decoder(load_vae(tiny_pipe), VaePruneConfig(ratio=0.5))
    save_vae(student, path, recipe={"teacher": str(tiny_pipe), **info})
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("a red circle\na blue square on the left\na small green triangle\n")
    return path


def make(tiny_pipe, pruned, out, prompts=None, **overrides):
    settings = dict(teacher=str(tiny_pipe), prompts=str(prompts) if prompts else None, student=str(pruned), out=str(out), num_latents=8, eval_latents=4,
                    gen_steps=1, max_steps=4, batch_size=2, checkpoint_every=0, learning_rate=1e-3)
    settings.update(overrides)
    return VaeDistillConfig(**settings)


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_distill_vae_learns_and_writes_everything(tiny_pipe, pruned, prompts, tmp_path):
    result = distill_vae(make(tiny_pipe, pruned, tmp_path / "o", prompts, max_steps=20),
                         progress=False)
    assert result.psnr_after > result.psnr_before + 1.0  # dB against the teacher decoder, held-out latents
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "recipe.json", "latents.safetensors",
                 "train_log.jsonl", "loss_curves.png", "pipeline/model_index.json"):
        assert (tmp_path / "o" / name).is_file(), name
    pool = load_file(str(tmp_path / "o" / "latents.safetensors"))
    assert pool["train"].shape == (8, 4, 8, 8) and pool["eval"].shape == (4, 4, 8, 8)
    recipe = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert recipe["prune_vae"]["ratio"] == 0.5 and recipe["distill_vae"]["psnr_vs_teacher_db"]["after"] == \
        pytest.approx(result.psnr_after)
    assert [r["step"] for r in read_log(result.log_path)] == list(range(1, 21))
    # the encoder stayed the teacher's; the saved VAE is the trained one
    teacher, saved = load_vae(tiny_pipe), load_vae(tmp_path / "o")
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in teacher.state_dict().items()
               if k.startswith(("encoder.", "quant_conv.")))
    z = pool["eval"]
    with torch.no_grad():
        assert torch.allclose(saved.decode(z).sample, result.student.decode(z).sample, atol=1e-5)


def test_resume_continues_a_killed_run_exactly(tiny_pipe, pruned, prompts, tmp_path, monkeypatch):
    straight = distill_vae(make(tiny_pipe, pruned, tmp_path / "a", prompts, max_steps=6), progress=False)
    write = trainer_mod.JsonlLog.write

    def write_then_die(self, record):
        write(self, record)
        if record["step"] == 5:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.JsonlLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill_vae(make(tiny_pipe, pruned, tmp_path / "b", prompts, max_steps=6, checkpoint_every=3), progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume latest"):
        VaeTrainer(make(tiny_pipe, pruned, tmp_path / "b", prompts, max_steps=6, checkpoint_every=3), progress=False)
    resumed = distill_vae(make(tiny_pipe, pruned, tmp_path / "b", prompts, max_steps=6, checkpoint_every=3,
                               resume="latest"), progress=False)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in read_log(straight.log_path)]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in read_log(resumed.log_path)] == strip
    a, b = (load_file(str(p / "diffusion_pytorch_model.safetensors")) for p in (straight.out, resumed.out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="seed: checkpoint 0, now 1"):
        VaeTrainer(make(tiny_pipe, pruned, tmp_path / "b", prompts, max_steps=6, seed=1, resume="latest"), progress=False)


def test_data_latents_and_the_perceptual_term(tiny_pipe, pruned, prompts, tmp_path):
    from slimdiff.distill.perceptual import VGG16Features

    weights = tmp_path / "vgg.safetensors"
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({f"features.{k}": v for k, v in VGG16Features().features.state_dict().items()}, str(weights))
    result = distill_vae(make(tiny_pipe, pruned, tmp_path / "d", prompts, latents="both", data="toy", toy_size=16,
                              resolution=64, max_steps=2, lambda_perc=0.5, perceptual_net="vgg16",
                              perceptual_weights=str(weights)), progress=False)
    pool = load_file(str(tmp_path / "d" / "latents.safetensors"))
    assert pool["train"].shape == (16, 4, 8, 8) and pool["eval"].shape == (8, 4, 8, 8)
    assert {"loss", "loss_mse", "loss_perc"} <= set(read_log(result.log_path)[0])


def test_bad_input_is_a_one_line_error(tiny_pipe, pruned, tmp_path, capsys):
    with pytest.raises(ValueError, match="latents='x'"):
        make(tiny_pipe, pruned, tmp_path / "o", latents="x")
    with pytest.raises(ValueError, match="both 0"):
        make(tiny_pipe, pruned, tmp_path / "o", lambda_mse=0.0)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        distill_vae(make(tiny_pipe, pruned, tmp_path / "o", tmp_path / "empty.txt"), progress=False)
    capsys.readouterr()
    code = main(["distill-vae", "--teacher", str(tiny_pipe), "--student", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--student" in err and err.count("\n") == 1
