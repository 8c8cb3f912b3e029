"""Step distillation: the maths against hand values and diffusers' DDIM, the trainer, outputs, resume, bad input."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from slimdiff.data import collate_items
from slimdiff.distill.guidance import add_guidance_embedding, cfg_combine
from slimdiff.distill.step import StepDistillConfig, StepTrainer, snr_weight, step_distill, step_target
from slimdiff.train import loop as trainer_mod
from slimdiff.train.maths import alpha_sigma, ddim_step, guidance_embedding, step_paths, to_x0_eps, v_from
from slimdiff.testing import tiny_unet


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def make_step(tiny_pipe):
    """make_step(out, **overrides): teacher = student init = the tiny pipeline, 8 -> 4 steps, batch 2."""

    def make(out, **overrides) -> StepDistillConfig:
        settings = dict(teacher=str(tiny_pipe), student=str(tiny_pipe), data="toy", toy_size=16, out=str(out),
                        max_steps=2, batch_size=2, checkpoint_every=0, learning_rate=1e-3, steps=4, teacher_steps=8)
        settings.update(overrides)
        return StepDistillConfig(**settings)

    return make


# ------------------------------------------------------------------------------------ the maths


def test_conversions_are_exact_identities():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    a, s = alpha_sigma(torch.tensor([0.9, 0.5, 0.01]))
    z = a * x0 + s * eps
    v = v_from(x0, eps, a, s)
    assert torch.allclose(v, a * eps - s * x0)
    for kind, out in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        x0_hat, eps_hat = to_x0_eps(kind, z, out, a, s)
        assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5), kind
    # an epsilon teacher's v: exactly v = a eps - s x0 with its own x0 estimate
    x0_hat, _ = to_x0_eps("epsilon", z, eps, a, s)
    assert torch.allclose(v_from(x0_hat, eps, a, s), v, atol=1e-5)


def test_target_formula_hand_case_and_it_lands_on_the_teacher():
    one = lambda x: torch.tensor([x]).view(1, 1, 1, 1)  # noqa: E731
    a_t, s_t, a_e, s_e = one(0.6), one(0.8), one(0.8), one(0.6)
    z_t, z_e = one(1.0), one(0.5)
    x = step_target(z_t, z_e, a_t, s_t, a_e, s_e)
    assert x.item() == pytest.approx((0.5 - 0.75 * 1.0) / (0.8 - 0.75 * 0.6))  # -0.714285...
    # the student's DDIM step from its x0 estimate x reaches z_t''
    assert ddim_step(x, (z_t - a_t * x) / s_t, a_e, s_e).item() == pytest.approx(0.5)
    assert snr_weight(a_t, s_t).item() == 1.0 and snr_weight(a_e, s_e).item() == pytest.approx(0.64 / 0.36)


def test_cfg_combination():
    cond, uncond = torch.full((2, 1), 2.0), torch.full((2, 1), 1.0)
    out = cfg_combine(cond, uncond, torch.tensor([3.0, 1.0]))
    assert out[0].item() == 4.0 and torch.equal(out[1], cond[1])  # 3*2 - 2*1; w = 1: the conditional output
    # combining eps then converting to v equals converting then combining (weights sum to 1)
    g = torch.Generator().manual_seed(1)
    z, e_c, e_u = (torch.randn(2, 4, 2, 2, generator=g) for _ in range(3))
    a, s = alpha_sigma(torch.tensor([0.7, 0.2]))
    w = torch.tensor([7.5, 2.0])
    to_v = lambda e: v_from(to_x0_eps("epsilon", z, e, a, s)[0], e, a, s)  # noqa: E731
    assert torch.allclose(to_v(cfg_combine(e_c, e_u, w)), cfg_combine(to_v(e_c), to_v(e_u), w), atol=1e-5)


def test_step_paths_follow_diffusers_ddim():
    config = dict(DDIMScheduler().config)
    t_student, path_t, path_ab = step_paths(config, 32, 8)
    assert t_student == [999, 874, 749, 624, 499, 374, 249, 124]
    assert path_t[0].tolist() == [999, 968, 937, 905] and path_t.shape == (8, 4)
    sched = DDIMScheduler.from_config(config)
    assert path_ab[0, 0] == sched.alphas_cumprod[999] and path_ab[-1, -1] == sched.final_alpha_cumprod
    assert path_ab[0, -1] == sched.alphas_cumprod[874]
    with pytest.raises(ValueError, match=r"steps=3: the teacher's 24-step DDIM schedule cannot give it"):
        step_paths(config, 24, 3)
    # progressive 32 -> 16 -> 8: the inner 16-step stage is never sampled by DDIM (1000 % 16 != 0)
    inner = step_paths(config, 32, 16, sampled=False)[0]
    assert inner[::2] == t_student and inner[1] == 937
    with pytest.raises(ValueError, match="steps=16"):
        step_paths(config, 32, 16)


def test_guidance_embedding_matches_the_pipeline_and_starts_at_zero():
    w = torch.tensor([1.0, 7.5])
    pipe_emb = StableDiffusionPipeline.get_guidance_scale_embedding(None, torch.tensor([0.0, 6.5]), 32)
    assert torch.equal(guidance_embedding(w, 32), pipe_emb)
    unet = tiny_unet(seed=0)
    guided = add_guidance_embedding(unet, 32)
    assert guided.config.time_cond_proj_dim == 32
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 3, 16)
    with torch.no_grad():
        assert torch.equal(guided(x, t, text, timestep_cond=guidance_embedding(w[1:], 32)).sample,
                           unet(x, t, text).sample)
    with pytest.raises(ValueError, match="time_cond_proj_dim=32, not guidance_embed_dim=64"):
        add_guidance_embedding(guided, 64)


# ------------------------------------------------------------------------------------ the trainer


def test_a_student_equal_to_the_teachers_two_step_map_has_zero_loss(make_step, tmp_path):
    trainer = StepTrainer(make_step(tmp_path / "o", cfg_prob=0.0, lambda_task=0.0, student_prediction="v_prediction"),
                          progress=False)
    sched = DDIMScheduler.from_config(trainer.parts.scheduler_config, timestep_spacing="trailing",
                                      prediction_type="epsilon", clip_sample=False)
    sched.set_timesteps(8)  # the teacher's schedule, stepped by diffusers itself
    student_ts = trainer.student_timesteps.tolist()

    def oracle(z, t, encoder_hidden_states, **_):  # v whose one DDIM step lands where two teacher steps do
        out = []
        for zi, ti, ci in zip(z, t.tolist(), encoder_hidden_states):
            x = zi[None]
            i = sched.timesteps.tolist().index(ti)
            for tj in sched.timesteps[i:i + 2]:
                eps = trainer.teacher(x, tj[None], encoder_hidden_states=ci[None]).sample
                x = sched.step(eps, tj, x).prev_sample
            nxt = student_ts.index(ti) + 1
            ab_e = sched.alphas_cumprod[student_ts[nxt]] if nxt < len(student_ts) else sched.final_alpha_cumprod
            a_t, s_t = alpha_sigma(sched.alphas_cumprod[ti][None])
            a_e, s_e = alpha_sigma(torch.as_tensor(ab_e)[None])
            x0 = step_target(zi[None], x, a_t, s_t, a_e, s_e)
            out.append((a_t * zi[None] - x0) / s_t)  # v with x0 = a z - s v
        return SimpleNamespace(sample=torch.cat(out))

    trainer.model = oracle
    batches = iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=2, collate_fn=collate_items))
    with torch.no_grad():
        for position in range(3):
            terms = trainer._micro_step(next(batches), position)
            assert terms["loss_step"].item() < 1e-8, position


def test_run_writes_a_plain_pipeline_with_the_trained_schedule(make_step, tmp_path):
    result = step_distill(make_step(tmp_path / "o", guidance_embed=True, guidance_embed_dim=16, cfg_prob=0.5,
                                    guidance=3.0), progress=False)
    recipe = json.loads((result.pipeline_dir / "recipe.json").read_text())
    sampling = recipe["sampling"]
    assert sampling["steps"] == 4 and sampling["guidance"] == 3.0 and sampling["unet_calls_per_step"] == 1
    assert recipe["step_distill"]["config"]["cfg_prob"] == 0.5 and recipe["step_distill"]["stages"] == [4]
    pipe = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.unet.config.time_cond_proj_dim == 16
    pipe.scheduler.set_timesteps(sampling["steps"])
    assert pipe.scheduler.timesteps.tolist() == sampling["timesteps"] == [999, 749, 499, 249]
    from slimdiff.sample import fill_sampling, load_pipeline

    # the recipe's defaults are read when slimdiff loads the directory (a plain diffusers load has none)
    assert fill_sampling(load_pipeline(result.pipeline_dir), None, None) == (4, 3.0)
    calls = []
    pipe.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    pipe.set_progress_bar_config(disable=True)
    pipe("red circle", num_inference_steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert calls == [1, 1, 1, 1]  # guidance embedded: one U-Net call of batch 1 per step
    assert set(read_log(result.log_path)[0]) >= {"loss", "loss_step", "loss_task"}


def test_progressive_resume_continues_a_killed_run_exactly(make_step, tmp_path, monkeypatch):
    settings = dict(max_steps=4, schedule="progressive", steps=2, teacher_steps=8, cfg_prob=0.5)
    straight = step_distill(make_step(tmp_path / "a", **settings), progress=False)
    assert (tmp_path / "a" / "stages" / "teacher-stage1.safetensors").is_file()
    write = trainer_mod.JsonlLog.write

    def write_then_die(self, record):
        write(self, record)
        if record["step"] == 4:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.JsonlLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):  # killed in stage 1 (steps 2-3), after the step-3 checkpoint
        step_distill(make_step(tmp_path / "b", checkpoint_every=3, **settings), progress=False)
    monkeypatch.undo()
    resumed = step_distill(make_step(tmp_path / "b", checkpoint_every=3, resume="latest", **settings),
                           progress=False)
    untimed = lambda path: [{k: v for k, v in r.items() if k != "time_s"} for r in read_log(path)]  # noqa: E731
    assert untimed(resumed.log_path) == untimed(straight.log_path) and len(untimed(straight.log_path)) == 4
    a = load_file(str(straight.out / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed.out / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="max_steps: checkpoint 4, now 6"):
        StepTrainer(make_step(tmp_path / "b", checkpoint_every=3, resume="latest", **{**settings, "max_steps": 6}),
                    progress=False)


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("overrides, match", [
    (dict(steps=5), r"StepDistillConfig.steps=5 is invalid"),
    (dict(steps=8, teacher_steps=8), r"steps=8 is invalid: .* k >= 2"),
    (dict(steps=4, teacher_steps=24, schedule="progressive"), r"teacher_steps/steps = 6 must be a power of 2"),
    (dict(cfg_prob=1.5), r"cfg_prob=1.5 is invalid: a probability in \[0, 1\]"),
    (dict(guidance_min=14.0, guidance_max=2.0), r"guidance range \[14.0, 2.0\] is invalid"),
    (dict(lambda_feat=1.0), r"must all be 0"),
    (dict(teacher_prediction_type="x0"), r"teacher_prediction_type='x0' is invalid"),
])
def test_bad_settings_are_one_line_errors(make_step, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match) as e:
        make_step(tmp_path / "o", **overrides)
    assert "\n" not in str(e.value)


def test_mismatched_prediction_types_and_bad_schedules_fail_before_training(make_step, tmp_path):
    with pytest.raises(ValueError, match=r"prediction types do not match: .* predicts 'epsilon'"):
        StepTrainer(make_step(tmp_path / "o", teacher_prediction_type="v_prediction"), progress=False)
    with pytest.raises(ValueError, match=r"steps=3: the teacher's 6-step DDIM schedule cannot give it"):
        StepTrainer(make_step(tmp_path / "o", steps=3, teacher_steps=6), progress=False)


def test_cli_prints_one_line_errors(tiny_pipe, tmp_path, capsys):
    from slimdiff.cli import main

    code = main(["step-distill", "--teacher", str(tiny_pipe), "--student", "toy", "--out", str(tmp_path / "o"),
                 "--guidance-range", "9", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "guidance range [9.0, 3.0] is invalid" in err
