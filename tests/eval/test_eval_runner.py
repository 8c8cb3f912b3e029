"""Generation and evaluation on the tiny pipeline: seeding, schedulers, determinism, toy scores, latency."""

import numpy as np
import pytest
import torch
from PIL import Image

from slimdiff import sample
from slimdiff.sample import fill_sampling

from slimdiff.eval import evaluation

from slimdiff.eval import toy as eval_toy

from slimdiff.sample import load as sample_load
from slimdiff.report.images import to_tensor
from slimdiff.eval.latency import pipeline_latency, unet_latency
from slimdiff.toy import world

PROMPTS = [
    "a small red circle on the left",
    "a large blue square above a small green triangle",
    "a small cyan circle at the top",
]
FAST = dict(steps=2, guidance=7.5, progress=False)


def _pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_same_seed_same_pixels_whatever_the_batch_size(tiny_pipe):
    a = _pixels(sample.generate(tiny_pipe, PROMPTS, seed=3, batch_size=3, **FAST))
    b = _pixels(sample.generate(tiny_pipe, PROMPTS, seed=3, batch_size=3, **FAST))
    c = _pixels(sample.generate(tiny_pipe, PROMPTS, seed=3, batch_size=1, **FAST))
    assert a.shape == (3, 64, 64, 3)
    assert np.array_equal(a, b)
    # batched and unbatched matmuls may round differently: at most one uint8 level apart
    assert np.abs(a - c).max() <= 1
    # image i is seeded with seed + i: prompts[1:] with seed 4 are images 1, 2 of the seed-3 call
    d = _pixels(sample.generate(tiny_pipe, PROMPTS[1:], seed=4, batch_size=2, **FAST))
    assert np.abs(a[1:] - d).max() <= 1
    e = _pixels(sample.generate(tiny_pipe, PROMPTS, seed=5, batch_size=3, **FAST))
    assert not np.array_equal(a, e)


def test_scheduler_by_name_and_restored(tiny_pipe):
    own = tiny_pipe.scheduler
    for name, cls in sample.SCHEDULERS.items():
        sched = sample.make_scheduler(name, tiny_pipe)
        assert isinstance(sched, cls)
        assert sched.config.num_train_timesteps == own.config.num_train_timesteps
    assert sample.make_scheduler("pndm", tiny_pipe).config.skip_prk_steps  # SD's PLMS configuration
    # latents are not clipped to [-1, 1] when the source config does not say (SD-1.5: clip_sample=false)
    assert "clip_sample" not in tiny_pipe.scheduler.config or not tiny_pipe.scheduler.config.clip_sample
    assert not sample.make_scheduler("ddim", tiny_pipe).config.clip_sample
    assert not sample.make_scheduler("ddpm", tiny_pipe).config.clip_sample
    with pytest.raises(ValueError, match="ddim, dpm, pndm, euler, ddpm"):
        sample.make_scheduler("heun", tiny_pipe)
    images = sample.generate(tiny_pipe, PROMPTS[:1], scheduler="ddim", seed=0, **FAST)
    assert len(images) == 1 and tiny_pipe.scheduler is own


def test_resolve_pipeline_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="hub ids are not downloaded"):
        sample.resolve_pipeline("org/some-model")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        (tmp_path / "empty").mkdir()
        sample.resolve_pipeline(tmp_path / "empty")


def test_toy_scores_of_rendered_images_have_zero_kid_and_intervals(fake_judge):
    scenes = world.sample_scenes("test", 12, seed=0)
    assert 0 < sum(map(world.is_novel, scenes)) < 12
    rendered = to_tensor(np.stack([world.render(s) for s in scenes]))
    out = eval_toy.toy_scores(rendered, scenes, judge=fake_judge, teacher_images=rendered)
    assert out["kid"] == pytest.approx(0.0, abs=1e-12) and out["ci"]["kid"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert set(out) >= {"alignment", "alignment_score", "all_correct", "per_attribute", "kid", "novel", "seen_pairs",
                        "psnr_to_teacher", "feature_cos_to_teacher", "ci"}
    assert "judge_fid" not in out  # 12 images < 10 x the PCA dims: refused rather than biased
    assert out["psnr_to_teacher"] == 100.0 and out["feature_cos_to_teacher"] == pytest.approx(1.0)
    novel = [i for i, s in enumerate(scenes) if world.is_novel(s)]
    want = fake_judge.score(rendered[novel], [scenes[i] for i in novel])
    assert out["novel"]["all_correct"] == want["all_correct"] and out["novel"]["n"] == len(novel)
    for key, (lo, hi) in out["ci"].items():  # every interval holds its value (percentile bootstrap)
        value = out[key] if "." not in key else out[key.split(".")[0]][key.split(".")[1]]
        assert lo - 1e-9 <= value <= hi + 1e-9 or key == "kid", key
    with pytest.raises(ValueError, match="12 images for 11 scenes"):
        eval_toy.toy_scores(rendered, scenes[:11], judge=fake_judge)
    with pytest.raises(ValueError, match=r"images are \(32, 32\) but the toy world's are \(64, 64\)"):
        eval_toy.toy_scores(rendered[:, :, :32, :32], scenes, judge=fake_judge)
    with pytest.raises(ValueError, match="at least 2 images"):
        eval_toy.toy_scores(rendered[:1], scenes[:1], judge=fake_judge)


def test_default_sampling_follows_the_world(tiny_pipe):
    from slimdiff.toy import evaluate as toy_evaluate

    # the toy defaults are the shipped toy sampler's (kept equal to slimdiff.toy.evaluate's)
    assert (sample_load.TOY_STEPS, sample_load.TOY_GUIDANCE) == (toy_evaluate.DEFAULT_STEPS, toy_evaluate.DEFAULT_GUIDANCE)
    assert fill_sampling(tiny_pipe, None, None) == (sample_load.TOY_STEPS, sample_load.TOY_GUIDANCE)
    assert fill_sampling(tiny_pipe, None, None, toy=False) == (25, 7.5)


def test_evaluate_is_deterministic(tiny_pipe, fake_judge, tmp_path):
    kwargs = dict(split="test", num_images=4, batch_size=2, seed=1, toy=True, judge=fake_judge, **FAST)
    first, images = evaluation.evaluate(tiny_pipe, grid=tmp_path / "grid.png", reference=True, return_images=True,
                                    **kwargs)
    second = evaluation.evaluate(tiny_pipe, **kwargs)
    assert len(images) == 4 and images[0].size == (64, 64)
    for key in ("alignment", "alignment_score", "all_correct", "kid", "per_attribute", "ci", "prompts", "settings"):
        assert first[key] == second[key], key
    assert first["prompts"] == [world.caption(s) for s in world.sample_scenes("test", 4, seed=1)]
    assert first["settings"]["judge_resolution"] == [64, 64] and first["settings"]["resolution"] == [64, 64]
    assert set(first["reference"]) >= {"alignment", "all_correct", "kid", "ci"}
    assert (tmp_path / "grid.png").is_file()
    third = evaluation.evaluate(tiny_pipe, **{**kwargs, "seed": 2})
    assert third["prompts"] != first["prompts"]


def test_evaluate_checks_inputs_before_generating(tiny_pipe, tmp_path, fake_judge):
    with pytest.raises(ValueError, match="pass prompts"):
        evaluation.evaluate(tiny_pipe, toy=False, num_images=2, **FAST)
    with pytest.raises(ValueError, match="FID needs both"):
        evaluation.evaluate(tiny_pipe, toy=False, prompts=PROMPTS, num_images=2, ref_images=tmp_path, **FAST)
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        evaluation.evaluate(tiny_pipe, toy=False, prompts=PROMPTS, num_images=2, inception_weights=tmp_path / "x.pth",
                        **FAST)
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluation.evaluate(tiny_pipe, toy=False, prompts=PROMPTS, num_images=2, clip_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="split 'dev'"):
        evaluation.evaluate(tiny_pipe, toy=True, split="dev", num_images=2, judge=fake_judge, **FAST)
    with pytest.raises(ValueError, match="captions"):
        evaluation.evaluate(tiny_pipe, toy=True, prompts=PROMPTS, num_images=2, judge=fake_judge, **FAST)


def test_evaluate_real_model_metrics_stream(tiny_pipe, tmp_path, inception_file, tiny_clip_dir):
    """FID / IS / CLIP through evaluate, with random-weighted local files standing in for the real ones."""
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        Image.new("RGB", (24, 24), (40 * i, 100, 200)).save(ref / f"{i}.png")
    kwargs = dict(toy=False, prompts=PROMPTS * 4, num_images=10, batch_size=5, seed=0, inception_weights=inception_file,
                  ref_images=ref, clip_dir=tiny_clip_dir, fid_dims=64, **FAST)
    first = evaluation.evaluate(tiny_pipe, grid=tmp_path / "grid.png", images_dir=tmp_path / "images", **kwargs)
    assert {"fid", "is", "is_std", "clip_score"} <= set(first) and "alignment" not in first
    assert first["fid"] > 0 and first["is"] >= 1 - 1e-5 and -1 <= first["clip_score"] <= 1
    assert first["settings"]["world"] == "prompts" and first["settings"]["guidance"] == 7.5
    assert len(list((tmp_path / "images").glob("*.png"))) == 10 and (tmp_path / "grid.png").is_file()
    second = evaluation.evaluate(tiny_pipe, **kwargs)
    assert {k: first[k] for k in ("fid", "is", "clip_score")} == {k: second[k] for k in ("fid", "is", "clip_score")}
    assert [r["metric"] for r in evaluation.summary_rows(first)] == ["fid", "is", "clip_score"]


def test_the_tiny_pipeline_speaks_the_toy_language(tiny_pipe):
    assert sample.is_toy_pipeline(tiny_pipe)  # it uses the toy tokenizer


def test_latency_helpers(tiny_pipe):
    ms = unet_latency(tiny_pipe.unet, batch_size=2, seq_len=16, repeats=2, warmup=1)
    assert ms > 0 and not tiny_pipe.unet.training
    assert pipeline_latency(tiny_pipe, steps=1, repeats=1, warmup=0) > 0


def test_save_images_writes_pngs_and_a_grid(tiny_pipe, tmp_path):
    images = sample.generate(tiny_pipe, PROMPTS[:2], seed=0, **FAST)
    paths = sample.save_images(images, PROMPTS[:2], tmp_path / "out")
    assert [p.name for p in paths] == ["000_a_small_red_circle_on_the_left.png",
                                       "001_a_large_blue_square_above_a_small_green_triangle.png", "grid.png"]
    assert all(p.is_file() for p in paths)
    assert torch.equal(to_tensor([Image.open(paths[0])]), to_tensor(images[:1]))
