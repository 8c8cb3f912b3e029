"""`slimdiff assemble`: progressive incubation (A-SDM 2.2), a U-Net of student and teacher blocks.

    slimdiff assemble --teacher toy --student runs/base-kd --take M2 --out runs/m2
    slimdiff assemble --teacher toy --student runs/base-kd --take down.0 up.3 conv_in conv_out --out runs/m1

Then distil it again; the teacher-sourced parts are frozen by default (recipe.json `assemble.freeze`):
    slimdiff distill --teacher toy --student runs/m2 --data toy --out runs/m2-kd --lambda-mid 1 --lambda-perc 1
"""

from __future__ import annotations

import argparse

from slimdiff.cli.names import ASSEMBLIES


def add_parser(subparsers) -> None:

    p = subparsers.add_parser(
        "assemble", help="assemble a U-Net from student and teacher blocks (progressive incubation)",
        description="Fill the positions named by --take with the student's blocks and the rest with the "
                    f"teacher's. Presets: {', '.join(ASSEMBLIES)} (A-SDM Table 2), all, none; or position names "
                    "(down.i, mid, up.i, conv_in, time_embedding, conv_out).")
    p.add_argument("--teacher", required=True, help="toy, a pipeline dir or a UNet dir")
    p.add_argument("--student", required=True, help="the compressed student (a prune or distill output)")
    p.add_argument("--take", nargs="+", required=True, metavar="NAME", help="a preset or positions from the student")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("teacher", "student"))


def run(args: argparse.Namespace) -> int:
    from slimdiff.unet.assemble import assemble_saved

    take = args.take[0] if len(args.take) == 1 else args.take
    written = assemble_saved(args.student, args.teacher, take, args.out)
    a = written.pop("assembly")
    print(f"assembled: student {', '.join(a['take']) or '(nothing)'}; teacher the rest")
    print(f"frozen by default in the next `slimdiff distill`: {', '.join(a['freeze']) or '(nothing)'}")
    for what, where in written.items():
        print(f"{what}: {where}")
    return 0
