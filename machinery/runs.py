"""A training run's folder: where it goes, how it continues, and how it stops without losing anything.

Not a part of the paper: infrastructure of train.py. Everything a run leaves on disk besides the
checkpoint files' format (machinery/checkpoint.py): the folder `runs/<date-time>/` (or --output) with
`runs/latest` pointing at it, `last.pt` / `best.pt` and what they hold, `metrics.jsonl`,
`final_metrics.json`; `--resume` from them; and the two ways a run stops on purpose, each saying
what is kept (a non-finite loss before its step is applied, a failing validation after the
checkpoint of its step is written).

Reading order: `run_folder` (a fresh run never lands in another run's folder) -> `new_run_folder`
-> `point_latest` / `latest_run` -> `run_description` / `checkpoint_state` (what last.pt/best.pt
hold) -> `resume` (bit for bit) -> `is_finished` / `write_final_metrics` / `read_final_metrics`
-> `MetricsLog` / `read_records` (metrics.jsonl) -> `NonFiniteLoss` / `stop_unless_finite` /
`last_good_checkpoint`.
A failing validation stops the run with evaluation.ValidationFailed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist
import torch.nn as nn

from machinery import checkpoint, datasets
from machinery.checkpoint import load_checkpoint, rng_states, set_rng_states
from metrics import strict_json

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "final_metrics.json")  # a folder with one holds a run


def run_folder(args: argparse.Namespace, is_main: bool) -> tuple[Path, dict | None]:
    """(the run's folder, its last.pt if --resume). The folder: --output, or a new runs/<date-time>
    (runs/latest points at it; --resume without --output continues runs/latest). A fresh run refuses
    a folder that holds a run unless --overwrite (which deletes that run's files)."""
    if args.output is None:
        out = latest_run() if args.resume else new_run_folder(is_main)
    else:
        out = Path(args.output)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if not args.resume and held and not args.overwrite:
        raise SystemExit(f"error: --output {out} already holds a run ({', '.join(held)}): continue it with "
                         f"--resume, or give a new --output (--overwrite deletes that run)")
    if is_main and not args.resume and held:
        for path in [*(out / name for name in RUN_FILES), out / "loss_curve.png", *out.glob("prediction_*.png")]:
            path.unlink(missing_ok=True)
    return out, load_checkpoint(out / "last.pt") if args.resume else None


def new_run_folder(is_main: bool, root: Path = Path("runs")) -> Path:
    """runs/<YYYYmmdd-HHMMSS>[-n], made by the first process (the others receive its name), and
    runs/latest pointing at it."""
    name = [None]
    if is_main:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        taken = {p.name for p in root.glob(stamp + "*")} if root.is_dir() else set()
        name[0] = next(n for n in [stamp] + [f"{stamp}-{i}" for i in range(1, len(taken) + 2)] if n not in taken)
        (root / name[0]).mkdir(parents=True)
        point_latest(root, name[0])
    if dist.is_initialized():
        dist.broadcast_object_list(name, src=0)
    return root / name[0]


def point_latest(root: Path, name: str) -> None:
    """runs/latest -> runs/<name>: a symbolic link, or where links are unavailable a text file
    naming the run. A real folder called latest (an older run) is left alone."""
    latest = root / "latest"
    if latest.is_dir() and not latest.is_symlink():
        return
    tmp = root / ".latest.tmp"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name, target_is_directory=True)
        tmp.replace(latest)
    except (OSError, NotImplementedError):
        tmp.unlink(missing_ok=True)
        latest.write_text(name + "\n")


def latest_run(root: Path = Path("runs")) -> Path:
    """The folder runs/latest points at (a link, a text file naming it, or an older run's folder)."""
    latest = root / "latest"
    if latest.is_file():
        return root / latest.read_text().strip()
    if not latest.exists():
        raise SystemExit(f"error: --resume without --output: there is no {latest} to continue; "
                         f"give --output RUN_FOLDER")
    return root / latest.readlink() if latest.is_symlink() else latest


def run_description(model: nn.Module, recipe, class_names, args: argparse.Namespace) -> dict:
    """What a checkpoint says about its run: the model config, the recipe (a train.TrainingRecipe, with
    the test resize it was validated at, which `infer.py --eval` takes from it), the class names, the flags."""
    test_resize = dict(zip(("test_size", "test_max_size"), datasets.test_resize(args.data, recipe.crop_size)[:2]))
    return {"config": asdict(model.config), "recipe": {**asdict(recipe), **test_resize},
            "class_names": list(class_names),
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}}


def checkpoint_state(stateful: dict, step: int, best_metric: float, about: dict) -> dict:
    """What last.pt/best.pt hold: every object's state_dict, the step, the RNGs, the description."""
    return {**{name: obj.state_dict() for name, obj in stateful.items()}, "step": step, "rng": rng_states(),
            "best_metric": best_metric, **about}


def resume(out: Path, ckpt: dict, stateful: dict, about: dict, log) -> tuple[int, float]:
    """`--resume`: everything needed to continue bit for bit; returns (step, best metric so far).
    A checkpoint of another model (config, class count) stops with one line naming the differences."""
    expected, found = about["config"], ckpt.get("config", {})
    differences = checkpoint.config_differences(expected, found) if isinstance(found, dict) else ""
    if differences:
        raise SystemExit(f"error: --resume: {out / 'last.pt'} holds another model than this run builds: "
                         f"this run has {differences}; resume with the run's own "
                         f"--config/--set/--data, or start a new run in another --output")
    for name, obj in stateful.items():
        obj.load_state_dict(ckpt[name])
    set_rng_states(ckpt["rng"])
    log(f"resumed from {out / 'last.pt'} at step {ckpt['step']}")
    best_metric = ckpt["best_metric"]
    with contextlib.suppress(checkpoint.CheckpointError):  # a crash after best.pt, before the next last.pt
        best_metric = max(best_metric, checkpoint.read_checkpoint(out / "best.pt").get("best_metric", -math.inf))
    return ckpt["step"], best_metric


def is_finished(out: Path, ckpt: dict, recipe, log) -> bool:
    """`--resume` of a run that reached --iters (recipe: train.TrainingRecipe) and wrote final_metrics.json:
    nothing to do (says so)."""
    if ckpt["step"] > recipe.max_iter or ckpt["step"] == recipe.max_iter and (out / "final_metrics.json").exists():
        log(f"{out} is a finished run (step {ckpt['step']} of --iters {recipe.max_iter}); its files are left "
            f"as they are. To train further, resume with a larger --iters.")
        return True
    return False


def write_final_metrics(out: Path, metrics: dict) -> None:
    """final_metrics.json: the last validation's metrics, written when the run has finished."""
    (out / "final_metrics.json").write_text(strict_json(metrics, indent=1))


def read_final_metrics(out: Path) -> dict:
    try:
        return json.loads((out / "final_metrics.json").read_text())
    except (OSError, ValueError):
        return {}


class MetricsLog:
    """metrics.jsonl, one JSON record per line, written by rank 0; on resume, records after the
    checkpoint's step are dropped (and old key names, e.g. loss_mask, read as today's)."""

    def __init__(self, path: Path, start_step: int, is_main: bool):
        self.path, self.is_main = path, is_main
        old = read_records(path) if start_step > 0 and path.exists() else []
        self.history = [r for r in old if r["step"] <= start_step]
        if is_main:
            path.write_text("".join(strict_json(r) + "\n" for r in self.history))

    def append(self, record: dict) -> None:
        self.history.append(record)
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(strict_json(record) + "\n")


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl (old key names read as today's). A line that is not a JSON
    record, such as the torn last line of a crash, is skipped; NaN written by older versions reads."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm became NaN/inf: that step was not applied and nothing was saved."""


def stop_unless_finite(stats: dict[str, float], step: int, out: Path, fp16_scaler: bool) -> None:
    """Raises NonFiniteLoss naming the step and the last checkpoint that really is good, unless the
    loss and the gradient norm are finite. With fp16 an inf gradient norm is the GradScaler's job:
    it skips that step and lowers its scale."""
    loss, grad_norm = stats["loss"], stats["grad_norm"]
    if math.isfinite(loss) and (math.isfinite(grad_norm) or fp16_scaler):
        return
    terms = ", ".join(f"{k} {v:.3g}" for k, v in stats.items() if k.startswith("loss_"))
    what = f"the loss became {loss}" if not math.isfinite(loss) else \
        f"the gradient norm became {grad_norm} (loss {loss:.3g})"
    raise NonFiniteLoss(f"error: {what} at step {step} (computing step {step + 1}; terms: {terms}); stopped "
                        f"without applying that step or saving. {last_good_checkpoint(out)}; try a lower --lr, "
                        f"--amp bf16 instead of fp16, or --clip-grad.")


def last_good_checkpoint(out: Path) -> str:
    """'The last good checkpoint is …' for last.pt, else best.pt, if it loads and all its weights are finite."""
    problems = []
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():
            try:
                ckpt = checkpoint.read_usable_checkpoint(out / name)
            except checkpoint.CheckpointError as e:
                problems.append(str(e))
                continue
            return (f"The last good checkpoint is {out / name} (step {ckpt.get('step')}: it loads and its "
                    f"weights are finite)" + (f"; {problems[0]}" if problems else ""))
    return f"No good checkpoint in {out} yet" + (f" ({'; '.join(problems)})" if problems else "")
