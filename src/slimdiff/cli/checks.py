"""argparse types for numeric flags: the value is checked when parsed, and the error names it.

    p.add_argument("--steps", type=positive_int)       # slimdiff generate: error: argument --steps:
                                                        #   0 is not an integer >= 1
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, least: float, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if (kind is float and not math.isfinite(value)) or value < least:
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1, "an integer >= 1")


def nonnegative_int(text: str) -> int:
    return _number(text, int, 0, "an integer >= 0")


def nonnegative_float(text: str) -> float:
    return _number(text, float, 0.0, "a finite number >= 0")


def positive_float(text: str) -> float:
    value = _number(text, float, 0.0, "a finite number > 0")
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value
