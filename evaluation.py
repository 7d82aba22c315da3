"""Evaluation: mIoU, PQ^St and PQ of a model over a validation split (§4's metrics, Tables 1-4).

Paper: §4 "Evaluation metrics": mIoU and PQ^St for semantic segmentation (Tables 1, 2 and 4 give
both: "mIoU / PQ^St"), PQ for panoptic segmentation, at the dataset's test resize, against the labels
at the original image size. On ADE20K-Panoptic the official run also scores mIoU of the semantic
labels beside PQ (`headline`). The predictions are §3.4's inference (inference.py: Eq. (3.4b) for
mIoU and PQ^St, Eq. (3.4a) with panoptic fusion for PQ); the metrics themselves are metrics.py's
(PQ^St: every class present in an image is one stuff segment, `SemanticMetrics`). One function,
`evaluate`, gives train.py's validation and `python infer.py --eval` the same number.

Reading order: `evaluation_dataset` (the validation split at the test resize, which
machinery/datasets.py's `test_resize` gives) -> `evaluate` (the loop over a loader; the multi-scale
test is inference.py's `tta_semantic_map`) -> train.py's
`build_val_loader`, `validate`, `validate_at` (`ValidationFailed`: the run stops, its state kept)
-> `run_evaluation` and `print_table` (the `infer.py --eval` command).

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
from machinery import cli, datasets, weights
from machinery.distributed import is_distributed, sum_over_processes
from metrics import PanopticMetrics, SemanticMetrics, strict_json

# The per-class semantic figures a panoptic evaluation adds where the dataset scores its semantic labels
SEMANTIC_BESIDE_PQ = ("mIoU", "mACC", "pixel_acc", "per_class_iou", "per_class_acc")


def headline(task: str, metrics: dict) -> list[str]:
    """The figures a validation reports, in order; the first selects best.pt.

    semantic: mIoU and PQ^St ("PQ_St"), the two columns of Tables 1, 2 and 4; panoptic: PQ (Table 3),
    then mIoU where the evaluation scored the semantic labels too (ADE20K-Panoptic, as the official run)."""
    names = ["mIoU", "PQ_St"] if task == "semantic" else ["PQ", "mIoU"]
    return [name for name in names if name in metrics]


def base_dataset(dataset):
    """The dataset under any number of torch Subsets (the first images only; one process's share)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


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
             is_thing: list[bool] | None = None, progress: bool = True, semantic_labels: bool | None = None) -> dict:
    """mIoU and PQ^St (task "semantic") or PQ ("panoptic") of `model` over the batches of `loader`.

    Batches are `data.collate` outputs of an evaluation dataset (train=False): predictions are
    compared with each target's "orig_sem_seg" / "orig_pan_seg" at the original resolution, as
    detectron2 does. Runs in eval mode without gradients and restores the model's mode after.
    tta: the multi-scale + flip test (`tta_semantic_map`) on each item's "orig_image".
    is_thing defaults to loader.dataset.is_thing. Returns SemanticMetrics.compute() (mIoU, PQ_St …) or
    PanopticMetrics.compute() (PQ …), plus "num_images". semantic_labels (panoptic only; default: the
    dataset's `scores_miou`, True for ADE20K-Panoptic): also score Eq. (3.4b)'s semantic map, from the
    same forward pass, against "orig_sem_seg" and add SEMANTIC_BESIDE_PQ (mIoU …), as the official
    ADE20K-Panoptic evaluation does. Under torch.distributed each process
    evaluates what its own loader yields (train.py gives each its share of the split) and the counts
    are summed over processes, so every process returns the whole split's figures.
    """
    if task not in ("semantic", "panoptic"):
        raise ValueError(f"task must be 'semantic' or 'panoptic', got {task!r}")
    if tta and task == "panoptic":
        raise ValueError("test-time augmentation is for semantic segmentation only (as in the official code)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dataset = base_dataset(loader.dataset)
    ignore_index = getattr(dataset, "ignore_index", data.IGNORE_INDEX)
    semantic_metric = None  # panoptic: the semantic labels' mIoU beside PQ
    if task == "semantic":
        metric = SemanticMetrics(model.config.num_classes, ignore_index)
    else:
        if semantic_labels if semantic_labels is not None else getattr(dataset, "scores_miou", False):
            semantic_metric = SemanticMetrics(model.config.num_classes, ignore_index)
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
            elif semantic_metric is not None:  # one forward pass: (pan_seg, segments_info, semantic map) per image
                preds = inference.predict_panoptic_and_semantic(model, images, is_thing, batch["image_sizes"],
                                                                orig_sizes, amp_dtype, object_mask_threshold,
                                                                overlap_threshold)
                for (pan_seg, segments_info, sem_map), target in zip(preds, targets):
                    metric.update(pan_seg, segments_info, target["orig_pan_seg"].to(device), target["segments_info"])
                    semantic_metric.update(sem_map, target["orig_sem_seg"].to(device))
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
        if semantic_metric is not None:
            semantic_metric.sync()
        num_images = int(sum_over_processes(torch.tensor(num_images)).item())
    results = metric.compute()
    if semantic_metric is not None:
        semantic = semantic_metric.compute()
        results.update({key: semantic[key] for key in SEMANTIC_BESIDE_PQ})
    return {**results, "num_images": num_images}


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
    """Validation on the whole split, the same figure as `infer.py --eval` (every process runs it:
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
    Logs every `headline` figure (semantic: mIoU and PQ^St; ADE20K-Panoptic: PQ and mIoU). An undefined
    selecting metric (no labelled pixel, no segment) gets a warning instead of a silent nan."""
    try:
        metrics = validate(model, loader, task, device, amp_dtype, data_name)
    except (data.DatasetError, ValueError, RuntimeError, OSError) as e:
        raise ValidationFailed(f"error: validation at step {step} failed: {cli.error_line(e)}. The training "
                                    f"state of step {step} is kept in {out / 'last.pt'}; fix the validation data, "
                                    f"then continue with --resume --output {out}") from None
    name, *others = headline(task, metrics)
    if math.isfinite(metrics[name]):
        log(f"step {step}: validation " + ", ".join(f"{k} = {100 * metrics[k]:.2f}" for k in (name, *others)))
    else:
        log(f"warning: step {step}: validation {name} is undefined ({metrics[name]}): the {len(loader.dataset)} "
            f"validation images hold no labelled pixel/segment (all ignore?); best.pt is not updated")
    return metrics


def run_evaluation(args: argparse.Namespace, parser: argparse.ArgumentParser, device: torch.device,
                   amp_dtype: torch.dtype | None) -> dict:
    """`--eval`: mIoU and PQ^St (semantic) or PQ (panoptic; with mIoU on ADE20K-Panoptic) over the validation
    split; a table on stdout, per-class JSON and CSV in --output (the summary's keys are `compute()`'s)."""
    if args.data is None:
        parser.error("--eval needs --data (and --data-root, except for shapes)")
    try:
        dataset = evaluation_dataset(args.data, args.data_root, args.task, datasets.test_resize(args.data)[:2],
                                     shapes_options=datasets.shapes_options(args))
    except data.DatasetError as e:
        parser.error(f"--data {args.data}: {e}")
    if args.task == "panoptic" and not getattr(dataset, "panoptic", False):
        parser.error(f"--task panoptic: --data {args.data} has no panoptic labels")
    model, _, checkpoint = weights.model_from_flags(args, parser, dataset.num_classes)
    model = model.to(device)
    if args.task == "panoptic" and model.config.head != "mask_classification":
        raise SystemExit(f"error: --task panoptic needs a mask-classification model; this one's head is "
                         f"{model.config.head!r} (semantic only)")
    if model.config.num_classes != dataset.num_classes:
        raise SystemExit(f"error: the model predicts {model.config.num_classes} classes but --data {args.data} "
                         f"has {dataset.num_classes}")
    # the checkpoint's test resize (the size train.py validated at), unless --size / --max-size
    short_edge, long_edge, source = datasets.test_resize(
        args.data, config=asdict(model.config), checkpoint=checkpoint, size=args.size, max_size=args.max_size)
    print(f"test resize: short edge {short_edge}, long edge <= {long_edge} (from {source})")
    ignore_index = (checkpoint.get("args") or {}).get("ignore_index") if args.data == "folder" else None
    if (short_edge, long_edge) != datasets.test_resize(args.data)[:2] or \
            ignore_index not in (None, dataset.ignore_index):
        dataset = evaluation_dataset(args.data, args.data_root, args.task, (short_edge, long_edge),
                                     ignore_index=ignore_index, shapes_options=datasets.shapes_options(args))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=data.collate,
                                         num_workers=args.workers)
    results = evaluate(model, loader, args.task, device, amp_dtype, args.tta, args.max_batches,
                       args.object_mask_threshold, args.overlap_threshold)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    names = dataset.class_names
    if args.task == "semantic":
        rows = [{"class": n, "IoU": iou, "Acc": acc, "PQ_St": pq} for n, iou, acc, pq in
                zip(names, results["per_class_iou"], results["per_class_acc"], results["per_class_pq"])]
        summary = {k: results[k] for k in ("mIoU", "PQ_St", "SQ_St", "RQ_St", "mACC", "pixel_acc")}
    else:
        rows = [{"class": n, "isthing": t, **c} for n, t, c in zip(names, dataset.is_thing, results["per_class"])]
        if "per_class_iou" in results:  # ADE20K-Panoptic: the semantic labels' IoU beside each class's PQ
            rows = [{**row, "IoU": iou} for row, iou in zip(rows, results["per_class_iou"])]
        summary = {k: results[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st",
                                           "mIoU", "mACC", "pixel_acc") if k in results}
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
