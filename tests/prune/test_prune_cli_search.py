"""`slimdiff prune --search ...` options and run, on a tiny pipeline; the search report."""

import argparse
import json

import pytest

from slimdiff.cli.prune_search import add_search_arguments


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--preset")
    add_search_arguments(p, how)
    return p


def test_search_options_parse():
    args = _parser().parse_args(["toy", "--search", "laptop", "--budget", "flops=0.3", "--criterion", "random"])
    assert (args.search, args.budget, args.criterion, args.calib_size) == ("laptop", "flops=0.3", "random", 32)
    with pytest.raises(SystemExit):  # --search and --preset exclude each other
        _parser().parse_args(["toy", "--search", "laptop", "--preset", "bk-small"])


def test_slimdiff_prune_search_parses_through_the_prune_command():
    from slimdiff.cli import build_parser

    args = build_parser().parse_args(["prune", "toy", "--search", "evolve", "--target-latency", "5", "--out", "x"])
    assert (args.search, args.target_latency, args.func.__module__) == ("evolve", 5.0, "slimdiff.cli.prune")


def test_laptop_search_writes_student_recipe_and_report(tmp_path, capsys):
    from slimdiff.cli import main
    from slimdiff.testing import tiny_pipeline

    pipe = tiny_pipeline(tmp_path / "pipe")
    out = tmp_path / "out"
    argv = ["prune", str(pipe), "--out", str(out), "--search", "laptop", "--budget", "params=0.3",
            "--criterion", "magnitude"]
    assert main(argv) == 0
    assert "laptop (magnitude, params=0.3): removed" in capsys.readouterr().out
    recipe = json.loads((out / "recipe.json").read_text())
    s = recipe["search"]
    assert s["method"] == "laptop" and s["criterion"] == {"name": "magnitude", "reduction": "sum"}
    assert s["budget"]["measured_ratio"] >= 0.3 and s["budget"]["predicted_ratio"] >= 0.3
    assert len(s["scores"]) == 34 and s["removed"]
    assert (out / "search.md").read_text().startswith("# Search: laptop")
    assert (out / "unit_scores.png").stat().st_size > 0
    assert (out / "pipeline" / "model_index.json").is_file()
    assert not (out / "pipeline" / "unet" / "search.md").exists()


def test_evolve_flags_map_to_a_search_config():
    from slimdiff.cli.prune_search import search_config

    args = _parser().parse_args(["toy", "--out", "o", "--search", "evolve", "--target-latency", "5",
                                 "--stochastic-depth", "0.2", "--robust-steps", "7", "--robust-steps-per-round", "3",
                                 "--score-images", "4", "--score-tolerance", "0.01", "--remove-only",
                                 "--search-seed", "3"])
    cfg = search_config(args)
    assert (cfg.method, cfg.target_latency_ms, cfg.stochastic_depth, cfg.robust_steps) == ("evolve", 5.0, 0.2, 7)
    assert (cfg.robust_steps_per_round, cfg.score_images, cfg.score_tolerance) == (3, 4, 0.01)
    assert (cfg.allow_add, cfg.seed, cfg.out) == (False, 3, "o")
    with pytest.raises(ValueError, match="evolve needs target_latency_ms"):
        search_config(_parser().parse_args(["toy", "--out", "o", "--search", "evolve"]))
