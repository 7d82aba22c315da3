"""Checkpoints: atomic writes, weights-only reads, and the random states of an exact resume.

Not a part of the paper: the file format shared by train.py (writes `last.pt`/`best.pt`, reads
them back for `--resume`), infer.py and tooling/convert.py (read/write
`{"model": state_dict, "config": dict, ...}`). Loading weights into a model is machinery/weights.py's.

Reading order: `save_checkpoint` (atomic; a failed write keeps the previous file) ->
`remove_partial_saves` -> `read_checkpoint` (`weights_only=True`, used by train.py, infer.py and
tooling/convert.py) -> `read_usable_checkpoint` (loads and is finite) -> `load_checkpoint` ->
`config_differences` (what a refused checkpoint's config has otherwise) -> `rng_states` /
`set_rng_states` (exact resume).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


class CheckpointSaveError(OSError):
    """A checkpoint that could not be written (e.g. a full disk); the previous file is untouched."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` atomically: a temp file in the same folder, fsync, then rename over `path`.

    A crash (even SIGKILL) at any moment leaves either the old file or the new one, never a torn one
    (`remove_partial_saves` deletes the temp files such a crash leaves). A failed write (a full disk)
    removes its temp file, keeps the previous `path` and raises CheckpointSaveError naming both.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        reason = getattr(e, "strerror", None) or " ".join(str(e).split())[:200]
        raise CheckpointSaveError(f"{path}: could not save the checkpoint ({reason}); {kept}") from None


def remove_partial_saves(folder: Path) -> list[Path]:
    """Delete the temp files (".NAME.tmpPID") that saves interrupted by a crash left in `folder`."""
    leftovers = sorted(Path(folder).glob(".*.pt.tmp*")) if Path(folder).is_dir() else []
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)
    return leftovers


class CheckpointError(ValueError):
    """A checkpoint file that is missing or cannot be read weights-only; the message names the file."""


def read_checkpoint(path: str | Path) -> object:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain containers only, never code.

    Raises CheckpointError "<path>: no such file" or "<path>: cannot read it as a weights-only
    checkpoint ...: <reason>".
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets one line, no traceback
        # torch's weights-only refusal is long; the part after "WeightsUnpickler error:" names the culprit
        text = str(e)
        _, _, culprit = text.partition("WeightsUnpickler error:")
        culprit = culprit.split("Check the documentation")[0].split("Please use")[0]
        reason = " ".join(culprit.split()) or (text.splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot read it as a weights-only checkpoint "
                              f"(tensors and plain containers only): {type(e).__name__}: {reason}") from None
    return ckpt


def load_checkpoint(path: str | Path) -> dict:
    """`read_checkpoint` for train.py: a missing or unreadable file stops the run with one line."""
    if not Path(path).is_file():
        raise SystemExit(f"error: checkpoint {path} does not exist")
    try:
        return read_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"error: checkpoint {e}") from None


def read_usable_checkpoint(path: str | Path) -> dict:
    """`read_checkpoint`, also checking that it holds a model whose floating tensors are all finite
    (a checkpoint one can really go back to); CheckpointError saying what is wrong otherwise."""
    ckpt = read_checkpoint(path)
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds no model state dict")
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensors hold NaN/inf (e.g. {bad[0]})")
    return ckpt


def config_differences(expected: dict, found: dict) -> str:
    """'num_classes 150 (found 3), dec_layers 6 (found 2)': the fields where two configs differ."""
    keys = [k for k in expected if k in found and expected[k] != found[k]]
    return ", ".join(f"{k} {expected[k]!r} (found {found[k]!r})" for k in keys)


def rng_states() -> dict:
    """Every random generator the run draws from, as tensors and plain numbers (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restores what `rng_states` saved."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


