"""Evaluation: mIoU and PQ of a model over a validation split (§4's metrics, Tables 1-3).

Paper: §4 "Evaluation metrics": mIoU for semantic segmentation, PQ for panoptic segmentation, at
the dataset's test resize, against the labels at the original image size. The predictions are
§3.4's inference (infer.py: Eq. (3.4b) for mIoU, Eq. (3.4a) with panoptic fusion for PQ); the
metrics themselves are metrics.py's. One function, `evaluate`, gives train.py's validation and
`python infer.py --eval` the same number.

Reading order: `recipe_test_resize` (the test resize of a dataset's recipe) -> `resolve_test_resize`
(the test resize of a checkpoint) -> `evaluation_dataset` (the validation split at that resize) ->
`evaluate` (the loop over a loader; for the multi-scale test `tta_resize`, then `tta_semantic_map` ->
`tta_version` -> `band_scores`) -> train.py's
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import augment
import cli
import data
import infer
import losses
import maskformer
import weight_files
from distributed import is_distributed, sum_over_processes
from metrics import PanopticMetrics, SemanticMetrics, strict_json


def recipe_test_resize(name: str, crop_size: int | None = None) -> tuple[int, int]:
    """(short edge, long-edge cap) of the test resize of dataset `name`'s recipe at training crop
    `crop_size` (augment.recipe_for): ADE20K crop 512 -> (512, 2048), crop 640 -> (640, 2560).
    shapes: (crop, 4 x crop), its scenes being generated crop x crop (128 by default); a photo given to
    a shapes model is resized as ADE20K's recipe would at that crop."""
    if name == "shapes":
        return crop_size or 128, 4 * (crop_size or 128)
    recipe = augment.recipe_for(name, crop_size)
    return recipe.test_size, recipe.test_max_size


def resolve_test_resize(data_name: str | None, config: maskformer.MaskFormerConfig, checkpoint: dict | None,
                        size: int | None = None, max_size: int | None = None) -> tuple[int, int, str]:
    """(short edge, long-edge cap, where they come from) of the test resize: the first found of
    1. the checkpoint's recipe: "test_size" / "test_max_size" (train.py and convert.py write them);
       an older train.py checkpoint: its dataset's recipe at its training crop;
    2. the --data recipe (ADE20K with Swin-B/L: at 640, as train.py trains them);
    3. the model's official test size (weight_files.official_test_resize: a published model's dataset
       is told by its class count), else 512 / 2048.
    --size / --max-size replace either number."""
    recipe = (checkpoint or {}).get("recipe")
    trained_on = ((checkpoint or {}).get("args") or {}).get("data")
    if isinstance(recipe, dict) and "test_size" in recipe:
        short, long, source = recipe["test_size"], recipe["test_max_size"], "the checkpoint's recipe"
    elif isinstance(recipe, dict) and trained_on in data.DATASETS:
        short, long = recipe_test_resize(trained_on, recipe.get("crop_size"))
        source = f"the checkpoint's recipe ({trained_on}, crop {recipe.get('crop_size')})"
    elif data_name is not None:
        crop = 640 if data_name == "ade20k" and config.backbone in ("swin_base", "swin_large") else None
        (short, long), source = recipe_test_resize(data_name, crop), f"the {data_name} recipe"
    else:
        official = weight_files.official_test_resize(asdict(config))
        short, long = (official["test_size"], official["test_max_size"]) if official else (512, 2048)
        source = "the model's official test size" if official else "the default"
    if size is not None or max_size is not None:
        source = "--size / --max-size"
    return size or short, max_size or long, source


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
    dataset = data.build_dataset(name, root, split="val", train=False, **kwargs)
    return torch.utils.data.Subset(dataset, range(min(num_images, len(dataset)))) if num_images else dataset


def tta_resize(dataset, orig_size: tuple[int, int]) -> tuple[int, int]:
    """(test size, long-edge cap) the multi-scale test scales from: the dataset's recipe (ADE20K: 512,
    3584 = 7 x 512); without one (shapes) the image's own short edge."""
    recipe = getattr(dataset, "recipe", None)
    test_size = recipe.test_size if recipe is not None else min(orig_size)
    return test_size, (recipe.tta_max_scale if recipe is not None else 7) * test_size


def tta_semantic_map(model: nn.Module, image, test_size: int, max_size: int, amp_dtype: torch.dtype | None = None,
                     scales: tuple[float, ...] = infer.TTA_SCALES, max_values: int = 2**26) -> Tensor:
    """`infer.tta_class_scores(...).argmax(0)`, the multi-scale + flip semantic map (H0, W0), a band of
    the photo's rows at a time, holding at most ~max_values class scores at its size at once.

    Each version (scale x flip) reaches the original size through two bilinear resizes of its stride-4
    outputs, one before and one after Eq. (3.4b). A band of original rows reads only a few rows of
    each resize's input, so per band and version only those rows are computed (`band_scores`); the
    band's scores are summed over the versions and its argmax taken. tta_class_scores holds the sum
    and one version at the original size (150 classes, 5000 x 4000: 2 x 12 GB). Measured, the `tiny`
    model with 150 classes on a 2000 x 3000 photo (test size 128, CPU): peak RSS 11.0 GB and 53 s for
    tta_class_scores(...).argmax(0), 1.3 GB and 38 s here. Same labels, up to the float rounding of the
    row resizes (done as small matmuls).
    """
    image = np.asarray(image)
    orig_size = image.shape[:2]
    device = next(model.parameters()).device
    versions = []
    for outputs, padded_size, size in infer.tta_outputs(model, image, test_size, max_size, amp_dtype, scales):
        versions += [tta_version(outputs, b, padded_size, size, orig_size) for b in range(2)]
    num_classes = versions[0]["num_classes"]
    rows_per_band = max(1, max_values // (num_classes * orig_size[1]))
    labels = torch.empty(orig_size, dtype=torch.long, device=device)  # (H0, W0)
    for top in range(0, orig_size[0], rows_per_band):
        bottom = min(top + rows_per_band, orig_size[0])
        labels[top:bottom] = sum(band_scores(v, top, bottom) for v in versions).argmax(0)
    return labels


def tta_version(outputs: dict[str, Tensor], b: int, padded_size: tuple[int, int], image_size: tuple[int, int],
                orig_size: tuple[int, int]) -> dict:
    """What `band_scores` needs of image b of a pair (b = 1: the flipped one): its stride-4 maps, the
    class probabilities of Eq. (3.3a) (MaskFormer) or None (per-pixel logits), the widths, and the two
    row resizes of infer.resize_to_original as 1-D interpolation matrices (built once, sliced per band)."""
    if "sem_seg_logits" in outputs:
        maps, class_probs = outputs["sem_seg_logits"][b], None  # (K, h, w)
    else:
        maps, class_probs = outputs["pred_masks"][b], outputs["pred_logits"][b].softmax(-1)[:, :-1]  # (N, h, w), (N, K)
    return {"maps": maps, "class_probs": class_probs,
            "num_classes": len(maps) if class_probs is None else class_probs.shape[1],
            "widths": (padded_size[1], image_size[1], orig_size[1]), "flipped": b == 1,
            # stride 4 -> the padded input, cropped to the image: (h, hs); the image -> the original: (hs, H0)
            "to_padded": losses.interpolation_matrix(maps.shape[-2], padded_size[0], maps)[:, : image_size[0]],
            "to_original": losses.interpolation_matrix(image_size[0], orig_size[0], maps)}


def band_scores(version: dict, top: int, bottom: int) -> Tensor:
    """Class scores (K, bottom - top, W0) of rows top..bottom-1 of the original size, for one version:
    infer.resize_to_original's two resizes, the columns by F.interpolate, the rows by matrix slices."""
    padded_width, image_width, orig_width = version["widths"]
    to_original = version["to_original"][:, top:bottom]  # (hs, rows)
    used = to_original.abs().sum(1).nonzero()[:, 0]  # the test-size rows this band reads
    first, last = int(used[0]), int(used[-1]) + 1
    # 1. up to the padded input (rows: the used ones only; columns: all), cropped to the image
    x = version["to_padded"][:, first:last].T @ version["maps"]  # (C, used rows, w)
    x = F.interpolate(x[None], size=(last - first, padded_width), mode="bilinear",
                      align_corners=False)[0, :, :, :image_width]  # (C, used rows, ws)
    if version["class_probs"] is not None:
        # Eq. (3.4b): Σ_i p_i(c) · sigmoid(mask logits)_i
        x = torch.einsum("nk,nhw->khw", version["class_probs"], x.sigmoid())  # (K, used rows, ws)
    # 2. the resize to the original size
    x = F.interpolate(x[None], size=(last - first, orig_width), mode="bilinear", align_corners=False)[0]
    x = torch.einsum("hr,khw->krw", to_original[first:last], x)  # (K, rows, W0)
    return x.flip(-1) if version["flipped"] else x


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
                    preds = [tta_semantic_map(model, t["orig_image"].numpy(), *tta_resize(dataset, t["orig_size"]),
                                              amp_dtype) for t in targets]
                else:
                    preds = infer.predict_semantic(model, images, batch["image_sizes"], orig_sizes, amp_dtype)
                for pred, target in zip(preds, targets):
                    metric.update(pred, target["orig_sem_seg"].to(device))
            else:
                preds = infer.predict_panoptic(model, images, is_thing, batch["image_sizes"], orig_sizes, amp_dtype,
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
    and the metrics sum their counts over processes (evaluate.evaluate), so the figure is the whole split's."""
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
    object_mask_threshold, overlap_threshold = infer.panoptic_thresholds(data_name)
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
        dataset = evaluation_dataset(args.data, args.data_root, args.task, recipe_test_resize(args.data),
                                     shapes_options=infer.shapes_options(args))
    except data.DatasetError as e:
        parser.error(f"--data {args.data}: {e}")
    if args.task == "panoptic" and not getattr(dataset, "panoptic", False):
        parser.error(f"--task panoptic: --data {args.data} has no panoptic labels")
    model, _, checkpoint = infer.build_model_for(args, parser, dataset.num_classes)
    model = model.to(device)
    infer.check_task(model, args.task)
    if model.config.num_classes != dataset.num_classes:
        raise SystemExit(f"error: the model predicts {model.config.num_classes} classes but --data {args.data} "
                         f"has {dataset.num_classes}")
    # the checkpoint's test resize (the size train.py validated at), unless --size / --max-size
    short_edge, long_edge, source = resolve_test_resize(args.data, model.config, checkpoint, args.size, args.max_size)
    print(f"test resize: short edge {short_edge}, long edge <= {long_edge} (from {source})")
    ignore_index = (checkpoint.get("args") or {}).get("ignore_index") if args.data == "folder" else None
    if (short_edge, long_edge) != recipe_test_resize(args.data) or ignore_index not in (None, dataset.ignore_index):
        dataset = evaluation_dataset(args.data, args.data_root, args.task, (short_edge, long_edge),
                                     ignore_index=ignore_index, shapes_options=infer.shapes_options(args))
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
