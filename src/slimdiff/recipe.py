"""The recipe every artifact carries: `recipe.json` beside the weights says how it was made.

    recipe = read_recipe("runs/bk-small")                  # {} when the directory has none
    write_recipe("runs/kd", merge(recipe, {"distill": cfg.to_dict()}))
    teacher_of(recipe), sampling_of(recipe)                # typed reads of the shared fields

A recipe is a JSON object. The fields several rooms read are typed and validated here (a damaged
recipe fails with the file and the field, not later with a KeyError):
- `teacher` (str): the model the artifact was pruned or distilled from (`toy`, a path, a built-in);
- `inheritance` ({student tensor: teacher tensor or null}): recorded weight inheritance;
- `sampling` ({"steps": int >= 1, "guidance": number, ...}): how the model samples by default
  (written by step distillation; read once by `slimdiff.sample`);
- `history` ([{stage: settings}, ...]): the earlier stages' entries that a later stage replaced,
  oldest first (`merge`);
- `slimdiff_version` (str).
Every other top-level key is one stage's settings (`prune`, `distill`, `step_distill`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimdiff.io import read_json, to_jsonable, write_json

RECIPE_FILE = "recipe.json"
# field -> (type or types, what is valid) of the fields shared across rooms
TYPED_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "teacher": (str, "a model name or path"),
    "inheritance": (dict, "an object {student tensor: teacher tensor or null}"),
    "sampling": (dict, 'an object {"steps": int >= 1, "guidance": number, ...}'),
    "history": (list, "a list of {stage: settings} objects"),
    "slimdiff_version": (str, "a version string"),
}


def recipe_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / RECIPE_FILE


def validate_recipe(recipe: Any, where: str = "recipe") -> dict:
    """`recipe` itself when its shared fields have their types; ValueError naming the field otherwise."""
    if not isinstance(recipe, dict):
        raise ValueError(f"{where}: a recipe is a JSON object, got {type(recipe).__name__}")
    for key, (kind, valid) in TYPED_FIELDS.items():
        if key in recipe and recipe[key] is not None and not isinstance(recipe[key], kind):
            raise ValueError(f"{where}: field {key!r}={recipe[key]!r} is invalid: {valid}")
    sampling = recipe.get("sampling")
    if isinstance(sampling, dict):
        steps, guidance = sampling.get("steps"), sampling.get("guidance")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or \
                isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
            raise ValueError(f"{where}: 'sampling' needs integer steps >= 1 and a number guidance, "
                             f"got steps={steps!r}, guidance={guidance!r}")
    return recipe


def read_recipe(directory: str | os.PathLike) -> dict:
    """The validated recipe in `directory` ({} when it has none)."""
    path = recipe_path(directory)
    if not path.is_file():
        return {}
    return validate_recipe(read_json(path), str(path))


def write_recipe(directory: str | os.PathLike, recipe: dict) -> Path:
    """Validate `recipe` and write it atomically as `directory/recipe.json`; returns the path."""
    recipe = to_jsonable(recipe)
    path = recipe_path(directory)
    validate_recipe(recipe, str(path))
    write_json(path, recipe)
    return path


def merge(parent: dict, stage: dict) -> dict:
    """The recipe of an artifact made from one with recipe `parent` by a stage whose entries are
    `stage`: the parent's fields, then the stage's. A stage entry that replaces one of the parent's
    (a second `distill`) moves the parent's into `history`, oldest first."""
    out = {k: v for k, v in parent.items() if k != "history"}
    history = list(parent.get("history") or [])
    for key, value in stage.items():
        if key in out and key not in TYPED_FIELDS and out[key] != value:
            history.append({key: out[key]})
        out[key] = value
    if history:
        out["history"] = history
    return out


def teacher_of(recipe: dict) -> str | None:
    """The `teacher` a recipe names, or None."""
    teacher = recipe.get("teacher")
    return teacher if isinstance(teacher, str) else None


def sampling_of(recipe: dict) -> dict | None:
    """The recorded `sampling` entry (validated by `read_recipe`), or None."""
    sampling = recipe.get("sampling")
    return sampling if isinstance(sampling, dict) else None
