"""Progressive incubation (A-SDM section 2.2, Fig. 3-4, Table 2): U-Nets assembled from blocks.

    from slimdiff.unet import assemble
    m2 = assemble(student, teacher, take="M2")   # student down.0-1 + up.2-3, teacher the rest
    m2.assembly["freeze"]                         # teacher-sourced parts, frozen in the 2nd distillation

Stage 1 distils a compressed student (e.g. bk-base); stage 2 assembles a new student from
compressed-student blocks and teacher blocks and distils it again with the teacher parts frozen
(METHODS.md section 4). `take` names the *positions* (the teacher's block names) filled by the
student: `down.i`, `mid`, `up.i`, plus the stem parts `conv_in`, `time_embedding`, `conv_out`
(= conv_norm_out + conv_out); every other position keeps the teacher's. Presets:
- M1: down.0 + up.3, M2: down.0-1 + up.2-3, M3: down.0-2 + up.1-3 (seed Table 2), each with
  the student's conv_in and conv_out, which touch only those shallow blocks (an
  interpretation: the seed does not say where the stem comes from); the time embedding
  stays the teacher's, which the frozen teacher blocks were trained with;
- "none" (the teacher) and "all" (every position: the student).
Student blocks sit at teacher positions by alignment: down blocks by index from the input
side, up blocks from the output side (bk-tiny's up.k at position up.k+1), mid to mid. Taking a
position where the student has no block (bk-small's mid) leaves it empty, so take="all" gives
the student itself. Skip wiring: every up-side resnet keeps the skip point it consumed in its
own model; those names are positional on the down side, so they stay valid wherever the down
blocks they read are placed as in their model; any misfit (a skip point that is gone, channels
that do not match) is an error naming the unit.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

from torch import nn

from slimdiff.io import read_json

from .io import load_unet, resolve_source, save_student
from .model import SlimUNet2DConditionModel
from .structure import UNetEditError, iter_units, name_to_path, split_tensor_name, validate
from .surgery import slim_view

STEM = ("conv_in", "time_embedding", "conv_out")
ASSEMBLIES: dict[str, tuple[str, ...]] = {  # seed Table 2 (student part; the rest is the teacher's)
    "M1": ("conv_in", "down.0", "up.3", "conv_out"),
    "M2": ("conv_in", "down.0", "down.1", "up.2", "up.3", "conv_out"),
    "M3": ("conv_in", "down.0", "down.1", "down.2", "up.1", "up.2", "up.3", "conv_out"),
}
# stem position -> tensor name prefixes, and the module names `--freeze` accepts for it
# (SDXL's added text/time conditioning, `add_embedding`, travels with the time embedding it is added to)
_STEM_TENSORS = {"conv_in": ("conv_in.",), "time_embedding": ("time_proj.", "time_embedding.", "add_embedding."),
                 "conv_out": ("conv_norm_out.", "conv_out.")}
_STEM_MODULES = {"conv_in": ["conv_in"], "time_embedding": ["time_embedding", "add_embedding"],
                 "conv_out": ["conv_norm_out", "conv_out"]}
# settings two models may differ in and still be assembled (text widths: compared unit by unit below)
_IGNORED_BASE = ("sample_size", "cross_attention_dim", "unit_modules")


def positions(teacher, student) -> dict[str, str | None]:
    """Teacher position -> the student block aligned with it (None: the student has none there)."""
    tb, sb = teacher.config.blocks, student.config.blocks
    nd_t, nd_s, nu_t, nu_s = len(tb["down"]), len(sb["down"]), len(tb["up"]), len(sb["up"])
    if nd_s > nd_t or nu_s > nu_t:
        raise UNetEditError(f"cannot assemble models of different topologies: the student has {nd_s} down and "
                            f"{nu_s} up blocks, more than the teacher's {nd_t} and {nu_t}")
    out: dict[str, str | None] = {p: p for p in STEM}
    out |= {f"down.{i}": f"down.{i}" if i < nd_s else None for i in range(nd_t)}
    if tb.get("mid"):
        out["mid"] = "mid" if sb.get("mid") else None
    shift = nu_t - nu_s
    out |= {f"up.{k}": f"up.{k - shift}" if k >= shift else None for k in range(nu_t)}
    return out


def resolve_take(take: str | Iterable[str], valid: dict[str, str | None]) -> tuple[list[str], str | None]:
    """(positions taken from the student, preset name or None) for a preset name or a list."""
    if isinstance(take, str):
        if take in ASSEMBLIES:
            names = list(ASSEMBLIES[take])
            missing = [n for n in names if n not in valid]
            if missing:
                raise UNetEditError(f"assembly {take} takes {missing}, which this teacher does not have")
            return names, take
        if take in ("all", "none"):
            return (list(valid) if take == "all" else []), take
        take = [take]
    names = list(dict.fromkeys(take))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UNetEditError(f"take names {unknown} are not positions of the teacher; valid: {list(valid)}, "
                            f"presets {list(ASSEMBLIES)}, 'all' or 'none'")
    return names, None


def check_same_topology(teacher, student) -> None:
    """Raise unless the two U-Nets read and write the same tensors (stem, time embedding, text width)."""
    a, b = teacher.base_config(), student.base_config()
    diff = [f"{k}: teacher {a.get(k)!r}, student {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in _IGNORED_BASE and a.get(k) != b.get(k)]
    dims = {u["kwargs"]["cross_attention_dim"] for m in (teacher, student)
            for _, _, u in iter_units(m.config.blocks) if u["kwargs"].get("cross_attention_dim")}
    if len(dims) > 1:
        diff.append(f"cross_attention_dim: {sorted(dims)}")
    if diff:
        raise UNetEditError("cannot assemble models of different topologies: " + "; ".join(diff))


def assemble(student: nn.Module, teacher: nn.Module, take: str | Iterable[str] = "M1"):
    """A `SlimUNet2DConditionModel` built from student and teacher parts (module docstring).

    Tensors are copied; `inheritance` maps each tensor to the original teacher's tensor it
    descends from (through the student's own inheritance for student parts); `assembly`
    records the take, each block's and stem part's source, and `freeze` (the teacher-sourced
    modules, the default frozen set of the second distillation). A numbered-step orchestration (1-4).
    """
    # 1. both models as slim views; same topology; positions and what to take
    s, t = slim_view(student), slim_view(teacher)
    s_inherit = s.inheritance
    if s is not student and getattr(student, "inheritance", None):  # a diffusers student with a recorded map
        s_inherit = {k: student.inheritance.get(v, v) for k, v in s.inheritance.items()}
    check_same_topology(t, s)
    where = positions(t, s)
    names, preset = resolve_take(take, where)
    taken = set(names)

    # 2. the structure, each unit tagged with (model, its name there); a position left empty is gone
    tb, sb = t.config.blocks, s.config.blocks
    new: dict = {"down": [], "mid": None, "up": []}
    block_source: dict[str, str] = {}  # new block name -> "student:down.0" | "teacher:down.1"
    for side in ("down", "up"):
        for i in range(len(tb[side])):
            pos = f"{side}.{i}"
            tag, block = _pick(pos, where, taken)
            if block is None:
                if side == "down" and i < len(tb["down"]) - 1 and where.get(f"down.{i + 1}") is not None \
                        and f"down.{i + 1}" not in taken:
                    raise UNetEditError(f"take {names}: position {pos} would be empty while down.{i + 1} is kept; "
                                        "only the deepest down blocks may be left out")
                continue
            name = f"{side}.{len(new[side])}"
            block_source[name] = f"{tag}:{block}"
            desc = copy.deepcopy((sb if tag == "student" else tb)[side][int(block.split('.')[1])])
            new[side].append(_tagged_block(desc, tag, block))
        if side == "down" and tb.get("mid"):
            tag, block = _pick("mid", where, taken)
            if block is not None:
                mid = (sb if tag == "student" else tb)["mid"]
                names_mid = [n for n, b, _ in iter_units({"down": [], "mid": mid, "up": []}) if b == "mid"]
                new["mid"] = [{**copy.deepcopy(u), "_from": (tag, n)} for n, u in zip(names_mid, mid)]
                block_source["mid"] = f"{tag}:mid"
    stem_source = {p: "student" if p in taken else "teacher" for p in STEM}

    # 3. validate (a misfit names the unit and the take) and build
    sources = {}
    for name, _, unit in iter_units(new):
        sources[name] = unit.pop("_from")
    labels = {n: f"{m}'s {u}" for n, (m, u) in sources.items()}
    try:
        validate(new, t.config.model_channels, labels=labels)
    except UNetEditError as e:
        raise UNetEditError(f"cannot assemble take={names}: {e}") from None
    model = SlimUNet2DConditionModel.from_structure(new, **t.base_config())

    # 4. tensors and their inheritance
    models = {"student": s, "teacher": t}
    states = {k: m.state_dict() for k, m in models.items()}
    inherits = {"student": s_inherit, "teacher": t.inheritance}
    tensors, inheritance = {}, {}
    for name in model.state_dict():
        unit, rest = split_tensor_name(name)
        if unit is None:
            part = next(p for p, prefixes in _STEM_TENSORS.items() if name.startswith(prefixes))
            which, src = stem_source[part], name
        else:
            which, src_unit = sources[unit]
            src = name_to_path(src_unit) + "." + rest
        tensors[name] = states[which][src]
        inheritance[name] = inherits[which].get(src, src)
    model.load_tensors(tensors, strict=True)
    model.inheritance = inheritance
    model.unit_sources = {n: models[m].unit_sources.get(u, u) for n, (m, u) in sources.items()}
    freeze = [b for b, src in block_source.items() if src.startswith("teacher:")]
    freeze += [m for p in STEM if stem_source[p] == "teacher" for m in _STEM_MODULES[p] if hasattr(model, m)]
    model.assembly = {
        "take": names, "preset": preset, "blocks": block_source, "stem": stem_source, "freeze": freeze,
        "block_map": {b: _position(b, src, where) for b, src in block_source.items()},
        "reference": "Zhu et al., A-SDM, section 2.2 and Table 2",
    }
    return model.train(s.training)


def _pick(pos: str, where: dict, taken: set) -> tuple[str, str | None]:
    """("student", its block | None) for a taken position, else ("teacher", pos)."""
    return ("student", where[pos]) if pos in taken else ("teacher", pos)


def _tagged_block(desc: dict, tag: str, block: str) -> dict:
    """A block description whose units carry `_from` = (model, unit name in that model)."""
    side = block.split(".")[0]
    wrapper = {"down": [], "mid": None, "up": []}
    wrapper[side] = [desc]
    for name, _, unit in iter_units(wrapper):
        unit["_from"] = (tag, name.replace(f"{side}.0", block, 1))
    return desc


def _position(block: str, source: str, where: dict) -> str:
    """The teacher block (position) an assembled block stands at: its feature-KD counterpart."""
    tag, src = source.split(":")
    if tag == "teacher":
        return src
    return next(p for p, b in where.items() if b == src and p not in STEM)


def same_model_source(a: str, b: str) -> bool | None:
    """Whether two model arguments name the same model (a built-in name, or the same directory);
    None when `a` no longer resolves (e.g. a path relative to another working directory)."""
    try:
        kind_a, path_a = resolve_source(a)
    except (ValueError, FileNotFoundError):
        return None
    kind_b, path_b = resolve_source(b)
    if path_a is None or path_b is None:  # built-ins: the same name
        return kind_a == kind_b and str(a) == str(b)
    return path_a.resolve() == path_b.resolve()


def check_recipe_teacher(recipe: dict, student: str, teacher: str) -> None:
    """ValueError when the student's recipe names a teacher other than `teacher` (its blocks were
    pruned from, and learned to imitate, that one: assembling them with another teacher's is wrong)."""
    named = recipe.get("teacher")
    if isinstance(named, str) and same_model_source(named, teacher) is False:
        raise ValueError(f"--teacher {teacher!r} is not the teacher the student {student} was made from: its "
                         f"recipe.json names {named!r} (valid: --teacher {named})")


def assemble_saved(student: str, teacher: str, take: str | Iterable[str], out: str) -> dict:
    """`assemble` on saved models (the student's recipe.json supplies its inheritance), then
    `save_student` to `out`: the U-Net, recipe.json (`assemble`, `block_map`, inheritance) and,
    for a pipeline teacher, `out/pipeline/`. Returns what was written plus the assembly."""
    t_model = load_unet(teacher)
    s_model = load_unet(student)
    kind, path = resolve_source(student)
    s_recipe = read_json(path / "recipe.json") if kind == "unet" and (path / "recipe.json").is_file() else {}
    check_recipe_teacher(s_recipe, student, teacher)
    s_model.inheritance = s_recipe.get("inheritance") or getattr(s_model, "inheritance", None)
    model = assemble(s_model, t_model, take)
    recipe = {"student": str(Path(student)), "assemble": model.assembly, "block_map": model.assembly["block_map"]}
    history = s_recipe.get("distill_history", []) + ([s_recipe["distill"]] if "distill" in s_recipe else [])
    if history:  # stage 1 (the student's distillation) stays on record
        recipe["distill_history"] = history
    written = save_student(model, out, source=teacher, recipe=recipe)
    return {**written, "assembly": model.assembly}
