"""The `slimdiff` command line. One file per subcommand; each is a thin call into the library.

Every subcommand module defines `add_parser(subparsers)`, which registers its parser and sets
`func=run` with `run(args) -> int | None`. The library never imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from slimdiff.io import check_outputs  # the standard library only: no torch for --help

# subcommand name -> module in slimdiff.cli (the module may be missing while in development)
SUBCOMMANDS = {
    "units": "units",
    "profile": "profile",
    "prune": "prune",
    "prune-vae": "prune_vae",
    "distill": "distill",
    "cache": "cache",
    "step-distill": "step_distill",
    "distill-vae": "distill_vae",
    "generate": "generate",
    "evaluate": "evaluate",
    "compare": "compare",
    "demo": "demo",
    "toy": "toy",
    "assemble": "assemble",
    "remap-lora": "remap_lora",
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the command and the value (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from slimdiff import __version__

    parser = Parser(
        prog="slimdiff",
        description="Make Stable-Diffusion-class U-Nets smaller and faster.",
    )
    parser.add_argument("--version", action="version", version=f"slimdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(f"slimdiff.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"slimdiff.cli.{module}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def check_command_outputs(args: argparse.Namespace) -> None:
    """The one overlap check of every command that writes: each subcommand names the destinations of
    its outputs and inputs (`set_defaults(outputs=(...), inputs=(...))`); no output may be an input,
    lie inside one or contain one (`slimdiff.io.check_outputs`)."""
    def flag(dest: str) -> str:
        return dest.upper().rstrip("S") if dest in ("model", "models") else "--" + dest.replace("_", "-")

    check_outputs({flag(d): getattr(args, d, None) for d in getattr(args, "outputs", ())},
                  {flag(d): getattr(args, d, None) for d in getattr(args, "inputs", ())})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_command_outputs(args)
        code = args.func(args)
    except (ValueError, OSError, KeyError) as e:
        # Library errors name the offending value (OSError: the file and why, e.g. a full disk);
        # print them without a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"slimdiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
