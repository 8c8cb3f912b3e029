"""`compare`: several models on the same prompts and seeds, paired intervals and marks."""

import pytest

from slimdiff.eval.compare import compare, write

FAST = dict(steps=2, guidance=5.0, progress=False, num_images=6, batch_size=3)


def test_compare_same_model_twice_is_identical_and_unmarked(tiny_pipe, fake_judge, tmp_path):
    out = compare([tiny_pipe, tiny_pipe], names=["a", "b"], judge=fake_judge, keep_images=2, **FAST)
    a, b, ceiling = out["rows"]
    assert [a["model"], b["model"], ceiling["model"]] == ["a", "b", "rendered (ceiling)"]
    for key in ("alignment", "alignment_score", "all_correct", "kid"):
        assert a[key] == b[key] and a["ci"][key] == b["ci"][key], key
    # b is the teacher's copy: fidelity is perfect, and no difference is marked
    assert b["psnr_to_teacher"] == 100.0 and b["feature_cos_to_teacher"] == pytest.approx(1.0)
    assert "psnr_to_teacher" not in a  # the teacher row carries no fidelity to itself
    assert b["marks"] == {} and all(lo == hi == 0 for lo, hi in b["diff_ci"].values())
    assert len(out["images"]["a"]) == 2 and out["settings"]["baseline"] == "a"
    assert out["settings"]["judge"] == "FakeJudge"  # which judge scored (a shipped one: its version)
    assert "| model |" in out["markdown"] and "paired difference" in out["markdown"]
    write(out, tmp_path / "c.json", tmp_path / "c.md")
    assert (tmp_path / "c.md").read_text().startswith("| model |")
    assert "images" not in (tmp_path / "c.json").read_text()[:2000]


def test_compare_marks_a_different_model(tiny_pipe, fake_judge):
    from diffusers import StableDiffusionPipeline

    from slimdiff.testing import tiny_unet

    other = StableDiffusionPipeline(**{**tiny_pipe.components, "unet": tiny_unet(seed=5)})
    out = compare([tiny_pipe, other], names=["teacher", "other"], judge=fake_judge, reference=False, **FAST)
    teacher, row = out["rows"]
    assert row["psnr_to_teacher"] < 100.0
    assert "psnr_to_teacher" not in row["diff_ci"]  # the baseline has no fidelity to differ from
    assert set(row["marks"]) <= set(row["diff_ci"])


def test_compare_bad_input(tiny_pipe, fake_judge):
    with pytest.raises(ValueError, match="at least one model"):
        compare([], judge=fake_judge)
    with pytest.raises(ValueError, match="num_images must be >= 2"):
        compare([tiny_pipe], judge=fake_judge, num_images=1)
    with pytest.raises(ValueError, match="teacher index 3"):
        compare([tiny_pipe], judge=fake_judge, teacher=3, num_images=4)
    with pytest.raises(ValueError, match="names must be distinct"):
        compare([tiny_pipe, tiny_pipe], names=["x", "x"], judge=fake_judge)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        compare(["no-such-model"], judge=fake_judge)
    with pytest.raises(ValueError, match="split 'dev'"):
        compare([tiny_pipe], judge=fake_judge, split="dev")


def test_compare_cli_errors(capsys):
    from slimdiff.cli import main

    assert main(["compare", "no-such-model", "--num-images", "4"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["compare", "toy", "--teacher", "x"]) == 2
    assert "--teacher 'x'" in capsys.readouterr().err


def test_contrasts_between_named_rows(tiny_pipe, fake_judge):
    out = compare([tiny_pipe, tiny_pipe], names=["a", "b"], judge=fake_judge, reference=False,
                  contrasts=[("b", "a")], **FAST)
    (c,) = out["contrasts"]
    assert c["a"] == "b" and c["significant"] == [] and all(v == 0 for v in c["diff"].values())
    assert "b - a" in out["markdown_contrasts"]
    with pytest.raises(ValueError, match="contrast"):
        compare([tiny_pipe], names=["a"], judge=fake_judge, contrasts=[("a", "z")], **FAST)


def test_per_model_steps(tiny_pipe, fake_judge):
    """A sequence of steps gives each model its own; a row sampled as a scalar run is identical."""
    fast = {**FAST, "steps": [2, 1]}
    out = compare([tiny_pipe, tiny_pipe], names=["two", "one"], judge=fake_judge, reference=False, **fast)
    assert [r["steps"] for r in out["rows"]] == [2, 1]
    alone = compare([tiny_pipe], names=["one"], judge=fake_judge, reference=False, **{**FAST, "steps": 1})
    assert out["rows"][1]["all_correct"] == alone["rows"][0]["all_correct"]
    assert out["rows"][1]["kid"] == alone["rows"][0]["kid"]
    with pytest.raises(ValueError, match=r"steps=\[2\] gives 1 values for 2 models"):
        compare([tiny_pipe, tiny_pipe], names=["a", "b"], judge=fake_judge, **{**FAST, "steps": [2]})


def test_vae_per_model(tiny_pipe, fake_judge):
    """A model decoding with its own VAE's copy equals itself; a mismatched VAE list is one error."""
    from slimdiff.vae import VaePruneConfig, prune_decoder

    same, _ = prune_decoder(tiny_pipe.vae, VaePruneConfig(ratio=0.0))  # a copy: identical outputs
    out = compare([tiny_pipe, tiny_pipe], names=["own", "copy"], judge=fake_judge, reference=False,
                  vae=[None, same], **FAST)
    own, copy = out["rows"]
    assert copy["psnr_to_teacher"] == 100.0 and copy["all_correct"] == own["all_correct"]
    with pytest.raises(ValueError, match=r"vae=<1 items> gives 1 values for 2 models"):
        compare([tiny_pipe, tiny_pipe], names=["a", "b"], judge=fake_judge, vae=[same], **FAST)
