"""slimdiff.stages: a stage is reused only when it finished with the same settings."""

import pytest

from slimdiff.io import read_json
from slimdiff.stages import Stage, differences, run_or_reuse, stage_seconds


def test_run_then_reuse_then_rerun_with_other_settings(tmp_path):
    calls, log = [], []
    output = tmp_path / "made.txt"

    def make(value):
        def run():
            calls.append(value)
            output.write_text(str(value))
        return Stage("make", {"value": value}, run, output=output)

    assert run_or_reuse(make(1), tmp_path, log.append) == "ran"
    saved = read_json(tmp_path / "make.stage.json")
    assert saved["settings"] == {"value": 1} and saved["finished"] is True and saved["seconds"] >= 0
    assert stage_seconds("make", tmp_path) == saved["seconds"] and stage_seconds("other", tmp_path) is None
    assert run_or_reuse(make(1), tmp_path, log.append) == "reused"
    assert calls == [1]
    assert run_or_reuse(make(2), tmp_path, log.append) == "ran"
    assert calls == [1, 2] and output.read_text() == "2"
    assert log == ["make: running (not run before)", "make: reused (finished with the same settings)",
                   "make: running (made with other settings (value: 1 there, 2 now): its output is deleted)"]


def test_a_killed_stage_runs_again_and_a_missing_output_is_remade(tmp_path):
    def killed():
        (tmp_path / "partial").mkdir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_or_reuse(Stage("s", {"a": 1}, killed, output=tmp_path / "partial"), tmp_path)
    assert read_json(tmp_path / "s.stage.json")["finished"] is False
    seen = []
    stage = Stage("s", {"a": 1}, lambda: seen.append((tmp_path / "partial").is_dir()), output=tmp_path / "partial")
    assert run_or_reuse(stage, tmp_path) == "ran"
    assert seen == [True]  # the same settings: its partial work is kept for it to resume
    (tmp_path / "partial").rmdir()
    assert run_or_reuse(stage, tmp_path) == "ran"  # finished, but its output is gone


def test_differences_and_bad_names():
    assert differences({"a": [1, 2], "b": 1}, {"a": (1, 2), "b": 2, "c": 3}, ignore=("c",)) == ["b: 1 there, 2 now"]
    assert differences(None, {"a": 1}) == ["a: None there, 1 now"]
    with pytest.raises(ValueError, match="Stage.name='a/b' is invalid"):
        Stage("a/b", {}, lambda: None)
