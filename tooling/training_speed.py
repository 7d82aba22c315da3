"""How fast training runs: the classroom run's time to accuracy, where its time goes, the data pipeline.

Not a part of the paper: infrastructure for docs/speed.md. `python -m tooling.benchmark --time-to-accuracy
--runs 3` runs `time_to_accuracy`: --runs fresh `python train.py` processes (the default classroom
run, or --train-args), one after the other: the wall time of each (imports included), when its
validation first reached 0.70 and 0.80 mIoU, images/s, the medians; then `phase_profile`, the share
of that run's time per phase (data, forward, loss and matching, AdamW, backward; validation,
checkpoints, figures), timed by hooks on the real `train.train_step`. `python -m tooling.benchmark` also
reports `data_pipeline_speed`: the samples/s the ADE20K data pipeline delivers.

Reading order: `time_to_accuracy` -> `time_to_accuracy_run` (one training process, its validation
lines read as they are printed) -> `PhaseTimer` -> `phase_profile` -> `whole_run_shares`;
`data_pipeline_speed` (with `write_ade_like_fixture`, the ADE-sized images it and
tests/test_data.py use) and `data_pipeline`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import data
import evaluation
import train
from machinery import adamw, augment, checkpoint, datasets, distributed, drawing
from machinery.runs import checkpoint_state, read_records, run_description  # by name: `runs` below is a list of runs
from tooling.timing import fmt

REPO = Path(__file__).resolve().parents[1]  # the repository root: train.py and the modules it imports


def time_to_accuracy(args: argparse.Namespace) -> dict:
    """--time-to-accuracy: --runs fresh `python train.py --seed S` runs per seed of --seeds (their wall
    times, the time each reached the thresholds, the medians; each run records its seed and the torch
    version that ran it), then the phase profile of the same run."""
    extra = args.train_args.split() if args.train_args else []
    thresholds = (0.70, 0.80)
    seeds = [seed for seed in args.seeds for _ in range(args.runs)]
    print(f"time to accuracy: {len(seeds)} x `python train.py {' '.join(extra)}` (seeds {args.seeds}, "
          f"{args.runs} each; fresh processes, one at a time; torch {torch.__version__}); "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(seeds):
            run = time_to_accuracy_run(Path(tmp) / f"run{i}", [*extra, "--seed", str(seed)], thresholds)
            run.update(seed=seed, torch=torch.__version__)  # the same interpreter runs train.py
            runs.append(run)
            reached = "  ".join(f"to {t}: {fmt(s, '5.1f')} s" for t, s in run["reached_s"].items())
            print(f"  run {i + 1} (seed {seed}, torch {run['torch']}): wall {run['wall_s']:.1f} s, "
                  f"final {run['final']:.3f}, {reached}, "
                  f"{run['img_per_s']} img/s; validations: "
                  + ", ".join(f"{v['step']}: {v['value']:.3f} at {v['wall_s']:.0f} s" for v in run["validations"]),
                  flush=True)
    finals = [r["final"] for r in runs]
    median = {"wall_s": statistics.median(r["wall_s"] for r in runs),
              "final": statistics.median(finals),
              "img_per_s": statistics.median(r["img_per_s"] for r in runs)}
    spread = {"final_min": min(finals), "final_mean": statistics.mean(finals), "final_max": max(finals),
              "wall_min_s": min(r["wall_s"] for r in runs), "wall_max_s": max(r["wall_s"] for r in runs)}
    for t in runs[0]["reached_s"]:
        times = [r["reached_s"][t] for r in runs]
        median[f"to_{t}_s"] = statistics.median(times) if None not in times else None
    print(f"median of {len(runs)}: wall {median['wall_s']:.1f} s, final {median['final']:.3f}, "
          + ", ".join(f"to {t}: {fmt(median[f'to_{t}_s'], '5.1f')} s" for t in runs[0]["reached_s"])
          + f", {median['img_per_s']} img/s; load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"final over the runs: {spread['final_mean']:.3f} (min {spread['final_min']:.3f}, max "
          f"{spread['final_max']:.3f}); wall {spread['wall_min_s']:.0f}-{spread['wall_max_s']:.0f} s")
    profile = phase_profile(extra, steps=args.profile_steps)
    print(f"\nwhere the time goes ({args.profile_steps} timed steps in this process, {profile['step_s'] * 1000:.0f} ms "
          f"per step, {profile['img_per_s']} img/s; scaled to the run's {profile['validations']} validations and "
          f"{profile['saves']} checkpoint saves; modelled run {profile['modelled_run_s']:.0f} s without start-up):")
    for name, share in profile["share"].items():
        cost = profile["per_step_ms"].get(name)
        cost = f"{cost:8.1f} ms per step" if cost is not None else f"{profile['once_s'][name]:8.2f} s each"
        print(f"  {name:32} {100 * share:5.1f} %   {cost}")
    return {"runs": runs, "median": median, "spread": spread, "phases": profile}


VALIDATION_LINE = re.compile(r"step (\d+): validation (mIoU|PQ) = ([\d.]+)")


def time_to_accuracy_run(out: Path, train_argv: list[str], thresholds: tuple[float, ...]) -> dict:
    """One `python train.py --output OUT --no-progress [train_argv]` in a fresh process: its wall time
    (process start to exit, imports included), the wall time at which each validation line was printed,
    the first time each threshold was reached, the final metric and the logged images/s."""
    command = [sys.executable, str(REPO / "train.py"), "--output", str(out), "--no-progress",
               *train_argv]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO)
    validations, lines = [], []
    for line in process.stdout:
        lines.append(line)
        match = VALIDATION_LINE.search(line)
        if match:
            validations.append({"step": int(match[1]), "value": float(match[3]) / 100,
                                "wall_s": round(time.perf_counter() - start, 2)})
    if process.wait():
        raise SystemExit(f"error: {' '.join(command)} failed:\n{''.join(lines[-10:])}")
    wall = time.perf_counter() - start
    logged = [r["img_per_s"] for r in read_records(out / "metrics.jsonl") if "img_per_s" in r]
    reached = {f"{t:.2f}": next((v["wall_s"] for v in validations if v["value"] >= t), None) for t in thresholds}
    return {"wall_s": round(wall, 2), "final": validations[-1]["value"] if validations else None,
            "reached_s": reached, "validations": validations,
            "img_per_s": round(statistics.median(logged), 2) if logged else None}


class PhaseTimer:
    """Wall time per named phase, accumulated by hooks around modules, methods and optimiser steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started: dict[str, float] = {}

    def start(self, name: str) -> None:
        self.seconds.setdefault(name, 0.0)  # phases listed in the order they start (a loss before its matching)
        self.started[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - self.started.pop(name)

    def around_module(self, module: nn.Module, name: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.start(name))
        module.register_forward_hook(lambda *_: self.stop(name))

    def around_call(self, function: Callable, name: str) -> Callable:
        def timed(*args, **kwargs):
            self.start(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.stop(name)
        return timed

    def around_iterator(self, iterator, name: str):
        while True:
            self.start(name)
            item = next(iterator)
            self.stop(name)
            yield item


def phase_profile(train_argv: list[str], steps: int = 20, warmup: int = 3) -> dict:
    """Where the default run's time goes: `steps` real `train.train_step` calls of the run that
    `python train.py [train_argv]` makes (same builders, data loader and settings), timed per phase by
    hooks, plus one validation, one checkpoint save and the end-of-run figures; then scaled to the
    whole run (iterations, validations and saves of its recipe). Phases of a step: waiting for the
    data loader, the forward pass (Figure 2), the loss (Eq. (3.2d)) with the matching (Eq. (3.2c))
    inside it, the AdamW step, and the rest (backward, gradient clipping, the one host read-back).
    A CPU profile (wall time between hooks): on CUDA the phases would need a synchronisation each."""
    args = train.parse_args(train_argv)
    recipe, device = train.resolve_recipe(args), torch.device(args.device or "cpu")
    args.workers = train.data_workers(args.workers, device)  # as train.train resolves it
    if args.threads:
        torch.set_num_threads(args.threads)
    train.keep_freed_memory()
    torch.manual_seed(args.seed)
    train_set, val_set = train.build_datasets(args, recipe)
    per_device, accum = train.split_batch(recipe.batch_size, 1, device, args)
    model, criterion = train.build_model_and_criterion(args, recipe, train_set.num_classes, train_set.ignore_index)
    model.to(device)
    optimizer, scheduler = adamw.build_optimizer(model, recipe)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    train_model = distributed.wrap_for_training(model, device, 1, compile_model=False)
    settings = train.StepSettings(accum, device, None, recipe.clip_grad_norm, model.config.num_queries)
    timer = PhaseTimer()
    timer.around_module(model, "forward")
    timer.around_module(criterion, "loss (with matching)")
    if hasattr(criterion, "matcher"):
        criterion.matcher.match = timer.around_call(criterion.matcher.match, "  of which matching")
    optimizer.register_step_pre_hook(lambda *_: timer.start("optimizer (AdamW)"))
    optimizer.register_step_post_hook(lambda *_: timer.stop("optimizer (AdamW)"))
    loader = train.build_train_loader(train_set, per_device, accum, 0, 0, 1, device, args)
    batches = timer.around_iterator(iter(loader), "data (waiting for the loader)")
    for step in range(warmup + steps):
        if step == warmup:
            timer.seconds.clear()
            begin = time.perf_counter()
        train.train_step(train_model, batches, criterion, optimizer, scaler, settings)
        scheduler.step()
    per_step = {name: s / steps for name, s in timer.seconds.items()}
    step_s = (time.perf_counter() - begin) / steps
    per_step["backward, clipping, rest"] = step_s - sum(s for n, s in per_step.items() if not n.startswith(" "))
    once = {}
    start = time.perf_counter()
    evaluation.validate(model, evaluation.build_val_loader(val_set, args), recipe.task, device, None, args.data)
    once["validation"] = time.perf_counter() - start
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    about = run_description(model, recipe, train_set.class_names, args)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        checkpoint.save_checkpoint(Path(tmp) / "last.pt", checkpoint_state(stateful, 1, 0.0, about))
        once["checkpoint save"] = time.perf_counter() - start
        start = time.perf_counter()
        history = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
        drawing.save_figures(model, val_set, train_set, history, device, Path(tmp))
        once["figures"] = time.perf_counter() - start
    return whole_run_shares(recipe, per_step, once, step_s)


def whole_run_shares(recipe, per_step: dict[str, float], once: dict[str, float], step_s: float) -> dict:
    """Per-step and per-event seconds scaled to the whole run: recipe.max_iter steps, a validation every
    eval_period and at the end, last.pt at those steps and every checkpoint_period, best.pt at each
    validation (at most: only when the metric improves), the figures once."""
    n, ends = recipe.max_iter, range(1, recipe.max_iter + 1)
    validations = sum(1 for s in ends if s % recipe.eval_period == 0 or s == n)
    saves = sum(1 for s in ends if s % recipe.eval_period == 0 or s == n or s % recipe.checkpoint_period == 0)
    run = {name: s * n for name, s in per_step.items()}
    run.update({"validation": once["validation"] * validations,
                "checkpoint save": once["checkpoint save"] * (saves + validations), "figures": once["figures"]})
    total = sum(s for name, s in run.items() if not name.startswith(" "))
    return {"step_s": round(step_s, 4), "img_per_s": round(recipe.batch_size / step_s, 2),
            "per_step_ms": {k: round(1000 * v, 2) for k, v in per_step.items()},
            "once_s": {k: round(v, 3) for k, v in once.items()}, "validations": validations,
            "saves": saves + validations, "modelled_run_s": round(total, 1),
            "share": {k: round(v / total, 4) for k, v in run.items()}}


def data_pipeline_speed(root: str | Path | None = None, workers: tuple[int, ...] = (0, 2), num_batches: int = 8,
                        batch_size: int = 8, crop_size: int = 512) -> dict[str, float]:
    """Speed of the ADE20K training pipeline (decode + augment + targets, crop `crop_size`).

    Measures, in this process, the milliseconds per image of each stage, then the samples per
    second through a DataLoader with `collate` for each worker count (start-up and the first batch
    not timed), and the speed of the shapes generator. root: an ADE20K root; None writes
    ADE-sized (683x512) JPEG/PNG fixtures to a temporary folder. Prints and returns the figures.
    """
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            root = write_ade_like_fixture(Path(tmp), num_images=16)
        dataset = datasets.build_dataset("ade20k", root, split="train", train=True, crop_size=crop_size)
        rng, n = np.random.default_rng(0), 2 * batch_size
        clock = {"decode_ms": 0.0, "augment_ms": 0.0, "item_ms": 0.0}
        for i in range(n):
            t0 = time.perf_counter()
            sample = dataset.load(i % len(dataset))
            t1 = time.perf_counter()
            augment.apply_augmentations(dataset.augmentations, sample.image, {"sem_seg": sample.sem_seg}, rng)
            t2 = time.perf_counter()
            dataset.get(i % len(dataset), rng)
            t3 = time.perf_counter()
            clock["decode_ms"] += (t1 - t0) * 1000 / n
            clock["augment_ms"] += (t2 - t1) * 1000 / n
            clock["item_ms"] += (t3 - t2) * 1000 / n
        results.update(clock)
        for workers_n in workers:
            sampler = torch.utils.data.RandomSampler(dataset, replacement=True,
                                                     num_samples=(num_batches + 1) * batch_size)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                                 num_workers=workers_n, collate_fn=data.collate)
            batches = iter(loader)
            next(batches)  # worker start-up and the first batch are not timed
            start = time.perf_counter()
            seen = sum(len(batch["targets"]) for batch in batches)
            results[f"ade20k_workers={workers_n}"] = seen / (time.perf_counter() - start)
    shapes = data.ShapesDataset("train")
    start = time.perf_counter()
    for i in range(200):
        shapes.scene(i)
    results["shapes_generate"] = 200 / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(200):
        shapes[i]
    results["shapes_items"] = 200 / (time.perf_counter() - start)

    threads = torch.get_num_threads()
    print(f"data benchmark: ADE20K-sized images, {crop_size}x{crop_size} crops, torch threads {threads}")
    units = {"_ms": "ms per image (this process)", "ade20k": "samples/s (DataLoader + collate)",
             "shapes": "images/s (128x128)"}
    for key, value in results.items():
        unit = next(text for end, text in units.items() if key.endswith(end) or key.startswith(end))
        print(f"  {key:18s} {value:8.1f}  {unit}")
    return results


def write_ade_like_fixture(root: Path, num_images: int = 16, size: tuple[int, int] = (512, 683),
                           seed: int = 0) -> Path:
    """Write an ADE20K-layout folder of `num_images` training (and 2 validation) JPEG/PNG pairs of
    ADE's typical size (H, W): smooth photo-like images, blocky label maps of 15 classes (0..150)
    each. Returns the root."""
    rng = np.random.default_rng(seed)
    H, W = size
    for split, folder in (("train", "training"), ("val", "validation")):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(num_images if split == "train" else 2):
            low = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
            image = np.asarray(Image.fromarray(low).resize((W, H), Image.BICUBIC), np.float32)
            image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            label = rng.choice(rng.choice(151, 15, replace=False), (8, 10)).astype(np.uint8)
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(image).save(root / "images" / folder / f"{name}.jpg", quality=90)
            Image.fromarray(label).resize((W, H), Image.NEAREST).save(root / "annotations" / folder / f"{name}.png")
    return root


def data_pipeline(size: int, workers: tuple[int, ...]) -> dict:
    """Samples/s of `data_pipeline_speed` (ADE20K-like JPEG/PNG pairs, training augmentation, crop `size`)."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its own report
        return data_pipeline_speed(workers=workers, crop_size=size, num_batches=4, batch_size=4)
