"""Sizes that keep the code legible (issue 19): no source file over 600 lines, the training core and
each method trainer under 400, no function over 80 lines except a numbered-step orchestration whose
docstring says so."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "slimdiff"
TRAINERS = ["train/loop.py", "train/config.py", "train/checkpoint.py", "train/parts.py", "train/batches.py",
            "distill/kd.py", "distill/step.py", "distill/lcm.py", "distill/onestep.py", "vae/distill.py"]


def test_no_file_over_600_lines_and_trainers_under_400():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}
    trainers = {t: n for t in TRAINERS if (n := len((PKG / t).read_text().splitlines())) >= 400}
    assert trainers == {}


def test_no_function_over_80_lines_unless_a_numbered_orchestration():
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                if "numbered" not in (ast.get_docstring(node) or "").replace("\n", " ").lower():
                    long.append(f"{path.relative_to(PKG)}:{node.name}")
    assert long == []
