"""`slimdiff remap-lora`: move a LoRA trained on the teacher (e.g. an LCM-LoRA) onto a pruned student.

    slimdiff remap-lora --lora lcm-lora-sdv1-5/ --student runs/bk-small --out runs/bk-small-lcm-lora

The student's recipe.json `inheritance` says which teacher module each student module came from;
keys are renamed through it (BK-style removals shift names), keys of removed units are dropped and
listed. Then, on a pipeline holding the student's U-Net: `pipe.load_lora_weights("runs/bk-small-lcm-lora")`.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "remap-lora", help="apply a teacher's LoRA to a pruned student through the recorded inheritance",
        description="Rename a teacher LoRA's keys to the student's modules (recipe.json inheritance), drop those of "
                    "removed units, and write OUT/pytorch_lora_weights.safetensors for diffusers' load_lora_weights.")
    p.add_argument("--lora", required=True, help="a LoRA .safetensors file or a directory holding one")
    p.add_argument("--student", required=True, help="the student: a prune / distill output (UNet or pipeline dir)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--teacher", default=None,
                   help="the teacher's pipeline or UNet dir, when the recipe's `teacher` is not on this machine "
                        "(used to check the LoRA's base)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from slimdiff.unet.lora import LORA_FILE, remap_lora_files

    report = remap_lora_files(args.lora, args.student, args.out, teacher=args.teacher)
    print("\n".join(report.lines()))
    print(f"wrote {args.out}/{LORA_FILE} (pipe.load_lora_weights({args.out!r}) on the student's pipeline)")
    return 0
