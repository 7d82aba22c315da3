"""Command-line checks shared by train.py and infer.py (also tooling/experiments.py).

Not a part of the paper: infrastructure. Every flag is checked when it is parsed, so a wrong value
stops the program with one line naming the flag ("argument --lr: expected a number > 0, got '-1'")
before any work is done.

Reading order: the argparse types `int_at_least` -> `number_in` -> `device_name` ->
`existing_folder` -> `writable_folder`; `error_line` (any error, including one re-raised from a
DataLoader worker, as one line); `HelpFormatter` (train.py's help); `parse_assignment` (train.py's
`--set FIELD=VALUE`, checked against maskformer.MaskFormerConfig).
"""

from __future__ import annotations

import argparse
import ast
import math
import tempfile
from dataclasses import fields
from pathlib import Path

import torch

import maskformer


# Command-line value checks: argparse calls them on a flag's text, and a failure
# becomes one line "argument --flag: expected …, got …".
def int_at_least(minimum: int):
    """An argparse type: an integer >= minimum."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return check


def number_in(low: float, high: float = math.inf, low_open: bool = False):
    """An argparse type: a finite number in [low, high] (or (low, high] with low_open)."""
    expected = f"a number {'>' if low_open else '>='} {low}" + (f" and <= {high}" if high < math.inf else "")

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return check


def device_name(text: str) -> str:
    """An argparse type: cpu, cuda, cuda:N or mps, available on this machine."""
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (use --device cpu)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine (use --device cpu)")
    return text


def existing_folder(text: str) -> str:
    """An argparse type: a folder that exists (a dataset's root)."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {'not a folder' if Path(text).exists() else 'no such folder'}")
    return text


def writable_folder(text: str) -> str:
    """An argparse type: a folder that exists or can be made, and that we may write in."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    parent = path
    while not parent.exists():  # the nearest existing folder is where the write permission counts
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):  # the real test (permissions, read-only disks, root)
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {parent} ({e.strerror})") from None
    return text


def error_line(error: BaseException) -> str:
    """The message of `error`, one line: for an error re-raised from a DataLoader worker process,
    the worker's own message (the last line of the traceback it carries)."""
    text = str(error).strip()
    if "DataLoader worker" in text and "Original Traceback" in text:
        text = text.splitlines()[-1].partition(": ")[2]  # "data.DatasetError: <message>"
    return " ".join(text.split()) or type(error).__name__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help, and SCALE_OUT_HELP's lines kept as written."""


def parse_assignment(text: str) -> tuple[str, object]:
    """'dec_layers=2' -> ('dec_layers', 2); values are Python literals, else strings."""
    if "=" not in text:
        raise ValueError(f"--set expects FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string
    names = [f.name for f in fields(maskformer.MaskFormerConfig)]
    if key not in names:
        raise ValueError(f"--set {text}: MaskFormerConfig has no field {key!r} (fields: {', '.join(names)})")
    if key == "num_classes":
        raise ValueError(f"--set {text}: the class count is the dataset's (--data), not a setting")
    expected = type(getattr(maskformer.CONFIGS["r50"], key))  # the field's type, from a full config
    fits = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else \
        type(value) is expected
    if not fits:
        kind = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}.get(
            expected, f"a {expected.__name__}")
        raise ValueError(f"--set {text}: {key} expects {kind}, got {value!r}")
    return key, value
