"""One-step generation (DMD2): the losses on hand values, the zero-gradient identity, the timesteps the pipeline
samples, a one-step pipeline in plain diffusers, exact resume of every network, bad input."""

import json

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from slimdiff.distill.guidance import guided_output
from slimdiff.distill.dmd import (GanHead, dmd_gradient, dmd_loss, gan_losses, generator_timesteps, state_memory_gb,
                                  trained_step_counts)
from slimdiff.distill.onestep import OneStepConfig, OneStepTrainer, one_step_distill
from slimdiff.sample.conditioning import Conditioning
from slimdiff.testing import tiny_unet_config
from slimdiff.train import loop as trainer_mod
from slimdiff.train.maths import alpha_sigma, to_x0_eps

SD_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def read_log(path):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def make_dmd(tiny_pipe):
    """make_dmd(out, **overrides): teacher = generator init = the tiny pipeline, 2 steps of batch 2, ratio 2."""

    def make(out, **overrides) -> OneStepConfig:
        settings = dict(teacher=str(tiny_pipe), student=str(tiny_pipe), data="toy", toy_size=16, out=str(out),
                        max_steps=2, batch_size=2, checkpoint_every=0, learning_rate=1e-3, solver_steps=10,
                        fake_ratio=2)
        settings.update(overrides)
        return OneStepConfig(**settings)

    return make


# ------------------------------------------------------------------------------------ the maths


def test_dmd_gradient_and_loss_hand_values():
    x = torch.tensor([[[[1.0, 3.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    real = torch.tensor([[[[0.0, 1.0]]], [[[1.0, -1.0]]]])  # |x - real| means: 1.5 and 1.0
    fake = torch.tensor([[[[3.0, 1.0]]], [[[1.0, 1.0]]]])
    grad = dmd_gradient(x, real, fake)
    assert grad.flatten().tolist() == pytest.approx([3.0 / 1.5, 0.0, 0.0, 2.0])
    x = x.clone().requires_grad_(True)
    loss = dmd_loss(x, grad)
    assert loss.item() == pytest.approx(0.5 * (4.0 + 4.0) / 4)  # 0.5 mean grad^2
    loss.backward()
    assert torch.allclose(x.grad, grad / 4)  # d/dx = grad / numel: the KL's direction, unscaled by the mse
    # x = x0_real everywhere: the weight is 0, the gradient is made finite (0 / 0 -> 0)
    assert torch.equal(dmd_gradient(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1)),
                       torch.zeros(1, 1, 1, 1))


def test_gan_losses_hand_values():
    import math

    d, g = gan_losses(torch.tensor([0.0, 2.0]), torch.tensor([1.0]))
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 softplus
    assert d.item() == pytest.approx(sp(1.0) + (sp(0.0) + sp(-2.0)) / 2)
    assert g.item() == pytest.approx(sp(-1.0))
    head = GanHead(4)
    assert head(torch.randn(3, 4, 1, 1)).shape == (3,)  # a logit per row, also on 1x1 mid features


def test_generator_timesteps_are_lcm_schedulers_and_sub_grids_are_found():
    for k in (1, 2, 4):
        sched = LCMScheduler(**SD_SCHEDULE, original_inference_steps=50)
        sched.set_timesteps(k)
        assert generator_timesteps(SD_SCHEDULE, k, 50).tolist() == sched.timesteps.tolist()
    assert generator_timesteps(SD_SCHEDULE, 1, 50).tolist() == [999]
    assert generator_timesteps(SD_SCHEDULE, 4, 50).tolist() == [999, 759, 499, 259]
    assert trained_step_counts(SD_SCHEDULE, 1, 50) == [1]
    assert trained_step_counts(SD_SCHEDULE, 4, 50) == [1, 2, 4]  # 3 steps (999, 679, 339) were not trained


def test_state_memory_hand_values():
    # SD-1.5's 859,520,964-parameter U-Net three times: generator and fake score train in fp32 + AdamW, fp16 teacher
    assert state_memory_gb(10, 20, 30) == pytest.approx((160 + 320 + 60) / 1e9)
    assert state_memory_gb(10, 0, 0, ema=True) == pytest.approx(200 / 1e9)
    assert state_memory_gb(859_520_964, 859_520_964, 859_520_964) == pytest.approx(29.22, abs=0.01)


# ------------------------------------------------------------------------------------ the trainer


def test_fake_score_equal_to_the_real_one_gives_a_zero_generator_gradient(make_dmd, tmp_path):
    """DMD2's sanity identity: the fake score starts as the teacher; at w = 1 both scores agree, so the
    distribution-matching gradient is zero and the generator does not move."""
    trainer = OneStepTrainer(make_dmd(tmp_path / "o", guidance_min=1.0, guidance_max=1.0), progress=False)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 8, 8, generator=g)
        t = torch.tensor([100, 700])
        text = Conditioning(torch.randn(2, *trainer.empty_text.encoder_hidden_states.shape[1:], generator=g))
        w = torch.ones(2)
        a, s = alpha_sigma(trainer.alphas_cumprod[t])
        x_t = a * x + s * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            out, _ = guided_output(trainer.teacher, x_t, t, text, trainer.empty_text, w, None)
            real = to_x0_eps(trainer.teacher_pred, x_t, out, a, s)[0]
            fake = trainer._x0(trainer.fake, x_t, t, text, w)
        assert torch.allclose(real, fake, atol=1e-6)
        gen = x.clone().requires_grad_(True)
        dmd_loss(gen, dmd_gradient(x, real, fake)).backward()
        assert gen.grad.abs().max().item() < 1e-6
    finally:
        trainer.close()


def test_one_step_run_writes_a_plain_diffusers_pipeline_that_samples_in_one_call(make_dmd, tmp_path):
    result = one_step_distill(make_dmd(tmp_path / "o"), progress=False)
    log = read_log(result.log_path)
    assert len(log) == 2 and {"loss", "loss_dmd", "loss_fake"} <= set(log[0])
    recipe = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert recipe["sampling"]["steps"] == 1 and recipe["sampling"]["unet_calls_per_step"] == 1
    assert recipe["sampling"]["scheduler"] == "LCMScheduler" and recipe["sampling"]["sampling_steps"] == [1]
    run = recipe["one_step_distill"]
    assert run["timesteps"] == [999] and run["peak_memory"]["peak_rss_mb"] > 0
    pipe = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 256
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    pipe.set_progress_bar_config(disable=True)
    image = pipe("red circle", num_inference_steps=1, guidance_scale=5.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(torch.as_tensor(image)).all() and len(calls) == 1


def test_resume_after_kill_equals_an_uninterrupted_run_for_every_network(make_dmd, tmp_path, monkeypatch):
    """Generator (and its EMA), fake score, GAN head and their optimiser: a run killed after step 3 and resumed from
    its step-2 checkpoint ends where an uninterrupted one does (2-step generator: backward simulation too)."""
    settings = dict(max_steps=4, steps=2, lambda_gan=0.1, ema_decay=0.9)
    straight = OneStepTrainer(make_dmd(tmp_path / "a", **settings), progress=False)
    a = straight.run()
    write = trainer_mod.JsonlLog.write

    def write_then_die(self, record):
        write(self, record)
        if record["step"] == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.JsonlLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        OneStepTrainer(make_dmd(tmp_path / "b", checkpoint_every=2, **settings), progress=False).run()
    monkeypatch.undo()
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-2" / "fake.safetensors").is_file()
    resumed = OneStepTrainer(make_dmd(tmp_path / "b", checkpoint_every=2, resume="latest", **settings), progress=False)
    b = resumed.run()
    assert read_log(b.log_path) == read_log(a.log_path) and len(read_log(a.log_path)) == 4
    assert "loss_gan_g" in read_log(a.log_path)[0] and "loss_gan_d" in read_log(a.log_path)[0]
    ga = load_file(str(a.out / "diffusion_pytorch_model.safetensors"))
    gb = load_file(str(b.out / "diffusion_pytorch_model.safetensors"))
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    for net in ("fake", "head"):
        sa, sb = getattr(straight, net).state_dict(), getattr(resumed, net).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), net
    oa, ob = straight.fake_optimizer.state_dict()["state"], resumed.fake_optimizer.state_dict()["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)
    recipe = json.loads((b.out / "recipe.json").read_text())
    assert recipe["sampling"]["sampling_steps"] == [1, 2]


def test_generator_terms_leave_the_fake_score_and_head_untouched(make_dmd, tmp_path):
    """The generator's DMD and GAN terms read the fake score and the head but put no gradient into them (only
    their own update trains them), and they are trainable again after the step."""
    trainer = OneStepTrainer(make_dmd(tmp_path / "o", max_steps=1, lambda_gan=0.1), progress=False)
    trainer.run()
    for net in (trainer.fake, trainer.head):
        assert all(q.grad is None and q.requires_grad for q in net.parameters())
    assert trainer.fake_optimizer.state_dict()["state"][0]["step"].item() == 2  # fake_ratio updates in the step


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("overrides, match", [
    (dict(fake_ratio=0), r"fake_ratio=0 is invalid: an integer >= 1"),
    (dict(fake_learning_rate=0.0), r"fake_learning_rate=0.0 is invalid"),
    (dict(fake_learning_rate=-1e-4), r"fake_learning_rate=-0.0001 is invalid"),
    (dict(learning_rate=0.0), r"learning_rate"),
    (dict(steps=0), r"steps"),
    (dict(steps=11), r"steps=11 is invalid: at most solver_steps=10"),
    (dict(t_min=0.5, t_max=0.5), r"t range \[0.5, 0.5\] is invalid"),
    (dict(guidance_min=8.0, guidance_max=2.0), r"guidance range \[8.0, 2.0\] is invalid"),
    (dict(method="ufogen"), r"method='ufogen' is invalid"),
    (dict(lambda_task=1.0), r"must all be 0"),
])
def test_bad_settings_are_one_line_errors(make_dmd, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match) as e:
        make_dmd(tmp_path / "o", **overrides)
    assert "\n" not in str(e.value)


def test_a_student_of_another_text_width_is_refused_in_one_line(make_dmd, tmp_path):
    mismatch = tmp_path / "wide"
    UNet2DConditionModel(**{**tiny_unet_config(), "cross_attention_dim": 24}).save_pretrained(mismatch)
    with pytest.raises(ValueError, match=r"cross_attention_dim: teacher \[16\], student \[24\]") as e:
        OneStepTrainer(make_dmd(tmp_path / "o", student=str(mismatch)), progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("flags, message", [
    (["--guidance-embed"], "--guidance-embed do not apply to --method dmd2"),
    (["--phases", "2"], "--phases do not apply to --method dmd2"),
    (["--fake-ratio", "0"], "fake_ratio=0 is invalid"),
])
def test_cli_refuses_other_methods_flags_and_bad_values(tiny_pipe, tmp_path, capsys, flags, message):
    from slimdiff.cli import main

    code = main(["step-distill", "--teacher", str(tiny_pipe), "--student", "toy", "--out", str(tmp_path / "o"),
                 "--method", "dmd2", "--steps", "1", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err


def test_cli_refuses_dmd2_flags_on_lcm(tiny_pipe, tmp_path, capsys):
    from slimdiff.cli import main

    code = main(["step-distill", "--teacher", str(tiny_pipe), "--student", "toy", "--out", str(tmp_path / "o"),
                 "--method", "lcm", "--fake-ratio", "3"])
    assert code == 2 and "--fake-ratio do not apply to --method lcm" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ issue 21's audit (session 9)


def test_the_trained_one_step_sample_is_what_the_pipeline_returns_at_one_step(make_dmd, tmp_path):
    """The generator's training-time x (c_skip z + c_out x0_G at t_0, w through time_cond_proj_dim) equals the
    latents `StableDiffusionPipeline(num_inference_steps=1)` returns for the same noise and prompt, with a
    non-zero w projection (a guidance-embedding mismatch between training and sampling would show)."""
    trainer = OneStepTrainer(make_dmd(tmp_path / "o"), progress=False)
    try:
        torch.nn.init.normal_(trainer.model.time_embedding.cond_proj.weight, std=0.5, generator=torch.Generator().manual_seed(1))
        base = StableDiffusionPipeline.from_pretrained(trainer.cfg.teacher)
        pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                       unet=trainer.model, scheduler=trainer._scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            text = pipe.encode_prompt(["red circle", "blue square"], "cpu", 1, False)[0]
            h = trainer._latent_size()
            noise = torch.randn(2, 4, *h, generator=torch.Generator().manual_seed(0))
            w = trainer.sample_guidance
            sampled = pipe(prompt_embeds=text, latents=noise.clone(), num_inference_steps=1, guidance_scale=w,
                           output_type="latent").images
            trained = trainer._generate(trainer.model, noise, trainer.timesteps[:1].expand(2), Conditioning(text),
                                        torch.full((2,), w))
        assert pipe.scheduler.timesteps.tolist() == trainer.timesteps.tolist() == [999]
        assert torch.allclose(sampled, trained, atol=1e-6)
        with torch.no_grad():  # and the embedding matters here: another w gives another sample
            other = trainer._generate(trainer.model, noise, trainer.timesteps[:1].expand(2), Conditioning(text),
                                      torch.full((2,), w + 2))
        assert not torch.allclose(other, trained, atol=1e-4)
    finally:
        trainer.close()


def test_dmd_gradient_reads_the_fake_score_before_its_updates_which_see_fresh_samples(make_dmd, tmp_path):
    """DMD2's alternation: the generator's gradient reads the fake score as trained on earlier samples (0 updates at
    step 1), not after `fake_ratio` updates on the very samples it judges; the updates see distinct samples."""
    trainer = OneStepTrainer(make_dmd(tmp_path / "o", max_steps=1, fake_ratio=3), progress=False)
    reads, inputs = [], []

    def updates_so_far():
        state = trainer.fake_optimizer.state_dict()["state"]
        return int(state[0]["step"].item()) if state else 0

    trainer.fake.register_forward_pre_hook(lambda *a: None if torch.is_grad_enabled() else reads.append(
        updates_so_far()))
    update = trainer._fake_update

    def spy(x, *rest):
        inputs.append(x.clone())
        return update(x, *rest)

    trainer._fake_update = spy
    trainer.run()
    assert reads == [0] and len(inputs) == 3
    assert all(not torch.allclose(inputs[i], inputs[j]) for i, j in ((0, 1), (0, 2), (1, 2)))


def test_teacher_pairs_are_the_pipelines_ddim_samples_made_once_and_checked(make_dmd, tmp_path, monkeypatch):
    """DMD's regression pairs: pair i is what StableDiffusionPipeline (trailing DDIM, CFG at the sampling guidance)
    returns from pair i's noise for item i's caption; the file is read back, not remade; other settings refused;
    the regression term enters the generator's loss with its weight."""
    from diffusers import DDIMScheduler

    from slimdiff.distill import dmd

    pairs_file = tmp_path / "pairs.safetensors"
    settings = dict(max_steps=1, lambda_reg=0.5, reg_pairs=3, reg_steps=3, reg_file=str(pairs_file))
    trainer = OneStepTrainer(make_dmd(tmp_path / "a", **settings), progress=False)
    pairs = trainer.pairs
    assert pairs.index.tolist() == [0, 1, 2] and pairs.latents.shape == pairs.noise.shape == (3, 4, 8, 8)
    base = StableDiffusionPipeline.from_pretrained(trainer.cfg.teacher)
    base.scheduler = DDIMScheduler.from_config(base.scheduler.config, timestep_spacing="trailing", clip_sample=False)
    base.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for i in range(3):
            text = trainer._item_text([i]).encoder_hidden_states
            want = base(prompt_embeds=text, negative_prompt_embeds=trainer.empty_text.encoder_hidden_states,
                        latents=pairs.noise[i:i + 1].clone(), num_inference_steps=3,
                        guidance_scale=trainer.sample_guidance, output_type="latent").images
            assert torch.allclose(want[0], pairs.latents[i], rtol=1e-4, atol=1e-4), i
    log = read_log(trainer.run().log_path)[0]
    assert log["loss"] == pytest.approx(log["loss_dmd"] + 0.5 * log["loss_reg"], rel=1e-5)

    def no_sampling(*a, **k):
        raise AssertionError("the cached pairs were made again")

    monkeypatch.setattr(dmd, "ddim_sample", no_sampling)
    again = OneStepTrainer(make_dmd(tmp_path / "b", **settings), progress=False)
    assert torch.equal(again.pairs.latents, pairs.latents)
    again.close()
    with pytest.raises(ValueError, match=r"were made with other settings .*'steps': \('3', '4'\)") as e:
        OneStepTrainer(make_dmd(tmp_path / "c", **{**settings, "reg_steps": 4}), progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"reg_pairs=17 is invalid: at most the data's 16 items"):
        OneStepTrainer(make_dmd(tmp_path / "d", **{**settings, "reg_pairs": 17}), progress=False)


def test_a_gan_head_under_fsdp2_is_refused_in_one_line(make_dmd, tmp_path, monkeypatch):
    # the head reads the fake score's mid-block features through a hook: FSDP2's backward would find the fake
    # score's root weights freed (2 CPU processes, 2026-12-03); DMD2 without the head runs sharded (test_fsdp2.py)
    from slimdiff.train import sharded

    monkeypatch.setattr(sharded, "is_fsdp2", lambda accelerator: True)
    with pytest.raises(ValueError, match=r"^lambda_gan=0.1 under FSDP2: the GAN head .* \(valid: 0, or DDP\)$"):
        one_step_distill(make_dmd(tmp_path / "o", lambda_gan=0.1), progress=False)
