"""`slimdiff generate` and `slimdiff evaluate` on a tiny pipeline directory."""

import json

import pytest

from slimdiff.cli import main
from slimdiff.cli.generate import SCHEDULER_NAMES
from slimdiff import sample
from slimdiff.eval import evaluation
from slimdiff.eval import toy as eval_toy
from slimdiff.sample import load as sample_load


@pytest.fixture
def fake_judge_loaded(monkeypatch, fake_judge):
    monkeypatch.setattr(evaluation, "shared_judge", lambda version=None: fake_judge)


def test_cli_scheduler_choices_match_the_library():
    assert SCHEDULER_NAMES == tuple(sample.SCHEDULERS)


def test_generate_cli_writes_pngs_and_a_grid(tiny_pipe_dir, tmp_path, capsys):
    out = tmp_path / "images"
    code = main(["generate", str(tiny_pipe_dir), "a small red circle on the left", "a large blue square at the top",
                 "--steps", "2", "--seed", "7", "--scheduler", "ddim", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "000_a_small_red_circle_on_the_left.png", "001_a_large_blue_square_at_the_top.png", "grid.png"]
    assert "wrote 2 image(s)" in capsys.readouterr().out


def test_generate_cli_prune_output_layout_uses_its_pipeline_subdir(tiny_pipe_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_pipe_dir, tmp_path / "run" / "pipeline")
    assert main(["generate", str(tmp_path / "run"), "a small red circle on the left", "--steps", "1",
                 "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["000_a_small_red_circle_on_the_left.png"]


def test_a_unet_directory_runs_in_its_recipes_teacher(tiny_pipe, tiny_pipe_dir, tmp_path):
    unet_dir = tmp_path / "student"
    tiny_pipe.unet.save_pretrained(unet_dir)
    with pytest.raises(ValueError, match="--base"):
        sample.resolve_pipeline(unet_dir)
    (unet_dir / "recipe.json").write_text(json.dumps({"teacher": str(tiny_pipe_dir)}))
    pipe = sample.resolve_pipeline(unet_dir)
    assert pipe.unet.config.block_out_channels == tiny_pipe.unet.config.block_out_channels


def test_generate_cli_errors_without_traceback(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "missing"), "a prompt", "--out", str(tmp_path)]) == 2
    assert "hub ids are not downloaded" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "toy", "a prompt", "--scheduler", "heun"])


def test_evaluate_cli_json_table_and_grid(tiny_pipe_dir, tmp_path, fake_judge_loaded, capsys):
    args = ["evaluate", str(tiny_pipe_dir), "--num-images", "3", "--steps", "2", "--batch-size", "2",
            "--seed", "5", "--world", "toy", "--reference"]
    assert main(args + ["--json", str(tmp_path / "a.json")]) == 0
    printed = capsys.readouterr().out
    assert "alignment_score" in printed and "kid" in printed and "95% CI" in printed
    assert "rendered (ceiling)" in printed
    assert (tmp_path / "a_grid.png").is_file()
    a = json.loads((tmp_path / "a.json").read_text())
    assert {"alignment", "alignment_score", "all_correct", "kid", "ci", "settings", "reference"} <= set(a)
    assert set(a["ci"]) >= {"alignment", "alignment_score", "all_correct", "kid"}
    assert a["settings"]["seed"] == 5 and a["settings"]["num_images"] == 3
    # the same seed gives the same numbers
    assert main(args + ["--json", str(tmp_path / "b.json"), "--no-grid"]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert {k: v for k, v in a.items() if k != "timing"} == {k: v for k, v in b.items() if k != "timing"}


def test_evaluate_cli_judge_version_is_used_and_recorded(tiny_pipe_dir, tmp_path, monkeypatch, fake_judge, capsys):
    """`--judge V` scores with the shipped judge V (features and PCA travel with it) and says so."""
    asked = []
    monkeypatch.setattr(evaluation, "shared_judge", lambda version=None: asked.append(version) or fake_judge)
    monkeypatch.setattr(fake_judge, "version", "v2", raising=False)
    args = ["evaluate", str(tiny_pipe_dir), "--num-images", "2", "--steps", "1", "--world", "toy", "--no-grid"]
    assert main(args + ["--judge", "v2", "--json", str(tmp_path / "a.json")]) == 0
    assert asked == ["v2"] and json.loads((tmp_path / "a.json").read_text())["settings"]["judge"] == "v2"
    assert main(args) == 0 and asked[-1] is None  # None: the package's default judge
    with pytest.raises(SystemExit):
        main(args + ["--judge", "v9"])
    assert "invalid choice: 'v9'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"judge_version 'v9' is not one of \['v2', 'v3'\]"):
        evaluation.evaluate(str(tiny_pipe_dir), num_images=2, steps=1, toy=True, judge_version="v9")


def test_evaluate_cli_missing_weights_message(tiny_pipe_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na photo of a dog\n")
    code = main(["evaluate", str(tiny_pipe_dir), "--world", "prompts", "--prompts", str(prompts),
                 "--num-images", "2", "--clip-dir", str(tmp_path / "clip")])
    assert code == 2
    err = capsys.readouterr().err
    assert "clip" in err and "config.json" in err


def test_evaluate_with_the_shipped_judge(tiny_pipe, tmp_path):
    """The real judge on the tiny pipeline's (meaningless) images: runs, and is deterministic."""
    from slimdiff.toy.judge import load_judge

    judge = load_judge()  # shipped with the package
    kwargs = dict(num_images=3, steps=2, seed=0, batch_size=3, toy=True, judge=judge, progress=False)
    a, b = evaluation.evaluate(tiny_pipe, **kwargs), evaluation.evaluate(tiny_pipe, **kwargs)
    assert 0 <= a["alignment"] <= 1 and 0 <= a["all_correct"] <= 1 and 0 <= a["alignment_score"] <= 1
    assert [a[k] for k in ("alignment", "all_correct", "kid", "ci")] == [b[k] for k in ("alignment", "all_correct", "kid", "ci")]


def test_evaluate_cli_bad_input(tiny_pipe_dir, capsys):
    assert main(["evaluate", str(tiny_pipe_dir), "--num-images", "1", "--world", "toy"]) == 2
    assert "num_images must be >= 2" in capsys.readouterr().err
