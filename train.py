"""Train MaskFormer (or the paper's per-pixel baselines), from a laptop CPU to `torchrun` on 8 GPUs.

Paper: §4 "Implementation details" (training settings) around §3: every step is Figure 2's forward
pass, the matching σ of Eq. (3.2c), the loss L_mask-cls of Eq. (3.2d) (or the per-pixel
cross-entropy of Eq. (3.1b) for the baselines), backward, and an AdamW step.

    python train.py                                  # tiny MaskFormer on the built-in `shapes` set, CPU, minutes
    python train.py --data ade20k --data-root /path/to/ADEChallengeData2016          # the paper's recipe
    torchrun --nproc_per_node 8 train.py --data ade20k --data-root ... --amp bf16   # 8 GPUs, batch 2 each

Reading order (top to bottom): `TrainingRecipe` and `resolve_recipe` (the settings) -> `train`
(set-up, then the loop) -> `train_step` (forward -> match + loss -> backward -> step) -> the
builders (datasets, model and criterion) -> the command line. Elsewhere: AdamW and its schedule
(machinery/adamw.py), the run's folder and resume (machinery/runs.py), checkpoints (machinery/checkpoint.py), validation
(evaluation.py), the data order (data.py), DDP (machinery/distributed.py), figures
(machinery/drawing.py), flag checks (machinery/cli.py).

The paper's implementation details (§4 and the official configs, docs/recipe.md) are the
defaults, resolved per dataset and backbone family by `resolve_recipe`:

| setting | ResNet | Swin |
|---|---|---|
| optimiser | AdamW, lr 1e-4, weight decay 1e-4 | AdamW, lr 6e-5, weight decay 0.01 |
| backbone lr multiplier | 0.1 | 1.0 |
| schedule | poly (power 0.9), no warm-up | poly (power 0.9), 1500 linear warm-up iterations from 1e-6 x lr |
| no weight decay on | norms, embeddings | norms, embeddings, relative-position-bias tables |
| gradient clipping | whole model, L2 norm 0.01 | same |
| ADE20K batch / iterations / crop | 16 / 160k / 512 | 16 / 160k / 512 (640 for Swin-B/L) |

Deviations, each stated where it happens: `--data shapes` (the default) uses a small recipe so that
it finishes on a 2-core CPU in minutes (`tiny` config, trained from scratch: higher lr, backbone lr
multiplier 1.0, short warm-up); COCO panoptic uses the official step schedule.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import data
import evaluation
import losses
import maskformer
import matcher
from machinery import adamw, checkpoint, cli, conversion, datasets, distributed, drawing, runs, weights
from machinery.checkpoint import save_checkpoint


# -----------------------------------------------------------------------------------------------
# The training recipe: docs/recipe.md's numbers, per dataset and backbone family
# -----------------------------------------------------------------------------------------------
@dataclass
class TrainingRecipe:
    """Every training setting that has a paper/official default; command-line flags override it."""

    config: str
    crop_size: int | None  # None: the dataset's recipe has no crop (COCO panoptic)
    batch_size: int  # global batch (all GPUs x gradient accumulation)
    max_iter: int
    lr: float
    weight_decay: float
    backbone_lr_mult: float
    warmup_iters: int
    warmup_factor: float
    schedule: str  # "poly" or "step"
    lr_steps: tuple[int, ...]
    clip_grad_norm: float
    eval_period: int
    checkpoint_period: int
    task: str  # "semantic" or "panoptic"
    model_overrides: dict


DATA_RECIPES: dict[str, dict] = {
    # ADE20K-150 (docs/recipe.md, "ADE20K-150"): batch 16, 160k iterations, crop 512.
    "ade20k": dict(config="r50", crop_size=512, batch_size=16, max_iter=160_000, eval_period=5000,
                   checkpoint_period=5000, task="semantic"),
    # Cityscapes (configs/cityscapes-19): batch 16, 90k iterations, crop 512x1024 (handled by machinery/augment.py).
    # R101, the paper's backbone: the official repository has only R101 and R101c (deeplab stem) configs and
    # models for Cityscapes, no R50 (Table 2's Cityscapes row is R101).
    "cityscapes": dict(config="r101", crop_size=512, batch_size=16, max_iter=90_000, eval_period=5000,
                       checkpoint_period=5000, task="semantic"),
    # COCO panoptic: batch 64, 554,400 iterations, lr x0.1 at 369,600; 6 transformer encoder layers for
    # ResNets only (`pixel_decoder_overrides`); DETR-style resize and 50 % crop branch (machinery/augment.py's recipe).
    # Panoptic configs set TEST.EVAL_PERIOD 0: one evaluation, at the end (eval_period = max_iter; a full COCO
    # val pass every 5,000 iterations would be ~110 passes); checkpoints still every 5,000.
    "coco_panoptic": dict(config="r50", crop_size=None, batch_size=64, max_iter=554_400, eval_period=554_400,
                          checkpoint_period=5000, task="panoptic", schedule="step", lr_steps=(369_600,),
                          model_overrides={"enc_layers": 6}),
    # COCO-Stuff-10K (configs/coco-stuff-10k-171): batch 32, 60k iterations, crop 640.
    "coco_stuff_10k": dict(config="r50", crop_size=640, batch_size=32, max_iter=60_000, eval_period=5000,
                           checkpoint_period=5000, task="semantic"),
    # ADE20K-Full (configs/ade20k-full-847): batch 16, 200k iterations, crop 512.
    "ade20k_full": dict(config="r50", crop_size=512, batch_size=16, max_iter=200_000, eval_period=5000,
                        checkpoint_period=5000, task="semantic"),
    # Mapillary Vistas (configs/mapillary-vistas-65): batch 16, 300k iterations, crop 1280.
    "mapillary": dict(config="r50", crop_size=1280, batch_size=16, max_iter=300_000, eval_period=5000,
                      checkpoint_period=5000, task="semantic"),
    # ADE20K-Panoptic (configs/ade20k-150-panoptic): the ADE20K recipe with 720k iterations, crop 640
    # and 6 transformer encoder layers; inference thresholds 0.7 / 0.8 (inference.panoptic_thresholds).
    "ade20k_panoptic": dict(config="r50", crop_size=640, batch_size=16, max_iter=720_000, eval_period=720_000,
                            checkpoint_period=5000, task="panoptic", model_overrides={"enc_layers": 6}),
    # A user's own folder: the ADE20K recipe, with fewer iterations by default.
    "folder": dict(config="r50", crop_size=512, batch_size=16, max_iter=40_000, eval_period=5000,
                   checkpoint_period=5000, task="semantic"),
    # Built-in shapes: OUR classroom recipe, not the paper's: long enough that every seed ends above 0.81 mIoU
    # on the torch versions a newcomer gets (docs/speed.md, "The classroom run")
    "shapes": dict(config="tiny", crop_size=128, batch_size=8, max_iter=2000, eval_period=500,
                   checkpoint_period=500, task="semantic", lr=2e-3, weight_decay=0.05,
                   backbone_lr_mult=1.0, warmup_iters=50, warmup_factor=0.01),
}


# What the official model of each recipe's default backbone reaches (single scale; docs/recipe.md, MODEL_ZOO
# of the official repository): R50, except Cityscapes' R101; all use N = 100 queries.
EXPECTED_RESULT = {
    "ade20k": "44.5 mIoU", "cityscapes": "78.5 mIoU (R101)", "coco_panoptic": "46.5 PQ",
    "coco_stuff_10k": "37.1 mIoU", "ade20k_full": "16.0 mIoU", "mapillary": "53.1 mIoU",
    "ade20k_panoptic": "34.7 PQ", "folder": "-", "shapes": "- (synthetic)",
}


def family_defaults(config_name: str) -> dict:
    """Optimiser settings of the official configs, by backbone family (docs/recipe.md)."""
    if config_name.startswith("swin"):
        return dict(lr=6e-5, weight_decay=0.01, backbone_lr_mult=1.0, warmup_iters=1500, warmup_factor=1e-6)
    return dict(lr=1e-4, weight_decay=1e-4, backbone_lr_mult=0.1, warmup_iters=0, warmup_factor=1.0)


def resolve_recipe(args: argparse.Namespace) -> TrainingRecipe:
    """Dataset recipe, then backbone-family optimiser defaults, then explicit flags (highest)."""
    base = dict(DATA_RECIPES[args.data])
    config = args.config or base["config"]
    values = dict(schedule="poly", lr_steps=(), clip_grad_norm=0.01, model_overrides={})
    values.update(family_defaults(config))
    values.update(base, **pixel_decoder_overrides(config, base))
    values["config"] = config
    if config in ("swin_b", "swin_l") and args.data == "ade20k":
        values["crop_size"] = 640  # docs/recipe.md: Swin-B/L train and test at 640
    for field in TrainingRecipe.__dataclass_fields__:
        flag = getattr(args, field, None)
        if flag is not None:
            values[field] = flag
    return TrainingRecipe(**values)


# -----------------------------------------------------------------------------------------------
# The training loop
# -----------------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> dict:
    """Runs training; returns the final validation metrics (rank 0) and writes everything to --output."""
    device, rank, world_size = distributed.setup_distributed(args.device, args.dist_timeout)
    args.workers = data_workers(args.workers, device)
    is_main, recipe = rank == 0, resolve_recipe(args)
    log = print_on_main(is_main)
    out, last = runs.run_folder(args, is_main)  # a new run never lands in an existing run's folder; last.pt if --resume
    if last is not None and runs.is_finished(out, last, recipe, log):
        return runs.read_final_metrics(out)  # a finished run's files are left alone
    set_up_process(args, out, is_main)
    train_set, val_set = build_datasets(args, recipe)
    per_device, accum = split_batch(recipe.batch_size, world_size, device, args)
    model, criterion = build_model_and_criterion(args, recipe, train_set.num_classes, train_set.ignore_index)
    load_initial_weights(model, args, recipe, is_main, log)
    model.to(device)
    optimizer, scheduler = adamw.build_optimizer(model, recipe)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    # A GradScaler only for fp16 (bf16 has fp32's exponent range and needs none).
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # Everything a checkpoint holds: these objects' states, the step, the RNGs and a description.
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    about = runs.run_description(model, recipe, train_set.class_names, args)
    start_step, best_metric = runs.resume(out, last, stateful, about, log) if last else (0, -math.inf)
    metrics_log = runs.MetricsLog(out / "metrics.jsonl", start_step, is_main)
    train_model = distributed.wrap_for_training(model, device, world_size, args.compile)
    batches = iter(build_train_loader(train_set, per_device, accum, start_step, rank, world_size, device, args))
    val_loader = evaluation.build_val_loader(val_set, args, rank, world_size)
    settings = StepSettings(accum, device, amp_dtype, recipe.clip_grad_norm, model.config.num_queries)
    log(f"training {recipe.config} ({args.head}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"params) on {args.data}: {recipe.max_iter} iterations, batch {recipe.batch_size} = {world_size} "
        f"process(es) x {per_device} x {accum} accumulation, lr {recipe.lr}, device {device}")
    progress = make_progress(start_step, recipe.max_iter, disable=not is_main or args.no_progress)
    metric_name = "PQ" if recipe.task == "panoptic" else "mIoU"
    last_metrics: dict = {}
    window_start, window_images = time.perf_counter(), 0
    model.train()
    for step in range(start_step, recipe.max_iter):
        # forward (Figure 2) -> match (Eq. 3.2c) + loss (Eq. 3.2d) -> backward -> AdamW step
        stats = train_step(train_model, batches, criterion, optimizer, scaler, settings)
        runs.stop_unless_finite(stats, step, out, fp16_scaler=scaler.is_enabled())  # then no step, no checkpoint
        scheduler.step()
        done = step + 1
        window_images += stats.pop("images") * world_size

        # -- logging (global averages across processes)
        if done % args.log_period == 0 or done == recipe.max_iter:
            elapsed = time.perf_counter() - window_start
            record = {"step": done, **distributed.mean_over_processes(stats, world_size),
                      "lr": optimizer.param_groups[0]["lr"], "img_per_s": round(window_images / max(elapsed, 1e-9), 2)}
            if device.type == "cuda":
                record["max_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            window_start, window_images = time.perf_counter(), 0
            metrics_log.append(record)
            progress.set_postfix({k: record[k] for k in ("loss", "lr", "img_per_s", "max_mem_mb") if k in record})
        progress.update(1)

        # -- checkpoints, then periodic validation (mIoU of Eq. 3.4b, or PQ): a failing validation loses nothing
        validating = done % recipe.eval_period == 0 or done == recipe.max_iter
        if is_main and (validating or done % recipe.checkpoint_period == 0):
            save_checkpoint(out / "last.pt", runs.checkpoint_state(stateful, done, best_metric, about))
        if validating:
            last_metrics = evaluation.validate_at(done, out, model, val_loader, recipe.task, device, amp_dtype,
                                                  args.data, log)
            # every headline figure (mIoU and PQ^St; PQ, and mIoU on ADE20K-Panoptic); metric_name picks best.pt
            metrics_log.append({"step": done, **{"val_" + k: last_metrics[k]
                                                 for k in evaluation.headline(recipe.task, last_metrics)}})
            if is_main and last_metrics[metric_name] > best_metric:
                best_metric = last_metrics[metric_name]
                save_checkpoint(out / "best.pt", runs.checkpoint_state(stateful, done, best_metric, about))
    progress.close()

    if not last_metrics:  # resumed at the last step, whose validation had not finished: done now
        last_metrics = evaluation.validate_at(recipe.max_iter, out, model, val_loader, recipe.task, device, amp_dtype,
                                            args.data, log)
        metrics_log.append({"step": recipe.max_iter, **{"val_" + k: last_metrics[k]
                                                        for k in evaluation.headline(recipe.task, last_metrics)}})
        if is_main and last_metrics[metric_name] > best_metric:
            save_checkpoint(out / "best.pt", runs.checkpoint_state(stateful, recipe.max_iter, last_metrics[metric_name],
                                                              about))
    if is_main:
        drawing.save_figures(model, val_set, train_set, metrics_log.history, device, out)
        runs.write_final_metrics(out, last_metrics)
        log(f"done: {metric_name} {100 * last_metrics.get(metric_name, float('nan')):.2f}; outputs in {out}")
    if world_size > 1:
        dist.destroy_process_group()
    return last_metrics


@dataclass
class StepSettings:
    """What `train_step` needs besides the model, the criterion and the optimiser."""

    accum: int  # forward/backward passes per optimiser step (gradient accumulation)
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for float32
    clip_grad_norm: float  # whole-model L2 gradient-norm clip, 0: off
    num_queries: int  # N: the CE normaliser counts the whole step's queries


def train_step(train_model: nn.Module, batches, criterion: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, settings: StepSettings) -> dict[str, float]:
    """One optimiser step = `accum` forward/backward passes, gradient clipping, AdamW.

    Returns the loss terms averaged over the micro-steps, plus the pre-clipping gradient norm;
    all read back from the device in one transfer (one host-device sync per step).
    """
    sums: dict[str, torch.Tensor] = {}
    images = 0
    micro_batches = [next(batches) for _ in range(settings.accum)]
    # The normaliser of the mask terms of Eq. (3.2d): the official objective (8 GPUs x 2 images) divides the
    # global batch's summed mask losses by its mask count. Dividing each micro-batch by the global count /
    # accumulation steps (the count is also averaged over processes) makes the mean of the micro-steps'
    # gradients that objective's gradient.
    normalisers = {}
    if isinstance(criterion, losses.MaskFormerLoss):  # the per-pixel loss of Eq. (3.1b) needs neither
        step_targets = [t for b in micro_batches for t in b["targets"]]
        normalisers = step_normalisers(step_targets, settings.num_queries, criterion.no_object_weight,
                                       settings.device, settings.accum)
    for micro, batch in enumerate(micro_batches):
        batch = {**move_batch(batch, settings.device), **normalisers}
        images += batch["images"].shape[0]
        # Under DDP, all-reduce gradients only on the last micro-step.
        last = micro == settings.accum - 1
        sync = train_model.no_sync() if isinstance(train_model, DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with sync:
            with torch.autocast(settings.device.type, dtype=settings.amp_dtype, enabled=settings.amp_dtype is not None):
                outputs = train_model(batch["images"])  # Figure 2: N (class, mask) pairs, or per-pixel logits
            # Unweighted terms of Eq. (3.2d)-(3.2e) (matching by Eq. (3.2c) inside) or Eq. (3.1b), for the
            # final and every auxiliary decoder layer (deep supervision); the loss is their weighted sum.
            terms = criterion(outputs, batch)
            loss = sum(terms[k] * criterion.weight_dict[k] for k in terms)
            scaler.scale(loss / settings.accum).backward()
        for k, v in {"loss": loss.detach(), **terms}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / settings.accum
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Whole-model gradient clipping at L2 norm 0.01 (official CLIP_GRADIENTS "full_model").
    clip = settings.clip_grad_norm if settings.clip_grad_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    stats = dict(zip([*sums, "grad_norm"], torch.stack([*sums.values(), grad_norm.float()]).tolist()))
    # a step with a non-finite loss or gradient norm is never applied (fp16: the GradScaler skips a step
    # with inf gradients itself and lowers its scale)
    if math.isfinite(stats["loss"]) and (math.isfinite(stats["grad_norm"]) or scaler.is_enabled()):
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    stats["images"] = images
    return stats


def step_normalisers(step_targets: list[dict], num_queries: int, no_object_weight: float, device: torch.device,
                     accum: int) -> dict[str, torch.Tensor]:
    """{"num_masks", "class_weight_sum"} for each micro-batch of a step: the whole step's normalisers
    (losses.loss_normalisers, averaged over processes) divided by the accumulation steps."""
    num_masks, class_weight_sum = losses.loss_normalisers(step_targets, num_queries, no_object_weight, device)
    return {"num_masks": num_masks / accum, "class_weight_sum": class_weight_sum / accum}


# -----------------------------------------------------------------------------------------------
# Set-up: processes, batch arithmetic, the data loader, logging
# -----------------------------------------------------------------------------------------------
def print_on_main(is_main: bool):
    """`log(msg)`: print on rank 0 only."""
    return (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)


def set_up_process(args: argparse.Namespace, out: Path, is_main: bool) -> None:
    """Output folder (without the temp files of interrupted saves), CPU threads, and the same seeds
    on every process (identical initial weights; DDP broadcasts them anyway)."""
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        for tmp in checkpoint.remove_partial_saves(out):
            print(f"removed {tmp}, left by an interrupted checkpoint save", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)


def keep_freed_memory() -> None:
    """Linux (glibc): keep the memory of freed tensors in the process for the next step's tensors. By
    default glibc hands blocks over its mmap and trim thresholds back to the system, and each step's
    activations then arrive as fresh pages the kernel must zero: ~10,000 page faults per step of the
    classroom run, ~8 % of its time (docs/speed.md). Elsewhere (macOS, Windows, musl) nothing changes."""
    import ctypes  # only here: the C library's allocator switches

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # blocks up to 32 MB (glibc's largest) from the heap, not mmap
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)  # return heap memory only once 1 GB of it lies free at the top


def split_batch(batch_size: int, world_size: int, device: torch.device, args: argparse.Namespace) -> tuple[int, int]:
    """(images per process per micro-step, accumulation steps): global batch = processes x both."""
    per_device = args.per_device_batch or (2 if device.type == "cuda" else batch_size // world_size)
    accum = args.accum_steps or max(1, batch_size // (per_device * world_size))
    if per_device * world_size * accum != batch_size:
        raise SystemExit(f"error: batch size {batch_size} != {world_size} processes x "
                         f"{per_device} per process x {accum} accumulation steps")
    return per_device, accum


def data_workers(requested: int | None, device: torch.device) -> int:
    """--workers, else 2 loader processes per GPU and none on a CPU: there the loader's processes would
    share the cores with the model's threads, which then wait for each other (the classroom run on 2
    cores: 55 images/s with 2 workers, 64 with the data made between steps; docs/speed.md)."""
    if requested is not None:
        return requested
    return 2 if device.type == "cuda" else 0


def build_train_loader(train_set, per_device: int, accum: int, start_step: int, rank: int, world_size: int,
                       device: torch.device, args: argparse.Namespace) -> DataLoader:
    """An endless loader whose order (and augmentation) depends only on the seed and the step."""
    sampler = data.TrainBatchSampler(len(train_set), per_device * world_size, rank, world_size, args.seed,
                                     start_step=start_step * accum)
    return DataLoader(data.SeededItems(train_set), batch_sampler=sampler, collate_fn=data.collate,
                      num_workers=args.workers, pin_memory=device.type == "cuda",
                      persistent_workers=args.workers > 0)


# -----------------------------------------------------------------------------------------------
# Builders: datasets, model and criterion (docs/recipe.md); the optimiser and schedule are machinery/adamw.py's
# -----------------------------------------------------------------------------------------------
def build_datasets(args: argparse.Namespace, recipe: TrainingRecipe):
    """The training set (with the recipe's augmentation) and the validation set (test resize)."""
    kwargs: dict = {} if recipe.crop_size is None else {"crop_size": recipe.crop_size}
    if args.data == "folder":
        kwargs["ignore_index"] = args.ignore_index
    options = datasets.shapes_options(args)  # --shapes-colours / --shapes-stuff
    if args.data == "shapes":
        kwargs["task"] = recipe.task
    train_set = datasets.build_dataset(args.data, args.data_root, "train", train=True, **kwargs, **options)
    # the same validation set as `infer.py --eval` on this run's checkpoints (one function, same inputs)
    val_set = evaluation.evaluation_dataset(args.data, args.data_root, recipe.task,
                                          datasets.test_resize(args.data, recipe.crop_size)[:2], args.val_images,
                                          args.ignore_index, options)
    return train_set, val_set


def pixel_decoder_overrides(config: str, base: dict) -> dict:
    """The official panoptic configs give ResNets 6 transformer-encoder layers on res5 in the pixel
    decoder (TransformerEncoderPixelDecoder, the transformer decoder attends to its output); Swin
    keeps the plain FPN (BasePixelDecoder) and the transformer decoder attends to res5 itself."""
    if config.startswith("swin") and "enc_layers" in base.get("model_overrides", {}):
        return {"model_overrides": {k: v for k, v in base["model_overrides"].items() if k != "enc_layers"}}
    return {}


def initial_weights(args: argparse.Namespace, recipe: TrainingRecipe) -> str:
    """--weights, or its default: "imagenet" for a paper config on real data (every official config
    starts from an ImageNet backbone, §4), "none" for the `tiny` config and the synthetic shapes."""
    if args.weights is not None:
        return args.weights
    return "none" if recipe.config == "tiny" or args.data == "shapes" else "imagenet"


def load_initial_weights(model: nn.Module, args: argparse.Namespace, recipe: TrainingRecipe, is_main: bool,
                         log) -> None:
    """--weights imagenet | none | NAME | PATH into `model`, with a log line saying what was loaded.
    The first process downloads and converts (machinery/weights.py); the others wait, then read its cache."""
    choice = initial_weights(args, recipe)
    if choice == "none":
        log("--weights none: training from scratch (every tensor starts at its random initialisation)")
        return
    for first in (True, False):
        if is_main == first:
            try:
                if choice == "imagenet":
                    weights.load_imagenet(model, args.weights_mirror, log)
                else:
                    weights.load_pretrained(model, weights.resolve(choice, args.weights_mirror, log), log)
            except (weights.WeightsError, conversion.ConversionError) as e:
                raise SystemExit(f"error: {e}") from None
        if dist.is_initialized():
            dist.barrier()


def build_model_and_criterion(args: argparse.Namespace, recipe: TrainingRecipe, num_classes: int,
                              ignore_index: int = data.IGNORE_INDEX):
    """Figure 2's model (or a §4 baseline) and its criterion: Eq. (3.2d) with its matcher, or Eq. (3.1b)."""
    overrides = dict(recipe.model_overrides)
    overrides["head"] = args.head
    if args.num_queries is not None:
        overrides["num_queries"] = args.num_queries
    overrides.update(args.model_overrides_cli)
    try:
        model = maskformer.build_model(recipe.config, num_classes=num_classes, **overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.matcher == "fixed" and model.config.num_queries != num_classes:
        raise SystemExit(f"error: --matcher fixed needs --num-queries {num_classes} "
                         f"(= number of classes), got {model.config.num_queries}")
    num_aux_layers = max(model.config.dec_layers - 1, 0)
    if model.config.head != "mask_classification":
        # PerPixelBaseline has no decoder outputs to supervise; PerPixelBaseline+ supervises every layer
        num_aux = num_aux_layers if model.config.head == "per_pixel_plus" else 0
        return model, losses.PerPixelLoss(num_aux, ignore_index=ignore_index)
    criterion = losses.MaskFormerLoss(
        num_classes, num_aux_layers=num_aux_layers,
        matcher=MATCHERS[args.matcher]())
    return model, criterion


MATCHERS = {"hungarian": matcher.HungarianMatcher, "fixed": matcher.FixedMatcher, "box": matcher.BoxMatcher}


def move_batch(batch: dict, device: torch.device) -> dict:
    batch = dict(batch)
    batch["images"] = batch["images"].to(device, non_blocking=True)
    batch["sem_seg"] = batch["sem_seg"].to(device, non_blocking=True)
    batch["targets"] = [{**t, "labels": t["labels"].to(device), "masks": t["masks"].to(device)}
                        for t in batch["targets"]]
    return batch


def make_progress(start: int, total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=disable, dynamic_ncols=True, desc="train")


# -----------------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------------
SCALE_OUT_HELP = """\
one GPU, 8 GPUs, 2 machines x 8 GPUs (docs/training.md, "Training at full scale"); --batch-size is the
global batch = processes x --per-device-batch (2 on CUDA) x --accum-steps (whatever reaches the batch):
  python train.py --data ade20k --data-root D                          # batch 16 = 1 x 2 x 8 accumulation
  torchrun --nproc_per_node 8 train.py --data ade20k --data-root D     # batch 16 = 8 GPUs x 2
  torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint HOST:29400 \\
      --rdzv_id RUN train.py --data coco_panoptic --data-root D        # batch 64 = 16 GPUs x 2 x 2 accumulation
  (the same command with --node_rank 1 on the second machine; HOST: the first machine's address, RUN: any
  name both share; ADE20K on 16 GPUs: --per-device-batch 1, batch 16 = 16 x 1)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=SCALE_OUT_HELP,
                                formatter_class=cli.HelpFormatter)
    # every value is checked here (one line naming the flag and what it expects), before any work
    at_least, number_in, device_name, writable_folder = \
        cli.int_at_least, cli.number_in, cli.device_name, cli.writable_folder
    g = p.add_argument_group("data")
    g.add_argument("--data", default="shapes", choices=sorted(DATA_RECIPES),
                   help="dataset; the official result to expect with its recipe and default backbone (R50; "
                   "cityscapes R101): " + ", ".join(f"{name} {result}" for name, result in EXPECTED_RESULT.items()))
    g.add_argument("--data-root", default=None, type=cli.existing_folder,
                   help="the dataset's own folder (not needed for shapes)")
    g.add_argument("--shapes-colours", type=at_least(0), default=0,
                   help="--data shapes: classes are outline x this many colours (0: outline only; up to 16, K = 97)")
    g.add_argument("--shapes-stuff", type=at_least(0), default=0,
                   help="--data shapes: this many textured 'stuff' background classes (0: one background; up to 6)")
    g.add_argument("--task", choices=("semantic", "panoptic"), default=None,
                   help="targets and validation metrics (mIoU and PQ^St / PQ; best.pt by mIoU / PQ); "
                   "default: the dataset's recipe")
    g.add_argument("--ignore-index", type=at_least(0), default=255, help="label value to ignore (--data folder)")
    g.add_argument("--crop-size", dest="crop_size", type=at_least(32), help="training crop (recipe default)")
    g.add_argument("--workers", type=at_least(0), default=None,
                   help="data-loading worker processes per process (default: 2 with a GPU; 0 on a CPU, where "
                        "they would take cores from the model)")

    g = p.add_argument_group("model (paper §3.3 and the §4 ablations)")
    g.add_argument("--config", default=None, choices=sorted(maskformer.CONFIGS),
                   help="named architecture (recipe default: r50; r101 for cityscapes; tiny for shapes)")
    g.add_argument("--head", default="mask_classification", choices=list(maskformer.HEADS),
                   help="the formulation (MaskFormerConfig.head): mask classification (MaskFormer), or "
                        "the per-pixel classification baselines PerPixelBaseline / PerPixelBaseline+ of §4")
    g.add_argument("--matcher", default="hungarian", choices=["hungarian", "fixed", "box"],
                   help="bipartite (Eq. 3.2c), fixed matching (needs --num-queries = number of classes), or "
                   "DETR's box-based bipartite matching (Table 5)")
    g.add_argument("--num-queries", type=at_least(1), default=None, help="N, the number of queries (config default)")
    g.add_argument("--set", dest="model_set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any MaskFormerConfig field, e.g. --set dec_layers=2 (repeatable)")
    g.add_argument("--weights", default=None,
                   help="imagenet: the backbone's ImageNet weights, downloaded once (default for the paper configs "
                        "on real data, as every official config); none: from scratch (default for tiny and shapes); "
                        "a published model's name (python infer.py --list) or a tooling/convert.py/train.py checkpoint "
                        "(whole model or backbone), to fine-tune")
    g.add_argument("--weights-mirror", default=None,
                   help="base URL or file:// folder replacing the publishers' addresses (docs/weights.md)")

    g = p.add_argument_group("optimisation (docs/recipe.md; omitted flags take the recipe's value)")
    g.add_argument("--batch-size", dest="batch_size", type=at_least(1), help="global batch size")
    g.add_argument("--iters", dest="max_iter", type=at_least(1), help="training iterations")
    g.add_argument("--lr", dest="lr", type=number_in(0, low_open=True), help="base learning rate")
    g.add_argument("--weight-decay", dest="weight_decay", type=number_in(0))
    g.add_argument("--backbone-lr-mult", dest="backbone_lr_mult", type=number_in(0))
    g.add_argument("--warmup-iters", dest="warmup_iters", type=at_least(0))
    g.add_argument("--clip-grad", dest="clip_grad_norm", type=number_in(0), help="whole-model grad-norm clip (0: off)")
    g.add_argument("--accum-steps", type=at_least(1), default=None,
                   help="gradient accumulation steps (default: whatever reaches --batch-size)")
    g.add_argument("--per-device-batch", type=at_least(1), default=None,
                   help="images per process per step (default: 2 on CUDA, as the official 8x2 setup)")
    g.add_argument("--seed", type=at_least(0), default=0)

    g = p.add_argument_group("devices")
    g.add_argument("--device", default=None, type=device_name, help="cpu | cuda | mps (default: the best available)")
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--threads", type=at_least(1), default=None, help="CPU threads (torch.set_num_threads)")
    g.add_argument("--dist-timeout", type=number_in(0, low_open=True), default=distributed.DEFAULT_TIMEOUT_S,
                   help="under torchrun: seconds a process waits for the others in a collective before the run "
                        "stops with one line (a killed or hung process)")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output", default=None, type=writable_folder,
                   help="folder for checkpoints, logs and figures (default: a new runs/<date-time>, which "
                        "runs/latest then points at); a folder holding a run is refused without --resume/--overwrite")
    g.add_argument("--resume", action="store_true",
                   help="continue OUTPUT/last.pt exactly (default OUTPUT: runs/latest); a finished run is left alone")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --output holding a run, deleting it")
    g.add_argument("--eval-period", dest="eval_period", type=at_least(1), help="validate every N iterations")
    g.add_argument("--checkpoint-period", dest="checkpoint_period", type=at_least(1),
                   help="write last.pt every N iterations")
    g.add_argument("--val-images", type=at_least(1), default=None, help="limit validation to N images")
    g.add_argument("--log-period", type=at_least(1), default=10, help="log to metrics.jsonl every N iterations")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = p.parse_args(argv)
    if args.matcher != "hungarian" and args.head != "mask_classification":
        p.error(f"--matcher {args.matcher} only applies to --head mask_classification")
    if (args.shapes_colours or args.shapes_stuff) and args.data != "shapes":
        p.error("--shapes-colours and --shapes-stuff only apply to --data shapes")
    if args.resume and args.overwrite:
        p.error("--resume continues a run, --overwrite deletes it: give one of them")
    try:
        args.model_overrides_cli = dict(cli.parse_assignment(s) for s in args.model_set)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    except (runs.NonFiniteLoss, evaluation.ValidationFailed) as e:
        raise SystemExit(str(e)) from None
    except (data.DatasetError, checkpoint.CheckpointSaveError) as e:
        raise SystemExit(f"error: {cli.error_line(e)}") from None
    except Exception as e:
        if distributed.lost_contact(e):  # another process died or hangs: one line, not a traceback or a hang
            raise SystemExit(distributed.lost_contact_message(e, args.dist_timeout)) from None
        if not isinstance(e, OSError) and "DataLoader worker" not in str(e):
            raise
        # a bad training image named by the worker that read it, a full disk while writing logs or figures
        raise SystemExit(f"error: {cli.error_line(e)}") from None


if __name__ == "__main__":
    main()
