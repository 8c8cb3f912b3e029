"""Load and save U-Nets and pipelines: built-ins, `toy`, local diffusers directories.

    unet = load_unet("sd15-arch")           # or "sd21-arch", a registered name, a pipeline dir, a UNet dir
    save_unet(student, "out/student")       # plain diffusers when expressible, else slim class
    save_pipeline_with_unet(teacher_dir, student, "out/pipe")

Nothing is downloaded: a Hugging Face Hub id gives an error saying to download it first.
A student saved as plain diffusers loads with `UNet2DConditionModel.from_pretrained`, no
slimdiff needed; otherwise `SlimUNet2DConditionModel.from_pretrained` (or `load_unet`) reads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from torch import nn

from slimdiff import __version__
from slimdiff.io import NAMED_PIPELINES, apply_file_modes, check_disjoint, named_pipeline, read_json, remove_stale_temps, temp_prefix, to_jsonable
from slimdiff.recipe import read_recipe, write_recipe

from .builtins import BUILTIN_CONFIGS, build_builtin
from .export import slim_to_diffusers_names, to_diffusers
from .model import SlimUNet2DConditionModel

DIFFUSERS_UNET = ["diffusers", "UNet2DConditionModel"]
SLIM_UNET = ["slimdiff", "SlimUNet2DConditionModel"]
BUILTIN_NAMES = tuple(BUILTIN_CONFIGS)  # and the registered named pipelines (slimdiff.io.NAMED_PIPELINES)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(name_or_path: str | os.PathLike) -> tuple[str, Path | None]:
    """Classify a model argument: ("builtin", None) | ("pipeline", dir) | ("unet", dir).

    Raises ValueError (hub ids, unknown names) or FileNotFoundError (a dir without a config).
    """
    name = str(name_or_path)
    if name in BUILTIN_CONFIGS:
        return "builtin", None
    named = named_pipeline(name)  # a world's shipped pipeline, registered by its package
    if named is not None:
        return "pipeline", named
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "pipeline", path
        if (path / "config.json").is_file():
            return "unet", path
        raise FileNotFoundError(f"{path} is neither a diffusers pipeline (model_index.json) "
                                "nor a UNet directory (config.json)")
    if _HUB_ID.match(name) and not path.exists():
        raise ValueError(f"{name!r} looks like a Hugging Face Hub id; slimdiff never downloads models. "
                         f"Download it first (e.g. `huggingface-cli download {name} --local-dir DIR`) "
                         "and pass the local directory")
    raise ValueError(f"unknown model {name!r}: not a directory and not a built-in; built-ins: {[*BUILTIN_NAMES, *NAMED_PIPELINES]}")


def _load_unet_dir(path: Path):
    from diffusers import UNet2DConditionModel

    cls_name = read_json(path / "config.json").get("_class_name")
    classes = {"UNet2DConditionModel": UNet2DConditionModel, "SlimUNet2DConditionModel": SlimUNet2DConditionModel}
    if cls_name not in classes:
        raise ValueError(f"{path}/config.json has _class_name={cls_name!r}; slimdiff loads {list(classes)}")
    return classes[cls_name].from_pretrained(path)


def load_unet(name_or_path: str | os.PathLike):
    """A diffusers `UNet2DConditionModel` or a `SlimUNet2DConditionModel`, in eval mode.

    `sd15-arch` / `sd21-arch` (exact configs, random weights seeded with 0), `toy`, a local
    pipeline directory (its `unet/`), or a local UNet directory (plain or slim by `_class_name`).
    """
    kind, path = resolve_source(name_or_path)
    if kind == "builtin":
        return build_builtin(str(name_or_path))
    if kind == "pipeline":
        path = path / "unet"
    return _load_unet_dir(path).eval()


def check_text_width(unet: nn.Module, pipeline_dir: Path, name: Any) -> None:
    """ValueError when the U-Net's cross-attention reads text of another width than the
    pipeline's text encoder gives (it would fail later, deep inside a matmul)."""
    # SDXL's U-Net reads both encoders' hidden states concatenated (768 + 1280 = 2048; the refiner: the second alone)
    widths = [read_json(c).get("hidden_size") for c in (pipeline_dir / "text_encoder" / "config.json",
                                                         pipeline_dir / "text_encoder_2" / "config.json") if c.is_file()]
    width = sum(widths) if widths and None not in widths else None
    reads = sorted({m.to_k.in_features for m in unet.modules()
                    if getattr(m, "is_cross_attention", False) and hasattr(m, "to_k")})
    if width is not None and reads and reads != [width]:
        raise ValueError(f"the U-Net's cross-attention reads text of width {reads[0] if len(reads) == 1 else reads}, "
                         f"but the text encoder of {name} gives {width}: host it in a pipeline of its teacher "
                         f"(--base)")


# ----------------------------------------------------------------------------- saving


def write_dir(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_dir)`, then move each file into `path` with `os.replace` (atomic per file).

    What a killed earlier write left (`.<name>.tmp-*` beside `path`, temporaries inside it) is removed first.
    """
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        write(tmp)
        apply_file_modes(tmp)
        for src in sorted(tmp.rglob("*")):
            if src.is_file():
                dst = path / src.relative_to(tmp)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_unet(model: nn.Module, path: str | os.PathLike, recipe: dict | None = None) -> list[str]:
    """Save a U-Net to `path`; return its `[library, class]` as written in model_index.json.

    Plain diffusers when expressible (`to_diffusers`), else `save_pretrained` of the slim
    class. `recipe` goes to `path/recipe.json`; its `inheritance` keys are rewritten to the
    saved model's tensor names.
    """
    from diffusers import UNet2DConditionModel

    path = Path(path)
    plain = model if isinstance(model, UNet2DConditionModel) else to_diffusers(model)
    to_save, kind = (plain, DIFFUSERS_UNET) if plain is not None else (model, SLIM_UNET)

    def write(tmp: Path) -> None:
        to_save.save_pretrained(tmp)
        if kind == SLIM_UNET:  # the card says how (and how not) to load it
            (tmp / MODEL_CARD).write_text(model_card(model))

    card = path / MODEL_CARD
    if kind == DIFFUSERS_UNET and card.is_file() and card.read_text().startswith(_CARD_TITLE):
        card.unlink()  # a slim model's card left by an earlier save at this path
    write_dir(path, write)
    if recipe is not None:
        recipe = dict(recipe)
        if plain is not None and plain is not model and "inheritance" in recipe:
            names = slim_to_diffusers_names(model.config.blocks, list(recipe["inheritance"]))
            recipe["inheritance"] = {names[k]: v for k, v in recipe["inheritance"].items()}
        recipe["unet_class"] = kind
        write_recipe(path, recipe)
    return kind


MODEL_CARD = "README.md"
_CARD_TITLE = "# slimdiff SlimUNet2DConditionModel"


def model_card(model: nn.Module) -> str:
    """The README.md written beside a U-Net saved as slimdiff's own class: what it is and how it loads."""
    types = sorted({u.type for u in model.units()})
    plugins = model.config.get("unit_modules") or {}
    lines = [
        _CARD_TITLE, "",
        f"An edited text-to-image U-Net ({len(model.units())} units, {model.num_parameters():,} parameters; "
        f"unit types: {', '.join(types)}) made with slimdiff {__version__}. Its structure is not "
        "expressible as a plain diffusers `UNet2DConditionModel` config, so it is saved as slimdiff's own "
        "diffusers model class (`config.json` `_class_name` = `SlimUNet2DConditionModel`; the structure is "
        "its `blocks` entry).", "",
        "## Loading (needs `pip install slimdiff`)", "",
        "```python",
        "import slimdiff  # first: diffusers imports no library that a model_index.json names",
        "unet = slimdiff.SlimUNet2DConditionModel.from_pretrained(this_dir)",
        "# a pipeline directory whose model_index.json names [\"slimdiff\", \"SlimUNet2DConditionModel\"]:",
        "from diffusers import DiffusionPipeline",
        "pipe = DiffusionPipeline.from_pretrained(pipeline_dir)",
        "```", "",
        "Without `import slimdiff`, diffusers refuses the pipeline in one line (\"slimdiff is not one of the "
        "libraries Diffusers can load components from ... import slimdiff before calling `from_pretrained`\").", "",
        "Plain `diffusers.UNet2DConditionModel.from_pretrained(this_dir)` cannot load it: it would build "
        "the default SD block layout from this config and fail on the tensor shapes.",
    ]
    if plugins:
        lines += ["", "Unit types from plug-in modules (imported on load): "
                  + ", ".join(f"`{t}` from `{m}`" for t, m in plugins.items()) + "."]
    lines += ["", "`recipe.json` beside the weights (when present) says how the model was made."]
    return "\n".join(lines) + "\n"


def _copy(src: str, dst: str) -> str:
    """Copy a file (contents only: the new file's mode follows the umask). Never a hard link: an
    output must not share its inode with the teacher's (or the installed toy assets') files."""
    shutil.copyfile(src, dst)
    return dst


def save_pipeline_with(source: str | os.PathLike, out: str | os.PathLike,
                       replace: dict[str, Callable[[Path], list[str]]], scheduler: Any = None) -> Path:
    """Write a complete pipeline directory at `out`: `source`'s components, with those in `replace`
    written by their writers instead. The one "save a pipeline with parts swapped" helper.

    Every other entry of the source directory is copied (not hard-linked), whatever pipeline class
    it is (an SDXL pipeline keeps `text_encoder_2` / `tokenizer_2`). `replace`: component name ->
    `write(dir) -> [library, class]` that saves the new component into `dir`; model_index.json then
    names that class. `scheduler`: a diffusers scheduler written instead of `source`'s.
    """
    kind, src = resolve_source(source)
    if kind != "pipeline":
        raise ValueError(f"{source!r} is not a pipeline directory")
    out = Path(out)
    index = json.loads((src / "model_index.json").read_text())
    unknown = sorted(set(replace) - set(index))
    if unknown:
        raise ValueError(f"{src} has no component {unknown}; its components: {sorted(k for k in index if not k.startswith('_'))}")

    def write(tmp: Path) -> None:
        for entry in src.iterdir():
            if entry.name in replace or entry.name == "model_index.json" or entry.name.startswith("."):
                continue
            if entry.name == "scheduler" and scheduler is not None:
                scheduler.save_pretrained(tmp / "scheduler")
            elif entry.is_dir():
                shutil.copytree(entry, tmp / entry.name, copy_function=_copy)
            else:
                _copy(str(entry), str(tmp / entry.name))
        for name, writer in replace.items():
            index[name] = writer(tmp / name)
        if scheduler is not None:
            index["scheduler"] = ["diffusers", type(scheduler).__name__]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    for name in replace:
        if out.exists():
            shutil.rmtree(out / name, ignore_errors=True)  # a stale component of another class
    write_dir(out, write)
    return out


def save_pipeline_with_unet(source: str | os.PathLike, unet: nn.Module, out: str | os.PathLike,
                            saved_unet: str | os.PathLike | None = None, scheduler: Any = None) -> Path:
    """`save_pipeline_with` the U-Net `unet` (`saved_unet`: a directory where `save_unet(unet, ...)`
    already wrote it, copied instead of saving again)."""

    def write_unet(dest: Path) -> list[str]:
        if saved_unet is None:
            return save_unet(unet, dest)
        shutil.copytree(saved_unet, dest, copy_function=_copy,
                        ignore=lambda d, names: [n for n in names if n in ("recipe.json", "pipeline")
                                                 or n.startswith(".")])
        return SLIM_UNET if read_json(dest / "config.json")["_class_name"] == SLIM_UNET[1] else DIFFUSERS_UNET

    return save_pipeline_with(source, out, {"unet": write_unet}, scheduler=scheduler)


def save_student(student: nn.Module, out: str | os.PathLike, source: str | os.PathLike, recipe: dict) -> dict:
    """Write a pruned student: `out/` (save_unet + recipe.json) and, when `source` is a
    pipeline (or `toy`), a complete pipeline in `out/pipeline/`. Returns what was written."""
    out = Path(out)
    recipe = {"teacher": str(source), **recipe, "slimdiff_version": __version__}
    if "inheritance" not in recipe and hasattr(student, "inheritance"):
        recipe["inheritance"] = dict(student.inheritance)
    kind, src = resolve_source(source)
    check_disjoint(out, {"teacher": src})
    check_same_model(out, recipe)
    unet_kind = save_unet(student, out, recipe=recipe)
    written = {"unet": str(out), "unet_class": unet_kind, "recipe": str(out / "recipe.json")}
    if kind == "pipeline":
        written["pipeline"] = str(save_pipeline_with_unet(source, student, out / "pipeline", saved_unet=out))
    return written


_VOLATILE = ("slimdiff_version", "inheritance", "unet_class")  # recipe keys that do not name the model


def check_same_model(out: str | os.PathLike, recipe: dict) -> None:
    """ValueError when `out` already holds a model other than the one `recipe` describes.

    Rewriting the same student (same teacher and settings) is allowed, so a rerun after a kill
    completes it; writing another model over an existing output is refused, since a kill midway
    would leave `out/` and `out/pipeline/unet` holding different models.
    """
    out = Path(out)
    if not out.is_dir():
        return
    if (out / "recipe.json").is_file():
        try:
            old = read_recipe(out)
        except ValueError:
            old = None
        if isinstance(old, dict):
            new = to_jsonable(recipe)
            first = ("teacher", "preset", "edits", "search")  # how the student was made: shown first
            differs = sorted((k for k in {*old, *new} - set(_VOLATILE) if old.get(k) != new.get(k)),
                             key=lambda k: (first.index(k) if k in first else len(first), k))
            if not differs:
                return
            shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differs[:3])
            raise ValueError(f"{out} already holds another student ({shown}); choose another --out or delete it")
    if (out / "config.json").is_file() or (out / "model_index.json").is_file():
        raise ValueError(f"{out} already holds a model without a slimdiff recipe.json; choose another --out "
                         f"or delete it")
