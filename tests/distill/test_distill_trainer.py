"""The trainer on a tiny pipeline: identities, freezing, resume equality, caching, bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from slimdiff.distill import distill
from slimdiff.train import loop as trainer_mod
from slimdiff.distill.kd import KdTrainer as Trainer


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses_of(records):
    return [{k: v for k, v in r.items() if k.startswith("loss") or k in ("step", "lr")} for r in records]


def weights(out):
    return load_file(str(out / "diffusion_pytorch_model.safetensors"))


def test_identical_teacher_and_student_give_zero_kd_losses(make_config, tiny_pipe, tmp_path):
    cfg = make_config(tmp_path / "o", student=str(tiny_pipe), max_steps=1, lambda_task=0.0, lambda_mid=1.0,
                      gradient_checkpointing=True)
    record = read_log(distill(cfg, progress=False).log_path)[0]
    assert record["loss_out"] == 0.0 and record["loss_feat"] == 0.0 and record["loss_mid"] == 0.0


def test_freezing_keeps_frozen_weights_and_optimiser_holds_only_trainable(make_config, student_dir, tmp_path):
    frozen = ["down.0", "mid", "up.3.layer.0.attn"]
    cfg = make_config(tmp_path / "o", freeze=frozen, stochastic_depth=0.3, grad_accum=2, ema_decay=0.9)
    trainer = Trainer(cfg, progress=False)
    student = trainer.student
    names = {n for n, p in student.named_parameters() if p.requires_grad}
    frozen_prefixes = ("down_blocks.0.", "mid_block.", "up_blocks.3.attentions.0.")
    assert names == {n for n, _ in student.named_parameters() if not n.startswith(frozen_prefixes)}
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(names)
    assert trainer.stochastic.units and trainer.accelerator.gradient_accumulation_steps == 2
    result = trainer.run()
    before, after = load_file(str(student_dir / "diffusion_pytorch_model.safetensors")), weights(result.out)
    for name, tensor in after.items():
        if name.startswith(frozen_prefixes):
            assert torch.equal(tensor, before[name]), name
    assert not torch.equal(after["conv_in.weight"], before["conv_in.weight"])
    assert result.trainable_params == sum(p.numel() for n, p in student.named_parameters() if n in names)
    recipe = json.loads((result.out / "recipe.json").read_text())["distill"]
    assert recipe["config"]["freeze"] == frozen and recipe["ema"] and recipe["stochastic_depth_units"]


def test_resume_continues_a_killed_run_exactly(make_config, tmp_path, monkeypatch):
    straight = distill(make_config(tmp_path / "a", max_steps=6), progress=False)
    # run B is killed after logging step 5; its last checkpoint is step 3
    cfg = make_config(tmp_path / "b", max_steps=6, checkpoint_every=3)
    write = trainer_mod.JsonlLog.write

    def write_then_die(self, record):
        write(self, record)
        if record["step"] == 5:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.JsonlLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume latest"):  # a fresh start would mix two runs' checkpoints
        Trainer(make_config(tmp_path / "b", max_steps=6, checkpoint_every=3), progress=False)
    assert [r["step"] for r in read_log(tmp_path / "b" / "train_log.jsonl")] == [1, 2, 3, 4, 5]
    resumed = distill(make_config(tmp_path / "b", max_steps=6, checkpoint_every=3, resume="latest"), progress=False)
    assert losses_of(read_log(resumed.log_path)) == losses_of(read_log(straight.log_path))
    a, b = weights(straight.out), weights(resumed.out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a changed setting that alters the trajectory is refused
    with pytest.raises(ValueError, match="seed: checkpoint 0, now 1"):
        Trainer(make_config(tmp_path / "b", max_steps=6, seed=1, resume="latest"), progress=False)


def test_cached_encodings_give_the_same_run(make_config, tmp_path):
    plain = distill(make_config(tmp_path / "plain", toy_size=4), progress=False)
    fill = distill(make_config(tmp_path / "fill", toy_size=4, cache_dir=str(tmp_path / "cache")), progress=False)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 4
    hit = distill(make_config(tmp_path / "hit", toy_size=4, cache_dir=str(tmp_path / "cache")), progress=False)
    for run in (fill, hit):  # bit for bit: every item is encoded alone, with or without a cache
        assert losses_of(read_log(run.log_path)) == losses_of(read_log(plain.log_path))


def test_bad_input_stops_before_training(make_config, tiny_pipe, tmp_path):
    from slimdiff.testing import tiny_unet_config
    from diffusers import UNet2DConditionModel

    out = tmp_path / "o"
    cases = [
        (dict(teacher=str(tmp_path / "nope")), FileNotFoundError, "nope"),
        (dict(student=str(tmp_path / "missing")), FileNotFoundError, "missing"),
        (dict(feat_map={"down.0": "down.7"}), ValueError, "'down.7' does not exist"),
        (dict(feat_map={"down.0": "up.3"}), ValueError, r"down.0 \(1, 8, 4, 4\) vs teacher up.3"),
        (dict(freeze=["up.9"]), ValueError, "--freeze 'up.9'"),
        (dict(data=str(tmp_path / "data")), ValueError, "has no captions"),
        (dict(lambda_perc=1.0, perceptual_net="vgg16"), ValueError, "--perceptual-weights"),
    ]
    (tmp_path / "data").mkdir()
    mismatch = tmp_path / "wide"
    UNet2DConditionModel(**{**tiny_unet_config(), "cross_attention_dim": 24}).save_pretrained(mismatch)
    cases.append((dict(student=str(mismatch)), ValueError, "cross_attention_dim: teacher \\[16\\], student \\[24\\]"))
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            Trainer(make_config(out, **overrides), progress=False)
        assert not (out / "train_log.jsonl").exists()
    shutil.rmtree(mismatch)


def test_in_memory_api_with_a_preset_student(tiny_pipe, tmp_path):
    """What `slimdiff demo` does: models in memory, bk-small (no mid block), bf16, checkpointing."""
    from diffusers import StableDiffusionPipeline

    from slimdiff.distill import DistillConfig
    from slimdiff.unet import apply_preset
    from slimdiff.sample import load_pipeline

    pipe = load_pipeline(tiny_pipe)
    student, _ = apply_preset(pipe.unet, "bk-small")
    cfg = DistillConfig(teacher="in-memory tiny", student=None, toy_size=8, out=str(tmp_path / "o"), batch_size=2,
                        max_steps=2, checkpoint_every=0, mixed_precision="bf16", gradient_checkpointing=True,
                        stochastic_depth=0.5, ema_decay=0.99)
    result = distill(cfg, teacher=pipe.unet, student=student, pipeline=pipe, progress=False)
    assert result.student is student and not student.training
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float32  # the caller's stay float32
    assert set(result.feature_map) == {f"down.{k}" for k in range(4)} | {f"up.{k}" for k in range(4)}
    saved = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    assert saved.unet.config.mid_block_type is None and saved.vae.dtype == torch.float32
    recipe = json.loads((result.out / "recipe.json").read_text())
    assert recipe["distill"]["block_map_source"] == "inheritance" and "inheritance" in recipe
    with pytest.raises(ValueError, match="no mid block"):
        Trainer(DistillConfig(teacher="x", student=None, toy_size=8, out=str(tmp_path / "m"), lambda_mid=1.0),
                teacher=pipe.unet, student=student, pipeline=pipe, progress=False)
