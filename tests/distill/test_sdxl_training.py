"""Training on a `StableDiffusionXLPipeline` (issue 23 item 4): both text encoders, the pooled text
and the size/crop time ids reach the teacher's and the student's U-Net in `distill`, `step-distill`
and consistency distillation; the encoding cache carries them; the outputs load in plain diffusers;
a killed run resumes bit for bit. diffusers' tiny SDXL (`slimdiff.testing.tiny_sdxl_pipeline`):
32 px images, 16x16 latents; toy scenes are rendered at 64 px, so an item's time ids are
(64, 64, 0, 0, 32, 32)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from slimdiff.data import build_dataset
from slimdiff.data.cache import BatchEncoder
from slimdiff.distill import DistillConfig, distill
from slimdiff.distill.features import self_attention_map
from slimdiff.distill.lcm import ConsistencyConfig, consistency_distill
from slimdiff.distill.step import StepDistillConfig, step_distill
from slimdiff.sample import load_pipeline
from slimdiff.train.parts import check_trainable_pipeline
from slimdiff.unet import remove_units, slim_view, to_diffusers

# the SD resume test's kill-and-resume helpers (tests are not a package: loaded by path)
_spec = importlib.util.spec_from_file_location("resume_defaults", Path(__file__).with_name("test_resume_defaults.py"))
_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_resume)
assert_same_run_of, killed_then_resumed = _resume.assert_same_run_of, _resume.killed_then_resumed

TOY_IDS = [64.0, 64.0, 0.0, 0.0, 32.0, 32.0]  # a toy item at 32 px: original 64 x 64, no crop, target 32 x 32
PROBE_IDS = [32.0, 32.0, 0.0, 0.0, 32.0, 32.0]  # the set-up's dry run: an R x R original


def settings(pipe, out, **kw):
    return dict(dict(teacher=str(pipe), student=str(pipe), data="toy", toy_size=8, out=str(out), max_steps=2,
                     batch_size=2, checkpoint_every=0, learning_rate=1e-3), **kw)


def spy(unet, calls):
    """Record every forward's added conditioning (time ids, pooled text) of `unet`."""
    def hook(module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append({k: v.detach().float().clone() for k, v in added.items()})

    return unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_the_time_ids_change_the_teachers_output(tiny_sdxl_dir):
    """What the other tests guard: a U-Net given zeros for the time ids predicts another target."""
    pipe = load_pipeline(str(tiny_sdxl_dir))
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 5, 64, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    with torch.no_grad():
        given, zeros = (pipe.unet(x, 500, encoder_hidden_states=text,
                                  added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
                        for ids in (torch.tensor([TOY_IDS]), torch.zeros(1, 6)))
    assert (given - zeros).abs().max() > 1e-3


def test_the_encoder_gives_what_the_sdxl_pipeline_feeds_its_unet(tiny_sdxl_dir):
    """Both encoders' penultimate states, the second's pooled projection (as diffusers' encode_prompt),
    and each item's own time ids."""
    pipe = load_pipeline(str(tiny_sdxl_dir))
    enc = BatchEncoder(pipe.vae, pipe.tokenizer, pipe.text_encoder, tokenizer_2=pipe.tokenizer_2,
                       text_encoder_2=pipe.text_encoder_2)
    items = [build_dataset("toy", 32, seed=0, toy_size=2)[i] for i in range(2)]
    moments, text, added = enc.encode(items)
    ref, _, pooled, _ = pipe.encode_prompt([it["caption"] for it in items], device="cpu",
                                           do_classifier_free_guidance=False)
    torch.testing.assert_close(text, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(added["text_embeds"], pooled, rtol=0, atol=1e-6)
    assert added["time_ids"].tolist() == [TOY_IDS, TOY_IDS] and moments.shape == (2, 8, 16, 16)


@pytest.fixture(scope="module")
def distilled(tiny_sdxl_dir, tmp_path_factory):
    """2 steps of KD with KOALA's self-attention features, teacher and student spied on."""
    pipe = load_pipeline(str(tiny_sdxl_dir))
    teacher, student = pipe.unet, load_pipeline(str(tiny_sdxl_dir)).unet
    calls = {"teacher": [], "student": []}
    hooks = [spy(teacher, calls["teacher"]), spy(student, calls["student"])]
    out = tmp_path_factory.mktemp("kd") / "kd"
    cfg = DistillConfig(**settings(tiny_sdxl_dir, out, teacher=None, student=None, caption_dropout=0.0,
                                   feat_kind="self_attn"))
    try:
        result = distill(cfg, teacher=teacher, student=student, pipeline=pipe, progress=False)
    finally:
        for h in hooks:
            h.remove()
    return result, calls, pipe


def test_distill_feeds_both_unets_the_items_time_ids_and_pooled_text(distilled):
    result, calls, pipe = distilled
    captions = [it["caption"] for it in build_dataset("toy", 32, seed=0, toy_size=8)]
    _, _, pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    for who in ("teacher", "student"):
        first, *steps = calls[who]
        assert first["time_ids"].tolist() == [PROBE_IDS]  # the dry run
        assert len(steps) == 2 and all(c["time_ids"].tolist() == [TOY_IDS, TOY_IDS] for c in steps)
        for c in steps:  # each row's pooled text is that of one of the data set's captions
            assert all((pooled - row).abs().amax(1).min() < 1e-5 for row in c["text_embeds"])


def test_distill_with_self_attention_features_saves_a_plain_sdxl_pipeline(distilled):
    result, _, _ = distilled
    assert result.feature_map and all(k.endswith(".attn1") for k in result.feature_map)
    assert "loss_feat" in result.losses and result.steps == 2
    pipe = StableDiffusionXLPipeline.from_pretrained(result.pipeline_dir)
    assert {"text_encoder_2", "tokenizer_2"} <= {p.name for p in result.pipeline_dir.iterdir()}
    image = pipe("a red circle", num_inference_steps=1, height=32, width=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_self_attention_pairs_follow_the_inheritance(tiny_sdxl_dir):
    """A student without a unit's first inner block: its block 0 came from the teacher's block 1."""
    teacher = load_pipeline(str(tiny_sdxl_dir)).unet
    student = remove_units(slim_view(teacher), ["up.0.layer.1.attn.tblock.0"])
    pairs = self_attention_map(student, teacher)
    assert pairs["up.0.layer.1.attn.transformer_blocks.0.attn1"] == "up.0.layer.1.attn.transformer_blocks.1.attn1"
    assert pairs["up.0.layer.2.attn.transformer_blocks.1.attn1"] == "up.0.layer.2.attn.transformer_blocks.1.attn1"
    assert "up.0.layer.1.attn.transformer_blocks.1.attn1" not in pairs and len(pairs) == 11  # 12 blocks, 1 removed
    # exported to plain diffusers (its paths are diffusers'), the recipe's record of slim names still pairs it
    assert self_attention_map(to_diffusers(student), teacher, {"inheritance": student.inheritance}) == pairs


@pytest.mark.parametrize("method", ["step-distill", "lcm"])
def test_few_step_distillers_feed_the_time_ids_to_the_guided_teacher(tiny_sdxl_dir, tmp_path, method):
    """The teacher's guided calls (conditional rows and the zero unconditional rows) carry each row's
    time ids; the saved pipeline loads in plain diffusers."""
    pipe = load_pipeline(str(tiny_sdxl_dir))
    teacher, student = pipe.unet, load_pipeline(str(tiny_sdxl_dir)).unet
    calls = []
    hook = spy(teacher, calls)
    common = settings(tiny_sdxl_dir, tmp_path / method, teacher=None, student=None, max_steps=1)
    try:
        if method == "step-distill":
            cfg = StepDistillConfig(**common, steps=2, teacher_steps=4)
            result = step_distill(cfg, teacher=teacher, student=student, pipeline=pipe, progress=False)
        else:
            cfg = ConsistencyConfig(**common, solver_steps=10, guidance_min=3.0, guidance_max=3.0)
            result = consistency_distill(cfg, teacher=teacher, student=student, pipeline=pipe, progress=False)
    finally:
        hook.remove()
    guided = [c for c in calls if len(c["time_ids"]) == 4]  # 2 rows + their 2 unconditional rows
    assert guided and all(c["time_ids"].tolist() == [TOY_IDS] * 4 for c in guided)
    assert all(torch.equal(c["text_embeds"][2:], torch.zeros(2, 32)) for c in guided)  # force_zeros_for_empty_prompt
    loaded = StableDiffusionXLPipeline.from_pretrained(result.pipeline_dir)
    assert loaded.text_encoder_2 is not None and type(loaded.scheduler).__name__ in ("DDIMScheduler", "LCMScheduler")


def test_the_cache_carries_the_pooled_text_and_time_ids(tiny_sdxl_dir, tmp_path):
    """`slimdiff cache` fills the cache a run then reads (one key): the losses of a run encoding every step."""
    from safetensors.torch import load_file

    from slimdiff.train.parts import precompute_cache

    cached = settings(tiny_sdxl_dir, tmp_path / "a", cache_dir=str(tmp_path / "cache"))
    assert precompute_cache(DistillConfig(**cached), progress=False)[0] == 8
    entry = load_file(str(next((tmp_path / "cache").rglob("*.safetensors"))))
    assert set(entry) == {"moments", "text", "pooled", "time_ids"} and entry["time_ids"].tolist() == TOY_IDS
    a = distill(DistillConfig(**cached), progress=False)
    assert len([d for d in (tmp_path / "cache").iterdir() if d.is_dir()]) == 1  # the trainer's key is the same
    b = distill(DistillConfig(**settings(tiny_sdxl_dir, tmp_path / "b", memory_cache="off")), progress=False)
    assert a.losses == b.losses


@pytest.mark.parametrize("method", ["distill", "step-distill"])
def test_sdxl_runs_resume_bit_for_bit(tiny_sdxl_dir, tmp_path, monkeypatch, method):
    """As tests/distill/test_resume_defaults.py on SD: the RAM cache on, killed after step 5, resumed."""
    config, run = (DistillConfig, distill) if method == "distill" else (StepDistillConfig, step_distill)
    extra = {} if method == "distill" else dict(steps=2, teacher_steps=4)

    def make(out, **kw):
        return config(**settings(tiny_sdxl_dir, out, toy_size=10, batch_size=4, max_steps=6, **extra, **kw))

    straight = run(make(tmp_path / "a"), progress=False)
    assert_same_run_of(straight, killed_then_resumed(run, make, tmp_path / "b", monkeypatch, kill_at=5), steps=6)


def test_the_sdxl_refiner_is_refused_in_one_line(tiny_sdxl_dir):
    pipe = load_pipeline(str(tiny_sdxl_dir))
    pipe.text_encoder = None  # as the refiner: the second encoder only
    with pytest.raises(ValueError, match="without text_encoder .*refiner.* not supported"):
        check_trainable_pipeline(pipe)


def test_under_bf16_the_time_ids_stay_float32(tiny_sdxl_dir, tmp_path):
    """The teacher runs in bfloat16 (which would round a 683 px size to 684); its time ids stay float32."""
    pipe = load_pipeline(str(tiny_sdxl_dir))
    dtypes = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: dtypes.append((kwargs["added_cond_kwargs"]["time_ids"].dtype,
                                               kwargs["encoder_hidden_states"].dtype)), with_kwargs=True)
    cfg = DistillConfig(**settings(tiny_sdxl_dir, tmp_path / "bf16", teacher=None, student=None, max_steps=1,
                                   mixed_precision="bf16", lambda_feat=0.0))
    try:
        distill(cfg, teacher=pipe.unet, student=load_pipeline(str(tiny_sdxl_dir)).unet, pipeline=pipe, progress=False)
    finally:
        hook.remove()
    assert dtypes == [(torch.float32, torch.bfloat16)]  # the one training step (no feature KD: no dry run)
