"""A LoRA trained on the teacher, moved onto a pruned student through the recorded inheritance.

    mapped, report = remap_lora(lora, recipe["inheritance"], weight_shapes(student_dir))
    report = remap_lora_files("lcm-lora-sdv1-5/", "runs/bk-small", "runs/bk-small-lcm-lora")
    pipe.load_lora_weights("runs/bk-small-lcm-lora")   # a pipeline holding the student's U-Net

A LoRA targets modules: `<module>.lora_A.weight` (down, r x in [x k x k]) and `.lora_B.weight`
(up, out x r [x 1 x 1]), or the older `.lora.down/up.weight`, kohya's `lora_unet_<module with _>`
`.lora_down/up.weight` and `.alpha`; with a `unet.` prefix or none. A student module inherits a
teacher module when its `.weight` was copied from the teacher's (`inheritance`: student tensor ->
teacher tensor, None / "new" for fresh tensors). BK-style removals shift names
(`up_blocks.1.resnets.1 <- up_blocks.1.resnets.2`), so keys are renamed, never matched by name.
Text-encoder keys (`text_encoder.`, `lora_te_`) are copied unchanged: students keep the teacher's
text encoder. Dropped, with the reason: modules of removed units, and modules whose student weight
has another shape than the LoRA fits (channel-pruned). A LoRA of another base is an error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from safetensors import safe_open
from safetensors.torch import save_file

from slimdiff.io import atomic_path, check_disjoint, read_json
from slimdiff.recipe import read_recipe, teacher_of, write_recipe

from .io import resolve_source

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' `load_lora_weights(dir)` reads
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata entry (peft LoraConfig fields)
_DOWN = ("lora_A.weight", "lora.down.weight", "lora_down.weight")  # r x in [x k x k]
_UP = ("lora_B.weight", "lora.up.weight", "lora_up.weight")  # out x r [x 1 x 1]
_OTHER = ("alpha", "lora_B.bias", "lora_magnitude_vector", "lora_magnitude_vector.weight")
_PARTS = _DOWN + _UP + _OTHER
_TEXT = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")
_KOHYA = "lora_unet_"
_NEW = (None, "new")  # inheritance values of tensors that came from no teacher tensor


@dataclasses.dataclass
class LoraRemap:
    """What `remap_lora` did. `kept`: teacher module -> student modules that received its LoRA;
    `dropped`: teacher module -> why not; `text_keys`: text-encoder keys copied unchanged."""

    kept: dict[str, list[str]]
    dropped: dict[str, str]
    text_keys: int = 0
    base_check: str = "teacher"  # "teacher": against the teacher's shapes; "inheritance": the teacher was not found

    @property
    def renamed(self) -> dict[str, list[str]]:
        return {t: s for t, s in self.kept.items() if s != [t]}

    def lines(self) -> list[str]:
        out = [f"kept {len(self.kept)} LoRA modules ({len(self.renamed)} renamed), dropped {len(self.dropped)}"
               + (f", {self.text_keys} text-encoder keys copied" if self.text_keys else "")]
        out += [f"  renamed {t} -> {', '.join(s)}" for t, s in self.renamed.items()]
        out += [f"  dropped {t}: {why}" for t, why in self.dropped.items()]
        if self.base_check == "inheritance":
            out.append("  (teacher weights not found: its base was checked against the inherited shapes only)")
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _split(key: str, name: str) -> tuple[str, str, str]:
    """`unet.down_blocks.0.x.lora_A.weight` -> ("unet.", "down_blocks.0.x", "lora_A.weight")."""
    for part in _PARTS:
        if key.endswith("." + part):
            module = key[: -len(part) - 1]
            for prefix in ("unet.", _KOHYA):
                if module.startswith(prefix):
                    return prefix, module[len(prefix):], part
            return "", module, part
    raise ValueError(f"{name}: key {key!r} is not a LoRA key (valid endings: {', '.join(_PARTS)})")


def _fits(down: Sequence[int], up: Sequence[int], weight: Sequence[int]) -> bool:
    """A LoRA pair fits a weight (out, in[, k, k]) when down is (r, in[, k, k]) and up is (out, r[, 1, 1])."""
    return tuple(down[1:]) == tuple(weight[1:]) and up[0] == weight[0] and up[1] == down[0]


def _shape_text(down: Sequence[int], up: Sequence[int]) -> str:
    return f"LoRA down {tuple(down)}, up {tuple(up)}"


def remap_lora(lora: Mapping[str, Any], inheritance: Mapping[str, str | None],
               student_shapes: Mapping[str, Sequence[int]], teacher_shapes: Mapping[str, Sequence[int]] | None = None,
               metadata: Mapping[str, str] | None = None, name: str = "the LoRA"
               ) -> tuple[dict[str, Any], LoraRemap, dict[str, str] | None]:
    """(student LoRA state dict, report, rewritten safetensors metadata) for a teacher LoRA.

    Numbered steps:
    1. group the LoRA's keys by target module; text-encoder keys pass through;
    2. teacher module -> student modules whose `.weight` inherits its `.weight` (an inserted copy
       of a unit gets the LoRA too);
    3. each LoRA module: foreign when the teacher lacks it or its shapes do not fit the teacher's
       weight (`teacher_shapes`; without them, the inherited student shapes stand in); else kept on
       each student module it fits, dropped when removed or channel-pruned;
    4. ValueError naming `name` and the first mismatch when the LoRA is of another base;
    5. the renamed keys (kohya names re-flattened), the metadata's module names rewritten.
    """
    # 1. LoRA modules (a kohya name `down_blocks_0_...` resolved against the teacher's dotted names)
    missing = [k for k in inheritance if k not in student_shapes]
    if missing:
        raise ValueError(f"the inheritance names {len(missing)} tensors the student does not have (first: "
                         f"{missing[0]!r}): it is not this student's")
    t_weights = {k[: -len(".weight")]: v for k, v in (teacher_shapes or {}).items() if k.endswith(".weight")}
    t_to_s: dict[str, list[str]] = collections.defaultdict(list)
    for s_name, t_name in inheritance.items():  # 2. (inserted copies: several student modules)
        if s_name.endswith(".weight") and t_name not in _NEW and t_name.endswith(".weight"):
            t_to_s[t_name[: -len(".weight")]].append(s_name[: -len(".weight")])
    known = set(t_weights) if teacher_shapes is not None else set(t_to_s)
    flat = {m.replace(".", "_"): m for m in known}
    modules: dict[tuple[str, str], dict[str, str]] = collections.defaultdict(dict)  # (prefix, module) -> {part: key}
    text = [k for k in lora if k.startswith(_TEXT)]
    for key in lora:
        if key not in text:
            prefix, module, part = _split(key, name)
            modules[(prefix, flat.get(module, module) if prefix == _KOHYA else module)][part] = key
    if not modules and not text:
        raise ValueError(f"{name} holds no LoRA keys")

    # 3. classify every module
    kept: dict[str, list[str]] = {}
    dropped: dict[str, str] = {}
    foreign: list[str] = []
    for (prefix, module), parts in modules.items():
        down = next((lora[parts[p]].shape for p in _DOWN if p in parts), None)
        up = next((lora[parts[p]].shape for p in _UP if p in parts), None)
        if down is None or up is None:
            raise ValueError(f"{name}: module {module!r} has {sorted(parts)}, not a down and an up matrix")
        if teacher_shapes is not None and module not in t_weights:
            foreign.append(f"module {module!r} is not in the teacher")
            continue
        t_shape = t_weights.get(module)
        if t_shape is not None and not _fits(down, up, t_shape):
            foreign.append(f"{module}: teacher weight {tuple(t_shape)}, {_shape_text(down, up)}")
            continue
        targets = t_to_s.get(module, [])
        if not targets:
            dropped[module] = "removed (no student module inherits it)"
            continue
        fit = [s for s in targets if _fits(down, up, student_shapes[s + ".weight"])]
        if not fit:
            dropped[module] = (f"shape: student {targets[0]}.weight {tuple(student_shapes[targets[0] + '.weight'])}, "
                               f"{_shape_text(down, up)}")
            if t_shape is None:  # no teacher shapes: an inherited tensor keeps its teacher's shape
                foreign.append(f"{module}: " + dropped[module].removeprefix("shape: "))
            continue
        kept[module] = fit

    # 4. another base: any mismatch against the teacher, or (inheritance only) most modules or all
    checked = len(modules) if teacher_shapes is not None else len(kept) + len(foreign)
    if foreign and (teacher_shapes is not None or len(foreign) * 2 > checked or not kept):
        raise ValueError(f"{name} does not match the student's teacher ({len(foreign)} of {checked} modules differ); "
                         f"first: {foreign[0]}")
    if modules and not kept:
        first = next(iter(modules))[1]
        raise ValueError(f"{name}: none of its {len(modules)} modules is in the student (first: {first!r}: "
                         f"{dropped.get(first, 'unknown')})" + ("" if teacher_shapes is not None else
                                                                "; is it a LoRA of this student's teacher?"))

    # 5. renamed keys; a tensor used by two student modules is cloned (safetensors refuses shared storage)
    out: dict[str, Any] = {k: lora[k] for k in text}
    for (prefix, module), parts in modules.items():
        for i, s in enumerate(kept.get(module, [])):
            s_key = s.replace(".", "_") if prefix == _KOHYA else s
            for part, key in parts.items():
                out[f"{prefix}{s_key}.{part}"] = lora[key].clone() if i else lora[key]
    report = LoraRemap(kept=kept, dropped=dropped, text_keys=len(text),
                       base_check="teacher" if teacher_shapes is not None else "inheritance")
    return out, report, _rename_metadata(metadata, kept)


def _rename_metadata(metadata: Mapping[str, str] | None, kept: Mapping[str, list[str]]) -> dict[str, str] | None:
    """diffusers' `lora_adapter_metadata` ({"unet.target_modules": [...], "unet.rank_pattern": {...}}) with
    the module names it spells out in full renamed: target_modules become the kept student modules."""
    if not metadata:
        return None
    out = dict(metadata)
    if METADATA_KEY not in out:
        return out
    config = json.loads(out[METADATA_KEY])
    students = sorted({s for names in kept.values() for s in names})
    for key, value in config.items():
        if not key.startswith("unet."):
            continue
        if key.endswith(".target_modules") and value:
            config[key] = students
        elif key.endswith("_pattern") and isinstance(value, dict):  # rank_pattern, alpha_pattern
            config[key] = {s: v for k, v in value.items() for s in kept.get(k.removeprefix("unet."), [k])}
    out[METADATA_KEY] = json.dumps(config, indent=2, sort_keys=True)
    return out


# ----------------------------------------------------------------------------- files


def read_lora(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str], Path]:
    """(tensors, safetensors metadata, file) of a LoRA file or directory (its `pytorch_lora_weights.safetensors`,
    or its only `.safetensors`). Pickle files (`.bin`, `.pt`, `.ckpt`) are refused."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / LORA_FILE] if (path / LORA_FILE).is_file() else sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise ValueError(f"{path} holds {len(found)} .safetensors files {[f.name for f in found]}; "
                             f"give the LoRA file itself")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"LoRA {path} does not exist")
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA {path}: slimdiff reads .safetensors only (no pickles); convert it first")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}), path


def weight_shapes(unet_dir: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the safetensors weights of a U-Net directory, read from the headers only."""
    unet_dir = Path(unet_dir)
    index = unet_dir / "diffusion_pytorch_model.safetensors.index.json"
    files = sorted(set(read_json(index)["weight_map"].values())) if index.is_file() else \
        ["diffusion_pytorch_model.safetensors"]
    shapes = {}
    for name in files:
        if not (unet_dir / name).is_file():
            raise FileNotFoundError(f"{unet_dir} has no {name} (slimdiff reads safetensors U-Net weights only)")
        with safe_open(str(unet_dir / name), framework="pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return shapes


def _unet_dir(path: Path) -> Path:
    return path / "unet" if (path / "model_index.json").is_file() else path


def _teacher_shapes(teacher: str | None, base: Path) -> dict[str, tuple[int, ...]] | None:
    """The teacher's weight shapes when its directory is here (a relative path is tried from `base` too)."""
    if teacher is None:
        return None
    for candidate in (teacher, str(base / teacher)):
        try:
            kind, path = resolve_source(candidate)
        except (ValueError, FileNotFoundError):
            continue
        if path is not None:
            return weight_shapes(_unet_dir(path))
    return None


def remap_lora_files(lora: str | os.PathLike, student: str | os.PathLike, out: str | os.PathLike,
                     teacher: str | None = None) -> LoraRemap:
    """`remap_lora` on files: the LoRA (file or directory), the student (a prune / distill output: a UNet
    or pipeline directory whose `recipe.json` holds `inheritance`), written to `out/pytorch_lora_weights.safetensors`
    (atomic) with `out/recipe.json`. `teacher`: the teacher's directory when the recipe's is not here.
    A student without a recorded inheritance is read as the teacher's own architecture (identity)."""
    student, out = Path(student).expanduser(), Path(out)
    check_disjoint(out, {"LoRA": lora, "student": student})
    tensors, metadata, lora_file = read_lora(lora)
    unet_dir = _unet_dir(student)
    recipe = read_recipe(student) or read_recipe(unet_dir)
    s_shapes = weight_shapes(unet_dir)
    inheritance = recipe.get("inheritance") or {k: k for k in s_shapes}
    t_shapes = _teacher_shapes(teacher or teacher_of(recipe), student)
    if teacher is not None and t_shapes is None:
        raise ValueError(f"--teacher {teacher!r} is not a U-Net or pipeline directory with safetensors weights")
    mapped, report, metadata = remap_lora(tensors, inheritance, s_shapes, t_shapes, metadata, name=str(lora_file))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / LORA_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in mapped.items()}, str(tmp), metadata={"format": "pt", **(metadata or {})})
    write_recipe(out, {"remap_lora": {"lora": str(lora_file), "student": str(student), **report.to_dict()}})
    return report
