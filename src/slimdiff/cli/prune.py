"""`slimdiff prune MODEL (--preset NAME | --remove UNIT ...) --out DIR`: build a student U-Net.

    slimdiff prune --list-presets
    slimdiff prune toy --preset bk-small --out runs/bk-small
    slimdiff prune sd15-arch --remove mid down.3.layer.1 --out runs/edit
    slimdiff prune toy --search laptop --budget params=0.5 --out runs/laptop   (cli/prune_search.py)
    slimdiff prune toy --preset bk-small --condconv 2 --out runs/bk-small-cc   (A-SDM CLME-CondConv)
    slimdiff prune sd15-arch --preset bk-small --gri 8 4 --out runs/bk-small-gri   (A-SDM GRI attention)

DIR gets the student (plain diffusers when expressible), `recipe.json` (teacher, preset or
edits, inheritance map, slimdiff version) and, for a pipeline teacher, `DIR/pipeline/`.
"""

from __future__ import annotations

import argparse
import importlib

from slimdiff.cli.names import PRESETS


def _search_module():
    """`slimdiff.cli.prune_search` (the automatic searches), or None while it is absent."""
    try:
        return importlib.import_module("slimdiff.cli.prune_search")
    except ModuleNotFoundError as e:
        if e.name != "slimdiff.cli.prune_search":
            raise
        return None


def add_parser(subparsers) -> None:

    p = subparsers.add_parser(
        "prune",
        help="remove (and insert) U-Net units: a preset or explicit edits",
        description="Build a student from a teacher U-Net by structural edits, with inherited weights.",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="sd15-arch, sd21-arch, toy, a pipeline or UNet dir")
    # How the student is chosen: exactly one of these; `--search` (cli/prune_search.py) joins the group.
    how = p.add_mutually_exclusive_group()
    how.add_argument("--preset", choices=list(PRESETS), help="a registered preset (see --list-presets)")
    how.add_argument("--remove", nargs="+", metavar="UNIT", help="units, layers or blocks to remove")
    search = _search_module()
    if search is not None:
        search.add_search_arguments(p, how)
    p.add_argument("--insert", nargs=2, action="append", metavar=("SOURCE", "AFTER"), default=[],
                   help="after the removals, insert a copy of unit SOURCE after unit AFTER (repeatable)")
    # A-SDM unit types (slimdiff.modules), applied to the student after the edits
    p.add_argument("--condconv", type=int, metavar="EXPERTS", help="CLME-CondConv resnets with EXPERTS experts")
    p.add_argument("--condconv-blocks", nargs="+", metavar="BLOCK",
                   help="blocks whose resnets become CondConv (default: down.0 and the last up block)")
    p.add_argument("--condconv-init", choices=["cross-layer", "e2"], default="cross-layer",
                   help="experts from all teacher layers of the block (default), or e2: 1 inherited, rest random")
    p.add_argument("--gri", nargs=2, metavar=("WINDOW", "REDUCTION"), help="GRI attention (REDUCTION 0: no pooling)")
    p.add_argument("--gri-levels", nargs="+", type=int, default=[0], help="levels for GRI (default 0: 64x64 at 512px)")
    p.add_argument("--out", metavar="DIR", help="output directory")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("model", "calib_prompts", "lut"))


def choose_student(args: argparse.Namespace, teacher):
    """(student, info) for the chosen way: a preset, or explicit --remove/--insert edits."""
    from slimdiff.modules import mobilediffusion  # noqa: F401 (registers the plug-in presets md, md-lite)
    from slimdiff.unet import apply_preset
    from slimdiff.unet.presets import Preset, apply_edits

    if args.preset:
        if args.insert:
            raise ValueError("--insert goes with --remove, not with --preset")
        return apply_preset(teacher, args.preset)
    if not args.remove and not args.insert:
        raise ValueError("say how to prune: --preset NAME or --remove UNIT [UNIT ...] (or --insert)")
    edits = Preset("edits", "--remove / --insert", tuple(args.remove or []), tuple(tuple(x) for x in args.insert))
    info = {"edits": {"remove": list(edits.remove), "insert": [list(x) for x in edits.insert]}}
    return apply_edits(teacher, edits), info


def add_modules(args: argparse.Namespace, teacher, student, info: dict):
    """Apply --condconv / --gri to the student; their settings go into the recipe."""
    from slimdiff.modules import CondConvSettings, GRISettings, apply_condconv, apply_gri

    if args.condconv is not None:
        blocks = tuple(args.condconv_blocks) if args.condconv_blocks else None
        cc = CondConvSettings(experts=args.condconv, blocks=blocks, init=args.condconv_init)
        student, info = apply_condconv(student, teacher, cc), {**info, "condconv": cc.to_dict()}
    if args.gri is not None:
        window, reduction = (int(v) for v in args.gri)
        gri = GRISettings(window=window, reduction=reduction or None, levels=tuple(args.gri_levels))
        student, info = apply_gri(student, gri), {**info, "gri": gri.to_dict()}
    return student, info


def run(args: argparse.Namespace) -> int:
    from slimdiff.modules import mobilediffusion  # noqa: F401 (registers the plug-in presets md, md-lite)
    from slimdiff.unet import load_unet, save_student
    from slimdiff.unet.presets import PRESETS

    if args.list_presets:
        for preset in PRESETS.values():
            print(f"{preset.name:12s} {preset.description}")
        return 0
    if getattr(args, "search", None):
        if args.insert:
            raise ValueError("--insert goes with --remove, not with --search")
        return _search_module().run(args)
    if not args.model or not args.out:
        raise ValueError("MODEL and --out DIR are required (or --list-presets)")

    # 1. teacher -> student (weights inherited, recorded per tensor)
    teacher = load_unet(args.model)
    student, info = choose_student(args, teacher)
    student, info = add_modules(args, teacher, student, info)

    # 2. write the student, recipe.json and (pipeline teachers) a complete pipeline
    written = save_student(student, args.out, source=args.model, recipe=info)
    n_t, n_s = teacher.num_parameters(), student.num_parameters()
    print(f"student: {n_s:,} parameters ({n_s / n_t:.1%} of the teacher's {n_t:,})")
    for what, where in written.items():
        print(f"{what}: {where}")
    return 0
