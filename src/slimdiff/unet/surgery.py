"""Structural edits of a U-Net: remove units, insert copies, with weight inheritance.

Every edit returns a new `SlimUNet2DConditionModel` whose modules are really gone or really
added (no masks, no identity stubs), with weights copied and two maps composed back to the
original teacher:
- `inheritance`: student tensor name -> teacher tensor name (None: new),
- `unit_sources`: student unit name -> teacher unit name.

Skip wiring (DESIGN.md): a removed down layer or downsampler leaves its skip point as an
ALIAS of the value that flows in its place (its input, i.e. the previous skip point), so
nothing is computed for it; an up-side resnet that is removed simply stops consuming its
skip; a skip point nobody consumes is not stored. Names are positional, so after an edit
layers and blocks are renumbered as diffusers would number them (BK-SDM-Base's up layers
are `layer.0` <- teacher layer 0 and `layer.1` <- teacher layer 2).
"""

from __future__ import annotations

import copy

from torch import nn

from .model import SlimUNet2DConditionModel
from .registry import build_unit
from .structure import (
    UNetEditError,
    block_names_of,
    depth_of,
    inner_units,
    split_inner,
    iter_units,
    key_to_name,
    layer_keys,
    layer_names_of,
    name_to_path,
    role_of,
    skip_points_of,
    split_tensor_name,
    unit_channels,
    validate,
)


def to_slim(model: nn.Module):
    """A `SlimUNet2DConditionModel` for a slim (returned as is) or diffusers U-Net (imported)."""
    if isinstance(model, SlimUNet2DConditionModel):
        return model
    return SlimUNet2DConditionModel.from_diffusers(model)


def slim_view(model: nn.Module):
    """`model` as a `SlimUNet2DConditionModel` without copying a tensor: a slim model is
    returned as is, a diffusers U-Net is imported sharing its tensors (`from_diffusers(clone=False)`).

    For reading a model's structure, or for an edit that copies the tensors it keeps anyway
    (every edit here, `assemble`, the unit types of slimdiff.modules). Writing into the view's
    tensors writes into `model`'s; use `to_slim` for an independent copy.
    """
    if isinstance(model, SlimUNet2DConditionModel):
        return model
    return SlimUNet2DConditionModel.from_diffusers(model, clone=False)


def _unit_sets(blocks: dict) -> dict[str, list[str]]:
    """Every removable name (unit, layer, block) -> the unit names it stands for."""
    units = [(n, b) for n, b, _ in iter_units(blocks)]
    out: dict[str, list[str]] = {n: [n] for n, _ in units}
    for layer in layer_names_of(blocks):
        out[layer] = [n for n, _ in units if n.startswith(layer + ".")]
    for block in block_names_of(blocks):
        out[block] = [n for n, b in units if b == block]
    out.update({name: [name] for name, _, _ in inner_units(blocks)})
    return out


def _untagged(blocks: dict) -> dict:
    """A copy of a tagged structure without the `_from` tags (for validation only)."""
    blocks = copy.deepcopy(blocks)
    for _, _, unit in iter_units(blocks):
        unit.pop("_from", None)
        unit.pop("_inner_from", None)
    return blocks


def _tag(unit: dict, name: str, inner: list[int] | None = None) -> dict:
    """A copy of `unit` tagged with its old name; `inner`: the old inner block indices it keeps
    (its depth becomes len(inner); tensors of block m come from old block inner[m])."""
    out = {**copy.deepcopy(unit), "_from": name}
    if inner is not None and len(inner) != depth_of(unit):
        out["kwargs"]["num_layers"] = len(inner)
        out["_inner_from"] = list(inner)
    return out


def remove_units(model: nn.Module, names: list[str] | tuple[str, ...] | str):
    """Remove units, layers (`down.1.layer.1`) or blocks (`mid`, `down.3`); return a new model.

    Inner blocks of a Transformer unit of depth > 1 (`down.2.layer.0.attn.tblock.3`) are units
    too: removing some lowers the unit's depth (the blocks kept inherit their own weights);
    removing all of them removes the unit.

    Raises `UNetEditError` naming the unit and the reason when the result is ill formed, and
    listing valid names when a name is unknown. `remove_units(m, [])` is an equivalent copy.
    """
    return _remove(slim_view(model), names, build=True)


def check_removal(model: nn.Module, names: list[str] | tuple[str, ...] | str) -> None:
    """Raise `UNetEditError` exactly when `remove_units(model, names)` would, without building
    anything (a structural check: milliseconds even for SD-1.5). Used by searches to list candidates."""
    _remove(slim_view(model), names, build=False)


def _remove(model, names, build: bool):
    names = [names] if isinstance(names, str) else list(names)
    old = model.config.blocks
    sets = _unit_sets(old)
    unknown = [n for n in names if n not in sets]
    if unknown:
        raise UNetEditError(f"unknown unit/layer/block name(s) {unknown}; valid names: {list(sets)}")
    removed, keep_inner = _inner_kept(old, {u for n in names for u in sets[n]})

    # 1. alias every removed skip point to the value flowing in its place (the previous point)
    def survives(point: str) -> bool:
        if point == "conv_in" or point.endswith("downsample"):
            return point not in removed
        return any(u not in removed for u in sets[point])  # a layer survives while a unit is left

    alias, last = {}, "conv_in"
    for point in skip_points_of(old):
        last = point if survives(point) else last
        alias[point] = last

    # 2. the new structure, each unit tagged with its old name; old point -> new point name
    new: dict = {"down": [], "mid": None, "up": []}
    rename = {"conv_in": "conv_in"}
    for side, sampler in (("down", "downsample"), ("up", "upsample")):
        for i, block in enumerate(old[side]):
            layers = []
            for j, layer in enumerate(block["layers"]):
                kept = []
                for key, unit in zip(layer_keys(layer), layer):
                    name = f"{side}.{i}.layer.{j}.{key_to_name(key)}"
                    if name not in removed:
                        kept.append(_tag(unit, name, keep_inner.get(name)))
                if kept:
                    layers.append((j, kept))
            samp = block.get(sampler)
            samp = _tag(samp, f"{side}.{i}.{sampler}") if samp and f"{side}.{i}.{sampler}" not in removed else None
            if not layers and samp is None:
                continue  # the whole block is gone
            ni = len(new[side])
            for nj, (j, _) in enumerate(layers):
                rename[f"{side}.{i}.layer.{j}"] = f"{side}.{ni}.layer.{nj}"
            if samp is not None:
                rename[f"{side}.{i}.{sampler}"] = f"{side}.{ni}.{sampler}"
            new[side].append({"layers": [kept for _, kept in layers], sampler: samp})
        if side == "down" and old.get("mid"):
            keys = layer_keys(old["mid"], in_mid=True)
            names_mid = [f"mid.{key_to_name(k)}" for k in keys]
            mid = [_tag(u, n, keep_inner.get(n)) for n, u in zip(names_mid, old["mid"]) if n not in removed]
            new["mid"] = mid or None
    if not new["down"] and not new["mid"] and not new["up"]:
        raise UNetEditError(f"cannot remove {', '.join(names)}: no block would be left (only conv_in and conv_out)")
    for block in new["up"]:
        for layer in block["layers"]:
            for unit in layer:
                if unit.get("skip"):
                    unit["skip"] = rename[alias[unit["skip"]]]

    # 3. validate and build; a misfit names the removed unit that changes channels, if any
    try:
        if not build:
            labels = {name: unit["_from"] for name, _, unit in iter_units(new)}
            return validate(_untagged(new), model.config.model_channels, labels=labels)
        return _rebuild(model, new)
    except UNetEditError as e:
        changers = []
        for name, _, unit in iter_units(old):
            if name in removed:
                c_in, c_out = unit_channels(unit)
                if unit.get("skip"):
                    c_in -= _point_channels(model, unit["skip"])
                if c_in != c_out:
                    changers.append(f"{name} changes channels {c_in}->{c_out}")
        if len(changers) == 1 and changers[0].startswith(names[0] + " ") and len(names) == 1:
            changers = ["it" + changers[0][len(names[0]):]]
        why = f"{'; '.join(changers)} and {e}" if changers else str(e)
        raise UNetEditError(f"cannot remove {', '.join(names)}: {why}") from None


def _inner_kept(blocks: dict, removed: set[str]) -> tuple[set[str], dict[str, list[int]]]:
    """(removed unit names, unit -> the inner block indices it keeps) for a set of removed names
    that may hold inner blocks (`<unit>.tblock.k`); a unit that keeps no inner block is removed whole."""
    keep_inner: dict[str, list[int]] = {}
    for name, unit_name, k in inner_units(blocks):
        if unit_name not in removed:
            keep_inner.setdefault(unit_name, [])
            if name not in removed:
                keep_inner[unit_name].append(k)
    removed = {n for n in removed if not split_inner(n)} | {u for u, kept in keep_inner.items() if not kept}
    return removed, keep_inner


def _point_channels(model, point: str) -> int:
    """Channels of a skip point of `model` (from its validation trace)."""
    if point == "conv_in":
        return model.config.model_channels
    if point.endswith("downsample"):
        return model._traces[point].out_channels
    last = [n for n in model._traces if n.startswith(point + ".")][-1]
    return model._traces[last].out_channels


def insert_unit(model: nn.Module, source: str, after: str):
    """Insert a deep copy of the channel-preserving unit `source` right after unit `after`.

    `source`: a resnet with in == out channels and no skip, or an attn unit. `after`: a unit
    inside a layer or the mid block, whose output has the source's channels and level.
    Example (SnapFusion, seed 001 Table 3): `insert_unit(m, "up.2.layer.0.attn",
    "up.2.layer.0.attn")` adds `up.2.layer.0.attn.1`. The copy's tensors inherit the source's.
    """
    model = slim_view(model)
    old = model.config.blocks
    units = {n: u for n, _, u in iter_units(old)}
    traces = model._traces
    for role, name in (("source", source), ("after", after)):
        if name not in units:
            raise UNetEditError(f"unknown {role} unit {name!r}; valid units: {list(units)}")
        if role_of(units[name]) in ("downsample", "upsample"):
            raise UNetEditError(f"{role} {name} is a {role_of(units[name])}r, not a unit inside a layer")
    src, t_src, t_after = units[source], traces[source], traces[after]
    if role_of(src) == "resnet" and (src.get("skip") or t_src.in_channels != t_src.out_channels):
        skip = ", consumes a skip" if src.get("skip") else ""
        raise UNetEditError(f"cannot insert a copy of {source}: it is not channel-preserving "
                            f"({t_src.in_channels}->{t_src.out_channels}{skip})")
    if t_after.out_channels != t_src.in_channels:
        raise UNetEditError(f"cannot insert a copy of {source} after {after}: {after} gives "
                            f"{t_after.out_channels} channels and {source} expects {t_src.in_channels}")
    if t_after.level != t_src.level:
        raise UNetEditError(f"cannot insert a copy of {source} after {after}: {after} works at level "
                            f"{t_after.level} and {source} at level {t_src.level}")

    # the new structure: every unit tagged with its old name, the copy tagged with its source
    new = copy.deepcopy(dict(old))
    for side in ("down", "up"):
        for i, block in enumerate(new[side]):
            for j, layer in enumerate(block["layers"]):
                names = [f"{side}.{i}.layer.{j}.{key_to_name(k)}" for k in layer_keys(layer)]
                block["layers"][j] = _with_copy(layer, names, source, after, src)
            for sampler in ("downsample", "upsample"):
                if block.get(sampler):
                    block[sampler] = _tag(block[sampler], f"{side}.{i}.{sampler}")
    if new.get("mid"):
        names = [f"mid.{key_to_name(k)}" for k in layer_keys(new["mid"], in_mid=True)]
        new["mid"] = _with_copy(new["mid"], names, source, after, src)
    return _rebuild(model, new)


def _with_copy(layer: list[dict], names: list[str], source: str, after: str, src: dict) -> list[dict]:
    out = []
    for name, unit in zip(names, layer):
        out.append(_tag(unit, name))
        if name == after:
            twin = _tag(src, source)
            twin.pop("skip", None)
            out.append(twin)
    return out


def replace_unit(model: nn.Module, name: str, unit_type: str, kwargs: dict | None = None):
    """Swap unit `name` for one of the registered `unit_type` with the same role (same name).

    `kwargs` default to the old unit's. Tensors whose name and shape match the old unit's are
    copied (and keep their inheritance); the others keep the new module's own initialisation
    and are recorded as new (None). For new unit types: `register_unit_type` (registry.py).
    """
    return replace_units(model, {name: (unit_type, kwargs)})


def replace_units(model: nn.Module, replacements: dict[str, tuple[str, dict | None]]):
    """`replace_unit` for several units in one rebuild: {unit name: (unit_type, kwargs or None)}."""
    model = slim_view(model)
    new = copy.deepcopy(dict(model.config.blocks))
    found = set()
    for unit_name, _, unit in iter_units(new):
        if unit_name in replacements:
            unit_type, kwargs = replacements[unit_name]
            if role_of({"type": unit_type}) != role_of(unit):
                raise UNetEditError(f"cannot replace {unit_name} (role {role_of(unit)!r}) by {unit_type!r} "
                                    f"(role {role_of({'type': unit_type})!r}): roles must match")
            unit["type"], unit["kwargs"] = unit_type, copy.deepcopy(kwargs or unit["kwargs"])
            found.add(unit_name)
    missing = [n for n in replacements if n not in found]
    if missing:
        raise UNetEditError(f"unknown unit(s) {missing}; valid units: {[n for n, _, _ in iter_units(new)]}")
    for unit_name, _, unit in list(iter_units(new)):  # tag after the swap: names are unchanged
        unit["_from"] = unit_name
    return _rebuild(model, new)


def _inner_source(rest: str, inner: list[int] | None) -> str:
    """`transformer_blocks.m.<...>` -> `transformer_blocks.<inner[m]>.<...>` (the old block it keeps)."""
    if inner is None or not rest.startswith("transformer_blocks."):
        return rest
    _, m, tail = rest.split(".", 2)
    return f"transformer_blocks.{inner[int(m)]}.{tail}"


def rebuild(model: nn.Module, new: dict):
    """A new model for the structure `new` whose every unit carries `_from`: the name of the unit of
    `model` it descends from, or None (a new unit). Tensors whose name and shape match the source
    unit's are copied (inheritance composed back to the teacher); the others keep the new module's
    initialisation (inheritance None). Used by the edits here and by structures built from a
    teacher (e.g. `slimdiff.modules.mobilediffusion`'s presets). Consumes the `_from` tags."""
    return _rebuild(slim_view(model), new)


def _rebuild(model, new: dict):
    """Build the model for `new` (units tagged `_from`), copy weights, compose the maps.

    A tensor without a same-shaped source in `model` keeps its fresh initialisation (new: None).
    """
    sources, units, inner_from = {}, {}, {}
    for name, _, unit in iter_units(new):
        sources[name] = unit.pop("_from")
        inner_from[name] = unit.pop("_inner_from", None)
        units[name] = unit
    validate(new, model.config.model_channels, labels={n: s or n for n, s in sources.items()})
    student = SlimUNet2DConditionModel.from_structure(new, **model.base_config())
    old_tensors = model.state_dict()
    any_old = next(iter(old_tensors.values()))
    fresh: dict[str, dict] = {}  # unit name -> tensors of a freshly initialised module
    tensors, inheritance = {}, {}
    for name, meta in student.state_dict().items():
        unit, rest = split_tensor_name(name)
        src = name if unit is None else name_to_path(sources[unit]) + "." + _inner_source(rest, inner_from[unit]) \
            if sources[unit] else None
        if src in old_tensors and old_tensors[src].shape == meta.shape:
            tensors[name], inheritance[name] = old_tensors[src], model.inheritance.get(src)
            continue
        if unit not in fresh:
            fresh[unit] = build_unit(units[unit]).to(any_old.device, any_old.dtype).state_dict()
        tensors[name], inheritance[name] = fresh[unit][rest], None
    student.load_tensors(tensors, strict=True)
    student.inheritance = inheritance
    old_sources = getattr(model, "unit_sources", {})
    student.unit_sources = {n: old_sources.get(s, s) for n, s in sources.items()}
    return student.train(model.training)
