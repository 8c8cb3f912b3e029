"""The import graph of src/slimdiff stays a house with floors (issue 19 item 5).

Every `import` counts, at module level or inside a function: hiding an import in a function does
not hide the arrow. Checked:
- no cycle between files;
- no cross-file import of a private (`_name`) helper;
- rooms import only rooms below them, in the order of `docs/internal-api.md` (ROOMS, lowest first);
- the core (`unet/`, `profile/`, `train/`) names no plug-in room (`modules/`) and no world (`toy`);
- function-level in-package imports are only those listed in ALLOWED_LAZY, each avoiding a heavy
  or optional dependency at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "slimdiff"

# rooms, lowest floor first: a room may import rooms of a lower index only (and itself).
# Sub-rooms listed as "room.file" sit on their own floor (toy's build recipe trains with the core; the VAE
# model class sits beside the U-Net, below `sample/` which loads it).
ROOMS = ["io", "toy", "testing", "recipe", "data", "report", "unet", "modules", "vae.model", "profile", "sample",
         "eval", "train", "distill", "vae", "prune", "stages", "toy.train", "demo", "cli", "__main__"]
CORE = ("unet", "profile", "train")
# modules that may import slimdiff inside a function, each to keep a heavy import out of import time
# (docs/internal-api.md lists them); a trailing "." covers a package's every module
ALLOWED_LAZY = {
    "slimdiff": "the package face: `import slimdiff` (CLI start, diffusers' model_index loader) stays cheap",
    "slimdiff.cli.": "each command imports the library (torch, diffusers) in run(), not for --help",
    "slimdiff.distill": "the package imports its KD trainer (accelerate) lazily; DistillConfig stays light",
    "slimdiff.profile.report": "slimdiff.report.plots imports matplotlib, needed only to draw",
}
PLUGINS_AND_WORLDS = ("modules", "toy")


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


MODS = _modules()


def _resolve(cur: str, node) -> list[tuple[str, str | None]]:
    """(target module, imported name) of one import statement of module `cur`."""
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = cur.split(".")
            if MODS[cur].name != "__init__.py":
                pkg = pkg[:-1]
            pkg = pkg[: len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        return [(f"{base}.{a.name}" if f"{base}.{a.name}" in MODS else base, a.name) for a in node.names]
    return [(a.name, None) for a in node.names]


def _imports() -> list[tuple[str, str, str | None, bool]]:
    """(importer, imported module, name, inside a function) for every in-package import."""
    out = []
    for mod, path in MODS.items():
        tree = ast.parse(path.read_text())
        in_function = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, name in _resolve(mod, node):
                    while target and target not in MODS:
                        target = target.rpartition(".")[0]
                    if target and target.startswith("slimdiff") and target not in (mod, "slimdiff"):
                        out.append((mod, target, name, id(node) in in_function))
    return out


IMPORTS = _imports()


def _room(mod: str) -> str:
    if mod == "slimdiff":  # the package's face: lazy public names, above every room
        return "__main__"
    parts = mod.split(".")[1:]
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        if len(parts) >= depth and name in ROOMS:
            return name
    raise AssertionError(f"{mod} is in no room of ROOMS: add its room to ROOMS and to docs/internal-api.md")


def test_no_cycle_between_files():
    edges: dict[str, set[str]] = {m: set() for m in MODS}
    for a, b, _, _ in IMPORTS:
        if not MODS[b].name == "__init__.py":  # a package's face hands names on
            edges[a].add(b)
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_name_across_files():
    private = [f"{a} <- {b}.{n}" for a, b, n, _ in IMPORTS if n and n.startswith("_") and not n.startswith("__")]
    assert not private, "private names imported across files:\n" + "\n".join(private)


def test_rooms_import_only_downward():
    upward = sorted({f"{a} -> {b}" for a, b, _, _ in IMPORTS
                     if ROOMS.index(_room(b)) > ROOMS.index(_room(a))})
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)


def test_function_level_imports_are_the_listed_ones():
    lazy = sorted({f"{a} -> {b}" for a, b, _, inside in IMPORTS if inside
                   and not any(a == k or (k.endswith(".") and a.startswith(k)) for k in ALLOWED_LAZY)})
    assert not lazy, "in-package imports inside functions (hoist them, or list them in ALLOWED_LAZY with why):\n" \
        + "\n".join(lazy)


def test_core_names_no_plugin_and_no_world():
    named = sorted({f"{a} -> {b}" for a, b, _, _ in IMPORTS
                    if _room(a).split(".")[0] in CORE and _room(b).split(".")[0] in PLUGINS_AND_WORLDS})
    assert not named, "the core names a plug-in or a world:\n" + "\n".join(named)
    for room in CORE:
        for path in (PKG / room).rglob("*.py") if (PKG / room).is_dir() else []:
            assert '"toy"' not in path.read_text(), f"{path.relative_to(SRC)} resolves the word 'toy'"


if __name__ == "__main__":  # python tests/test_import_graph.py: the findings, one per line
    for test in (test_no_cycle_between_files, test_no_private_name_across_files, test_rooms_import_only_downward,
                 test_function_level_imports_are_the_listed_ones, test_core_names_no_plugin_and_no_world):
        try:
            test()
        except AssertionError as e:
            print(f"{test.__name__}: {e}")
