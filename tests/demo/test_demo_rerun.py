"""A demo rerun into the same --out resumes only with the same settings (its stages would be reused)."""

import pytest

from slimdiff.demo import DemoConfig, run_demo
from slimdiff.io import write_json


def test_a_rerun_with_other_settings_is_refused_before_any_work(tmp_path, monkeypatch):
    import slimdiff.demo

    out = tmp_path / "demo"
    out.mkdir()
    write_json(out / "demo_config.json", DemoConfig(out=str(out), preset="bk-small", quick=True).resolved())
    before = (out / "demo_config.json").read_text()

    def no_work(*args, **kwargs):
        raise AssertionError("the demo started working")

    monkeypatch.setattr(slimdiff.demo, "load_pipeline", no_work)
    with pytest.raises(ValueError, match=r"holds a demo run with other settings \(preset: 'bk-small' there, "
                                         r"'bk-tiny' now\)"):
        run_demo(DemoConfig(out=str(out), preset="bk-tiny", quick=True), log=None, progress=False)
    assert (out / "demo_config.json").read_text() == before
    with pytest.raises(AssertionError, match="started working"):  # the same settings resume
        run_demo(DemoConfig(out=str(tmp_path / "demo"), preset="bk-small", quick=True), log=None, progress=False)
