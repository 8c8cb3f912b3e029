"""Speed options of the trainer: the profile, exact options (bit-for-bit), numerics-changing ones
(loss curves within a stated tolerance), the caches, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

from slimdiff.cli import main
from slimdiff.distill import DistillConfig, distill
from slimdiff.train.parts import precompute_cache
from slimdiff.train.speed import PHASES, PhaseTimer
from slimdiff.distill.kd import KdTrainer as Trainer

# the reference: every speed option off, as the trainer ran before them
EAGER = dict(teacher_inference_mode=False, channels_last=False, adamw="loop", log_every=1, memory_cache="off")


def losses(result):
    return [r["loss"] for r in map(json.loads, result.log_path.read_text().splitlines())]


def weights(result):
    return load_file(str(result.out / "diffusion_pytorch_model.safetensors"))


def test_profile_times_every_phase_and_is_saved_in_the_recipe(make_config, tmp_path):
    result = distill(make_config(tmp_path / "p", max_steps=3, profile_steps=2, **EAGER), progress=False)
    prof = json.loads((result.out / "profile.json").read_text())
    assert prof["steps"] == 2 and list(prof["phases"]) == list(PHASES)  # no cache: every phase, in order
    assert prof["total_ms"] > 0 and prof["largest_phase"] in PHASES
    assert "| **step** |" in (result.out / "profile.md").read_text()
    assert json.loads((result.out / "recipe.json").read_text())["distill"]["config"]["profile_steps"] == 2


def test_phase_timer_is_a_no_op_when_disabled():
    timer = PhaseTimer(enabled=False)
    with timer("data"):
        pass
    timer.end_step()
    assert timer.steps == [] and timer.summary()["steps"] == 0


def test_exact_options_give_the_same_run_bit_for_bit(make_config, tmp_path):
    """Inference-mode teacher and host syncs every 3 steps change nothing, also with checkpoints."""
    ref = distill(make_config(tmp_path / "ref", max_steps=4, **EAGER), progress=False)
    fast = distill(make_config(tmp_path / "fast", max_steps=4, checkpoint_every=2,
                               **{**EAGER, "teacher_inference_mode": True, "log_every": 3}), progress=False)
    assert losses(fast) == losses(ref) and len(losses(ref)) == 4
    a, b = weights(ref), weights(fast)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_memory_cache_gives_the_same_run(make_config, tmp_path):
    """4 scenes, batch 2, 6 steps: epochs 2-3 hit the RAM cache; bit for bit (items are encoded alone)."""
    ref = distill(make_config(tmp_path / "ref", toy_size=4, max_steps=6, **EAGER), progress=False)
    hit = distill(make_config(tmp_path / "hit", toy_size=4, max_steps=6, **{**EAGER, "memory_cache": "auto"}),
                  progress=False)
    assert losses(hit) == losses(ref)
    a, b = weights(ref), weights(hit)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fp32_curve(make_config, tmp_path_factory):
    """The reference loss curve (3 steps, every speed option off): run once for every option compared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test runs (tests/conftest.py); module fixtures start before that
    try:
        return losses(distill(make_config(tmp_path_factory.mktemp("ref"), max_steps=3, **EAGER), progress=False))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("option, rel", [
    (dict(channels_last=True), 1e-4),  # float32, another summation order
    (dict(adamw="foreach"), 1e-4),  # the same update, batched kernels
    (dict(adamw="fused"), 1e-4),  # the same update, one kernel
    (dict(teacher_dtype="bf16"), 3e-2),  # bf16 teacher: 8-bit mantissa
    (dict(compile=True, compile_backend="aot_eager"), 1e-4),  # traced graphs, eager kernels
])
def test_numerics_changing_options_match_the_fp32_curve(make_config, tmp_path, option, rel, fp32_curve):
    run = distill(make_config(tmp_path / "run", max_steps=3, **{**EAGER, **option}), progress=False)
    assert losses(run) == pytest.approx(fp32_curve, rel=rel)
    if "channels_last" in option or "teacher_dtype" in option:
        assert losses(run) != fp32_curve  # it is a different computation
    if option.get("compile"):  # aot_eager runs the traced graphs with eager kernels: same numbers here
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0


def test_channels_last_student_comes_back_contiguous(make_config, tmp_path):
    result = distill(make_config(tmp_path / "cl", channels_last=True, checkpoint_every=1), progress=False)
    assert all(p.is_contiguous() for p in result.student.parameters())


def test_precomputed_cache_is_the_one_distill_reads(make_config, tiny_pipe, tmp_path):
    cfg = make_config(tmp_path / "run", toy_size=4, cache_dir=str(tmp_path / "cache"))
    done, where = precompute_cache(DistillConfig(teacher=cfg.teacher, data="toy", toy_size=4, cache_dir=cfg.cache_dir,
                                                 batch_size=3), progress=False)
    files = sorted(where.rglob("*.safetensors"))
    assert done == 4 and len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    ref = distill(make_config(tmp_path / "ref", toy_size=4, **EAGER), progress=False)
    run = distill(cfg, progress=False)
    assert [f.stat().st_mtime_ns for f in sorted(where.rglob("*.safetensors"))] == stamps  # only read
    assert losses(run) == pytest.approx(losses(ref), rel=1e-5)
    assert precompute_cache(DistillConfig(teacher=cfg.teacher, data="toy", toy_size=4, cache_dir=cfg.cache_dir),
                            progress=False)[0] == 0


def test_cli_cache_and_bad_speed_options(tiny_pipe, student_dir, tmp_path, capsys):
    assert main(["cache", "--teacher", str(tiny_pipe), "--data", "toy", "--toy-size", "3",
                 "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 0
    assert "encoded 3 items" in capsys.readouterr().out
    base = ["distill", "--teacher", str(tiny_pipe), "--student", str(student_dir), "--data", "toy",
            "--out", str(tmp_path / "o"), "--quiet"]
    for flags, message in ((["--num-workers", "-1"], "num_workers=-1 is invalid: an integer >= 0"),
                           (["--teacher-dtype", "fp16", "--cpu"], "not supported on the CPU"),
                           (["--compile", "--compile-backend", "nope"], "backend 'nope' is not available"),
                           (["--log-every", "0"], "log_every=0 is invalid")):
        assert main(base + flags) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_speed_settings_are_refused(make_config, tmp_path):
    with pytest.raises(ValueError, match="adamw='sgd'"):
        make_config(tmp_path, adamw="sgd")
    with pytest.raises(ValueError, match="either --teacher-dtype or --mixed-precision"):
        make_config(tmp_path, teacher_dtype="bf16", mixed_precision="bf16")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        Trainer(make_config(tmp_path / "o", teacher_dtype="fp16", cpu=True), progress=False)
