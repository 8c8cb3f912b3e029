"""Every ```python block of README.md runs as written (issue 12 item 1).

The blocks run in a fresh namespace, in a temporary working directory (their relative `out/...`
paths land there). Only the training length is shrunk: `DistillConfig` is wrapped so that
`max_steps`, `batch_size` and `toy_size` are capped and no checkpoints are written; every other
argument, and every other call, is the README's own.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_examples():
    assert BLOCKS, f"{README} has no ```python block"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    import slimdiff.distill as distill_pkg

    real = distill_pkg.DistillConfig

    def short(**kwargs):  # the README's settings, trained for 2 steps of batch 2 on 16 scenes
        kwargs.update(max_steps=min(kwargs.get("max_steps", 2), 2), batch_size=min(kwargs.get("batch_size", 2), 2),
                      toy_size=min(kwargs.get("toy_size", 16), 16), checkpoint_every=0)
        return real(**kwargs)

    monkeypatch.setattr(distill_pkg, "DistillConfig", short)
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme_example"})
