"""Consistency distillation (LCM, PCM; full and LoRA): the maths against hand values and diffusers' schedulers,
the target network, LoRA round trips, exact resume, bad input."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline, TCDScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from slimdiff.distill.lcm import (ConsistencyConfig, ConsistencyTrainer, boundary_scalings, consistency_distance,
                                  consistency_distill, lower_edge, phase_edges, solver_grid)
from slimdiff.train import loop as trainer_mod
from slimdiff.train.ema import EMA
from slimdiff.train.maths import alpha_sigma, ddim_step, to_x0_eps


def read_log(path):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def make_lcm(tiny_pipe):
    """make_lcm(out, **overrides): teacher = student init = the tiny pipeline, 2 steps of batch 2."""

    def make(out, **overrides) -> ConsistencyConfig:
        settings = dict(teacher=str(tiny_pipe), student=str(tiny_pipe), data="toy", toy_size=16, out=str(out),
                        max_steps=2, batch_size=2, checkpoint_every=0, learning_rate=1e-3, solver_steps=10)
        settings.update(overrides)
        return ConsistencyConfig(**settings)

    return make


# ------------------------------------------------------------------------------------ the maths


def test_boundary_condition_the_consistency_function_returns_its_input_at_t0():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    # LCMScheduler's own scalings at the same timesteps
    sched = LCMScheduler()
    for i, t in enumerate((0, 19, 999)):
        ref_skip, ref_out = sched.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        assert c_skip[i].item() == pytest.approx(float(ref_skip)) and c_out[i].item() == pytest.approx(float(ref_out))
    z, x0_hat = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.equal(c_skip[:1] * z + c_out[:1] * x0_hat, z)  # f(z, 0) = z whatever the network says


def test_pcm_consistency_function_is_the_identity_on_its_edge():
    ab = torch.tensor([0.3])
    a, s = alpha_sigma(ab)
    z, out = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    x0, eps = to_x0_eps("epsilon", z, out, a, s)
    assert torch.allclose(ddim_step(x0, eps, a, s), z, atol=1e-6)  # the DDIM jump from e to e


def test_skip_step_solver_is_diffusers_ddim_step_on_the_50_step_grid():
    grid = solver_grid(1000, 50)
    assert grid[:3].tolist() == [19, 39, 59] and grid[-1].item() == 999 and len(grid) == 50
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False)
    sched.set_timesteps(50)  # "leading": t -> t - 20
    g = torch.Generator().manual_seed(0)
    z, eps_out = torch.randn(1, 4, 2, 2, generator=g), torch.randn(1, 4, 2, 2, generator=g)
    t = 399
    ref = sched.step(eps_out, t, z).prev_sample
    a, s = alpha_sigma(sched.alphas_cumprod[t:t + 1])
    x0, eps = to_x0_eps("epsilon", z, eps_out, a, s)
    ours = ddim_step(x0, eps, *alpha_sigma(sched.alphas_cumprod[t - 20:t - 19]))
    assert torch.allclose(ours, ref, atol=1e-5)
    # a hand-computed case: ab_t = 0.36 (a 0.6, s 0.8), ab_t' = 0.64 (a 0.8, s 0.6), z = 1, eps = 0.5
    a, s = alpha_sigma(torch.tensor([0.36]))
    x0, eps = to_x0_eps("epsilon", torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5), a, s)
    assert x0.item() == pytest.approx((1 - 0.4) / 0.6)
    assert ddim_step(x0, eps, *alpha_sigma(torch.tensor([0.64]))).item() == pytest.approx(0.8 * 1.0 + 0.6 * 0.5)


@pytest.mark.parametrize("phases", [1, 2, 4, 8])
def test_pcm_edges_are_tcd_and_lcm_timesteps(phases):
    edges = phase_edges(1000, 50, phases)
    for kind in (TCDScheduler, LCMScheduler):
        sched = kind(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        sched.set_timesteps(phases)
        assert edges[:-1].tolist() == sched.timesteps.tolist(), kind.__name__
    assert edges[-1].item() == 0
    t = solver_grid(1000, 50)
    low = lower_edge(t, edges)
    for m in range(phases):  # every grid t in (e_{m+1}, e_m] maps to e_{m+1}
        inside = (t > edges[m + 1]) & (t <= edges[m])
        assert (low[inside] == edges[m + 1]).all()


def test_distance_huber_and_l2_hand_values():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    assert consistency_distance(a, b, "l2", 0.001).item() == pytest.approx(12.5)
    c = 0.001
    expected = ((9 + c * c) ** 0.5 - c + (16 + c * c) ** 0.5 - c) / 2
    assert consistency_distance(a, b, "huber", c).item() == pytest.approx(expected)


def test_target_network_ema_in_place():
    p = [torch.nn.Parameter(torch.zeros(2))]
    target = [torch.full((2,), 5.0)]
    ema = EMA(p, 0.95, warmup=False, into=target)
    assert torch.equal(target[0], torch.zeros(2))  # starts as the student
    with torch.no_grad():
        p[0].fill_(1.0)
    ema.update(p)
    assert torch.allclose(target[0], torch.full((2,), 0.05))  # 0.95 * 0 + 0.05 * 1, in the target itself


# ------------------------------------------------------------------------------------ the trainer


def test_full_lcm_run_target_follows_and_pipeline_samples_at_any_steps(make_lcm, tmp_path):
    cfg = make_lcm(tmp_path / "o", max_steps=1)
    trainer = ConsistencyTrainer(cfg, progress=False)
    before = {n: q.detach().clone() for n, q in trainer.target.named_parameters()}
    result = trainer.run()
    student = result.student
    for n, q in trainer.target.named_parameters():  # theta- = 0.95 theta-_0 + 0.05 theta_1
        expected = 0.95 * before[n] + 0.05 * student.get_parameter(n).detach()
        assert torch.allclose(q, expected, atol=1e-6), n
    recipe = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert recipe["sampling"]["scheduler"] == "LCMScheduler" and recipe["sampling"]["unet_calls_per_step"] == 1
    pipe = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 256
    pipe.set_progress_bar_config(disable=True)
    for n in (1, 2, 4):
        image = pipe("red circle", num_inference_steps=n, guidance_scale=5.0, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
        assert image.shape[0] == 1 and torch.isfinite(torch.as_tensor(image)).all()


def test_resume_after_kill_equals_an_uninterrupted_run(make_lcm, tmp_path, monkeypatch):
    settings = dict(max_steps=4, method="pcm", phases=2, steps=2)
    straight = consistency_distill(make_lcm(tmp_path / "a", **settings), progress=False)
    write = trainer_mod.JsonlLog.write

    def write_then_die(self, record):
        write(self, record)
        if record["step"] == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.JsonlLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):  # killed after step 3, the checkpoint is the one of step 2
        consistency_distill(make_lcm(tmp_path / "b", checkpoint_every=2, **settings), progress=False)
    monkeypatch.undo()
    resumed = consistency_distill(make_lcm(tmp_path / "b", checkpoint_every=2, resume="latest", **settings),
                                  progress=False)
    assert read_log(resumed.log_path) == read_log(straight.log_path) and len(read_log(straight.log_path)) == 4
    a = load_file(str(straight.out / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed.out / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(StableDiffusionPipeline.from_pretrained(resumed.pipeline_dir).scheduler, TCDScheduler)


def test_lora_save_then_load_lora_weights_gives_the_same_outputs(make_lcm, tmp_path, tiny_pipe):
    torch.manual_seed(7)  # the global RNG's state before a run does not matter: the LoRA init is the seed's
    result = consistency_distill(make_lcm(tmp_path / "o", lora_rank=2, learning_rate=1e-2, target_decay=None),
                                 progress=False)  # (the online target: LCM-LoRA's; the EMA one: the default)
    assert (tmp_path / "o" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    torch.manual_seed(8)
    consistency_distill(make_lcm(tmp_path / "o2", lora_rank=2, learning_rate=1e-2, target_decay=None), progress=False)
    a, b = (load_file(str(tmp_path / o / "lora" / "pytorch_lora_weights.safetensors")) for o in ("o", "o2"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = StableDiffusionPipeline.from_pretrained(tiny_pipe)
    untouched = base.unet.state_dict()
    base.load_lora_weights(str(tmp_path / "o" / "lora"))
    fused = UNet2DConditionModel.from_pretrained(tmp_path / "o")  # the fused student: plain diffusers
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, base.unet.config.in_channels, 8, 8, generator=g)
    text = torch.randn(2, 4, base.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        with_lora = base.unet(x, t, encoder_hidden_states=text).sample
        plain = fused(x, t, encoder_hidden_states=text).sample
    assert torch.allclose(with_lora, plain, atol=1e-5)
    assert any(not torch.equal(untouched[k], v) for k, v in fused.state_dict().items())  # the LoRA did something
    recipe = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert recipe["sampling"]["guidance"] == 1.0 and not recipe["sampling"]["guidance_embedded"]


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("overrides, match", [
    (dict(guidance_min=8.0, guidance_max=2.0), r"guidance range \[8.0, 2.0\] is invalid"),
    (dict(lora_rank=0), r"lora_rank=0 is invalid"),
    (dict(method="pcm", phases=11, steps=11), r"phases=11 is invalid: at most solver_steps=10"),
    (dict(method="lcm", phases=2), r"phases=2 is invalid: LCM has one phase"),
    (dict(method="pcm", phases=4, steps=2), r"steps=2 is invalid: a PCM student samples in its 4 phases"),
    (dict(method="cm"), r"method='cm' is invalid"),
    (dict(guidance_embed=True, lora_rank=4), r"guidance_embed=True is invalid: a LoRA keeps the base U-Net"),
    (dict(lambda_task=1.0), r"must all be 0"),
    (dict(target_decay=1.5), r"target_decay=1.5 is invalid"),
])
def test_bad_settings_are_one_line_errors(make_lcm, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match) as e:
        make_lcm(tmp_path / "o", **overrides)
    assert "\n" not in str(e.value)


def test_cli_refuses_flags_of_another_method(tiny_pipe, tmp_path, capsys):
    from slimdiff.cli import main

    code = main(["step-distill", "--teacher", str(tiny_pipe), "--student", "toy", "--out", str(tmp_path / "o"),
                 "--method", "lcm", "--cfg-prob", "0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--cfg-prob do not apply to --method lcm" in err
