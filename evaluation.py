"""Evaluation: mIoU and PQ of a model over a validation split (§4's metrics, Tables 1-3).

Paper: §4 "Evaluation metrics": mIoU for semantic segmentation, PQ for panoptic segmentation, at
the dataset's test resize, against the labels at the original image size. The predictions are
§3.4's inference (inference.py: Eq. (3.4b) for mIoU, Eq. (3.4a) with panoptic fusion for PQ); the
metrics themselves are metrics.py's. One function, `evaluate`, gives train.py's validation and
`python inference.py --eval` the same number.

Reading order: `recipe_test_resize` (the test resize of a dataset's recipe) -> `resolve_test_resize`
(the test resize of a checkpoint) -> `evaluation_dataset` (the validation split at that resize) ->
`evaluate` (the loop over a loader; for the multi-scale test `tta_resize`, then `tta_semantic_map` ->
`tta_version` -> `band_scores`) -> train.py's
`build_val_loader`, `validate`, `validate_at` (`ValidationFailed`: the run stops, its state kept)
-> `run_evaluation` and `print_table` (the `inference.py --eval` command).

How this differs from the official code: the test resize of `--eval` comes from the checkpoint (the
recipe it was trained with, or the official test size of a converted model), so that train.py's
validation and `--eval` give one number; the official code takes it from the config file passed on
the command line.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import data
import inference
from machinery import cli, datasets
from machinery.distributed import is_distributed, sum_over_processes
from metrics import PanopticMetrics, SemanticMetrics, strict_json


def evaluation_dataset(name: str, root: str | Path | None, task: str, resize: tuple[int, int],
                       num_images: int | None = None, ignore_index: int | None = None,
                       shapes_options: dict | None = None):
    """The validation split as train.py validates on it and `--eval` evaluates it: items at the test
    resize `resize` = (short edge, long-edge cap) (shapes: generated at that size), the first
    `num_images` only if given; ignore_index for --data folder; shapes_options: the shapes
    dataset's colours / stuff (train.py --shapes-colours / --shapes-stuff)."""
    kwargs: dict = {"task": task} if name in ("coco_panoptic", "ade20k_panoptic", "shapes") else {}
    kwargs.update(shapes_options or {})
    if name == "shapes":
        kwargs["image_size"] = resize[0]
    else:
        kwargs.update(test_size=resize[0], test_max_size=resize[1])
    if name == "folder" and ignore_index is not None:
        kwargs["ignore_index"] = ignore_index
    dataset = datasets.build_dataset(name, root, split="val", train=False, **kwargs)
    return torch.utils.data.Subset(dataset, range(min(num_images, len(dataset)))) if num_images else dataset


def evaluate(model: nn.Module, loader, task: str = "semantic", device: torch.device | str | None = None,
             amp_dtype: torch.dtype | None = None, tta: bool = False, max_batches: int | None = None,
             object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
             is_thing: list[bool] | None = None, progress: bool = True) -> dict:
    """mIoU (task "semantic") or PQ ("panoptic") of `model` over the batches of `loader`.

    Batches are `data.collate` outputs of an evaluation dataset (train=False): predictions are
    compared with each target's "orig_sem_seg" / "orig_pan_seg" at the original resolution, as
    detectron2 does. Runs in eval mode without gradients and restores the model's mode after.
    tta: the multi-scale + flip test (`tta_semantic_map`) on each item's "orig_image".
    is_thing defaults to loader.dataset.is_thing. Returns SemanticMetrics.compute() (mIoU …) or
    PanopticMetrics.compute() (PQ …), plus "num_images". Under torch.distributed each process
    evaluates what its own loader yields (train.py gives each its share of the split) and the counts
    are summed over processes, so every process returns the whole split's figures.
    """
    if task not in ("semantic", "panoptic"):
        raise ValueError(f"task must be 'semantic' or 'panoptic', got {task!r}")
    if tta and task == "panoptic":
        raise ValueError("test-time augmentation is for semantic segmentation only (as in the official code)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dataset = getattr(loader.dataset, "dataset", loader.dataset)  # a Subset's underlying dataset
    if task == "semantic":
        metric = SemanticMetrics(model.config.num_classes, getattr(dataset, "ignore_index", data.IGNORE_INDEX))
    else:
        is_thing = is_thing if is_thing is not None else getattr(dataset, "is_thing", None)
        if is_thing is None:
            raise ValueError("panoptic evaluation needs is_thing (none given and loader.dataset has none)")
        metric = PanopticMetrics(is_thing)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    was_training = model.training
    model.eval()
    num_images = 0
    try:
        for i, batch in enumerate(tqdm(loader, total=total, desc=f"eval {task}", disable=not progress)):
            if max_batches is not None and i >= max_batches:
                break
            images, targets = batch["images"].to(device), batch["targets"]
            if "orig_size" not in targets[0]:
                raise ValueError("evaluate needs items of an evaluation dataset (train=False): no 'orig_size'")
            orig_sizes = [t["orig_size"] for t in targets]
            if task == "semantic":
                if tta:  # multi-scale + flip, each scale resized from the original image
                    preds = [inference.tta_semantic_map(model, t["orig_image"].numpy(),
                                                        *inference.tta_resize(dataset, t["orig_size"]), amp_dtype)
                             for t in targets]
                else:
                    preds = inference.predict_semantic(model, images, batch["image_sizes"], orig_sizes, amp_dtype)
                for pred, target in zip(preds, targets):
                    metric.update(pred, target["orig_sem_seg"].to(device))
            else:
                preds = inference.predict_panoptic(model, images, is_thing, batch["image_sizes"], orig_sizes, amp_dtype,
                                         object_mask_threshold, overlap_threshold)
                for (pan_seg, segments_info), target in zip(preds, targets):
                    metric.update(pan_seg, segments_info, target["orig_pan_seg"].to(device), target["segments_info"])
            num_images += len(targets)
    finally:
        model.train(was_training)
    if is_distributed():  # the confusion matrix / PQ sums and the image count of all processes
        metric.sync()
        num_images = int(sum_over_processes(torch.tensor(num_images)).item())
    return {**metric.compute(), "num_images": num_images}


def build_val_loader(val_set, args: argparse.Namespace, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The validation images, every `world_size`-th from `rank` on: each process evaluates its share
    and the metrics sum their counts over processes (evaluation.evaluate), so the figure is the whole split's."""
    if world_size > 1:
        if len(val_set) < world_size:
            raise SystemExit(f"error: {len(val_set)} validation image(s) for {world_size} processes: each process "
                             f"needs at least one (raise --val-images)")
        val_set = torch.utils.data.Subset(val_set, range(rank, len(val_set), world_size))
    return DataLoader(val_set, batch_size=1 if args.data != "shapes" else 8, collate_fn=data.collate,
                      num_workers=args.workers)


def validate(model: nn.Module, loader: DataLoader, task: str, device: torch.device, amp_dtype,
             data_name: str | None = None) -> dict:
    """Validation on the whole split, the same figure as `inference.py --eval` (every process runs it:
    simple, and small next to training). Leaves the model in training mode."""
    object_mask_threshold, overlap_threshold = inference.panoptic_thresholds(data_name)
    metrics = evaluate(model, loader, task=task, device=device, amp_dtype=amp_dtype, progress=False,
                             object_mask_threshold=object_mask_threshold, overlap_threshold=overlap_threshold)
    model.train()
    return metrics


class ValidationFailed(RuntimeError):
    """Validation raised (e.g. a bad label file); the checkpoint of the same step was written before it."""


def validate_at(step: int, out: Path, model: nn.Module, loader: DataLoader, task: str, device: torch.device,
                amp_dtype, data_name: str | None, log) -> dict:
    """`validate` at `step`, logged; a failure raises ValidationFailed saying that the state is kept.
    An undefined metric (no labelled pixel, no segment) gets a warning instead of a silent nan."""
    try:
        metrics = validate(model, loader, task, device, amp_dtype, data_name)
    except (data.DatasetError, ValueError, RuntimeError, OSError) as e:
        raise ValidationFailed(f"error: validation at step {step} failed: {cli.error_line(e)}. The training "
                                    f"state of step {step} is kept in {out / 'last.pt'}; fix the validation data, "
                                    f"then continue with --resume --output {out}") from None
    name = "PQ" if task == "panoptic" else "mIoU"
    if math.isfinite(metrics[name]):
        log(f"step {step}: validation {name} = {100 * metrics[name]:.2f}")
    else:
        log(f"warning: step {step}: validation {name} is undefined ({metrics[name]}): the {len(loader.dataset)} "
            f"validation images hold no labelled pixel/segment (all ignore?); best.pt is not updated")
    return metrics


def run_evaluation(args: argparse.Namespace, parser: argparse.ArgumentParser, device: torch.device,
                   amp_dtype: torch.dtype | None) -> dict:
    """`--eval`: mIoU or PQ over the validation split; a table on stdout, per-class JSON and CSV in --output."""
    if args.data is None:
        parser.error("--eval needs --data (and --data-root, except for shapes)")
    try:
        dataset = evaluation_dataset(args.data, args.data_root, args.task, datasets.test_resize(args.data)[:2],
                                     shapes_options=inference.shapes_options(args))
    except data.DatasetError as e:
        parser.error(f"--data {args.data}: {e}")
    if args.task == "panoptic" and not getattr(dataset, "panoptic", False):
        parser.error(f"--task panoptic: --data {args.data} has no panoptic labels")
    model, _, checkpoint = inference.model_from_flags(args, parser, dataset.num_classes)
    model = model.to(device)
    inference.check_task(model, args.task)
    if model.config.num_classes != dataset.num_classes:
        raise SystemExit(f"error: the model predicts {model.config.num_classes} classes but --data {args.data} "
                         f"has {dataset.num_classes}")
    # the checkpoint's test resize (the size train.py validated at), unless --size / --max-size
    short_edge, long_edge, source = datasets.test_resize(
        args.data, config=asdict(model.config), checkpoint=checkpoint, size=args.size, max_size=args.max_size)
    print(f"test resize: short edge {short_edge}, long edge <= {long_edge} (from {source})")
    ignore_index = (checkpoint.get("args") or {}).get("ignore_index") if args.data == "folder" else None
    if (short_edge, long_edge) != datasets.test_resize(args.data)[:2] or ignore_index not in (None, dataset.ignore_index):
        dataset = evaluation_dataset(args.data, args.data_root, args.task, (short_edge, long_edge),
                                     ignore_index=ignore_index, shapes_options=inference.shapes_options(args))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=data.collate,
                                         num_workers=args.workers)
    results = evaluate(model, loader, args.task, device, amp_dtype, args.tta, args.max_batches,
                       args.object_mask_threshold, args.overlap_threshold)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    names = dataset.class_names
    if args.task == "semantic":
        rows = [{"class": n, "IoU": iou, "Acc": acc}
                for n, iou, acc in zip(names, results["per_class_iou"], results["per_class_acc"])]
        summary = {k: results[k] for k in ("mIoU", "mACC", "pixel_acc")}
    else:
        rows = [{"class": n, "isthing": t, **c} for n, t, c in zip(names, dataset.is_thing, results["per_class"])]
        summary = {k: results[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")}
    print_table(rows, summary, results["num_images"])
    report = {**summary, "num_images": results["num_images"], "test_size": short_edge, "test_max_size": long_edge,
              "tta": args.tta, "per_class": rows}
    (out / f"eval_{args.task}.json").write_text(strict_json(report, indent=1))
    with open(out / f"eval_{args.task}_per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"per-class results: {out / f'eval_{args.task}.json'} and {out / f'eval_{args.task}_per_class.csv'}")
    return results


def print_table(rows: list[dict], summary: dict[str, float], num_images: int) -> None:
    """Per-class rows (classes seen in ground truth or prediction) and the summary, in percent."""
    value_keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
    print(f"{'class':28}" + "".join(f"{k:>8}" for k in value_keys))
    for row in rows:
        if all(math.isnan(row[k]) for k in value_keys):
            continue  # absent from ground truth and prediction
        print(f"{row['class'][:27]:28}" + "".join(f"{100 * row[k]:8.2f}" for k in value_keys))
    print(f"over {num_images} images: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in summary.items()))
