"""Train MaskFormer (or the paper's per-pixel baselines), from a laptop CPU to `torchrun` on 8 GPUs.

    python train.py                                  # tiny MaskFormer on the built-in `shapes` set, CPU, minutes
    python train.py --data ade20k --data-root /path/to/ADEChallengeData2016          # the paper's recipe
    torchrun --nproc_per_node 8 train.py --data ade20k --data-root ... --amp bf16   # 8 GPUs, batch 2 each

What the paper calls "implementation details" (§4 and the official configs, see REFERENCE.md) are
the defaults here, resolved per dataset and backbone family by `resolve_recipe`:

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

Reading order: `main` -> `train` (the loop) -> `train_step` (Figure 2 forward + Eq. (3.2d) loss
+ backward) -> the helpers for the optimiser (`param_groups`), schedule (`lr_factor`), data order
(`TrainBatchSampler`), checkpoints (`save_checkpoint`, `load_checkpoint`) and logging.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import data
import infer
import losses
import maskformer
import matcher


# -----------------------------------------------------------------------------------------------
# The recipe: REFERENCE.md's numbers, per dataset and backbone family
# -----------------------------------------------------------------------------------------------
@dataclass
class Recipe:
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
    # ADE20K-150 (REFERENCE.md "ADE20K-150 recipe"): batch 16, 160k iterations, crop 512.
    "ade20k": dict(config="r50", crop_size=512, batch_size=16, max_iter=160_000, eval_period=5000,
                   checkpoint_period=5000, task="semantic"),
    # Cityscapes (official config): batch 16, 90k iterations, crop 512x1024 (handled by data.py).
    "cityscapes": dict(config="r50", crop_size=512, batch_size=16, max_iter=90_000, eval_period=5000,
                       checkpoint_period=5000, task="semantic"),
    # COCO panoptic: batch 64, 554,400 iterations, lr x0.1 at 369,600; 6 transformer encoder
    # layers for the ResNet configs (REFERENCE.md); no crop (short edge 480-800, data.py's recipe).
    "coco_panoptic": dict(config="r50", crop_size=None, batch_size=64, max_iter=554_400, eval_period=5000,
                          checkpoint_period=5000, task="panoptic", schedule="step", lr_steps=(369_600,),
                          model_overrides={"enc_layers": 6}),
    # A user's own folder: the ADE20K recipe, with fewer iterations by default.
    "folder": dict(config="r50", crop_size=512, batch_size=16, max_iter=40_000, eval_period=5000,
                   checkpoint_period=5000, task="semantic"),
    # Built-in synthetic shapes (deviation: a CPU-sized recipe, see the module docstring).
    "shapes": dict(config="tiny", crop_size=128, batch_size=8, max_iter=1500, eval_period=500,
                   checkpoint_period=250, task="semantic", lr=1e-3, weight_decay=0.05,
                   backbone_lr_mult=1.0, warmup_iters=100, warmup_factor=0.01),
}


def family_defaults(config_name: str) -> dict:
    """Optimiser settings of the official configs, by backbone family (REFERENCE.md)."""
    if config_name.startswith("swin"):
        return dict(lr=6e-5, weight_decay=0.01, backbone_lr_mult=1.0, warmup_iters=1500, warmup_factor=1e-6)
    return dict(lr=1e-4, weight_decay=1e-4, backbone_lr_mult=0.1, warmup_iters=0, warmup_factor=1.0)


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    """Dataset recipe, then backbone-family optimiser defaults, then explicit flags (highest)."""
    base = dict(DATA_RECIPES[args.data])
    config = args.config or base["config"]
    values = dict(schedule="poly", lr_steps=(), clip_grad_norm=0.01, model_overrides={})
    values.update(family_defaults(config))
    values.update(base)
    values["config"] = config
    if config in ("swin_b", "swin_l") and args.data == "ade20k":
        values["crop_size"] = 640  # REFERENCE.md: Swin-B/L train and test at 640
    for field in Recipe.__dataclass_fields__:
        flag = getattr(args, field, None)
        if flag is not None:
            values[field] = flag
    return Recipe(**values)


# -----------------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="shapes", choices=sorted(DATA_RECIPES), help="dataset")
    g.add_argument("--data-root", default=None, help="the dataset's own folder (not needed for shapes)")
    g.add_argument("--ignore-index", type=int, default=255, help="label value to ignore (--data folder)")
    g.add_argument("--crop-size", dest="crop_size", type=int, help="training crop (recipe default)")
    g.add_argument("--workers", type=int, default=0 if sys.platform == "darwin" else 2,
                   help="data-loading worker processes per GPU/process")

    g = p.add_argument_group("model (paper §3.3 and the §4 ablations)")
    g.add_argument("--config", default=None, choices=sorted(maskformer.CONFIGS),
                   help="named architecture (recipe default: r50, or tiny for shapes)")
    g.add_argument("--model", default="maskformer", choices=["maskformer", "per_pixel", "per_pixel_plus"],
                   help="mask classification, or the PerPixelBaseline / PerPixelBaseline+ of §4")
    g.add_argument("--matcher", default="hungarian", choices=["hungarian", "fixed"],
                   help="bipartite (Eq. 3.2c) or fixed matching (needs --num-queries = number of classes)")
    g.add_argument("--num-queries", type=int, default=None, help="N, the number of queries (config default)")
    g.add_argument("--set", dest="model_set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any MaskFormerConfig field, e.g. --set dec_layers=2 (repeatable)")
    g.add_argument("--weights", default=None,
                   help="start from these weights (a convert.py/train.py checkpoint: whole model or backbone)")

    g = p.add_argument_group("optimisation (REFERENCE.md recipe; omitted flags take the recipe's value)")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size")
    g.add_argument("--iters", dest="max_iter", type=int, help="training iterations")
    g.add_argument("--lr", dest="lr", type=float, help="base learning rate")
    g.add_argument("--weight-decay", dest="weight_decay", type=float)
    g.add_argument("--backbone-lr-mult", dest="backbone_lr_mult", type=float)
    g.add_argument("--warmup-iters", dest="warmup_iters", type=int)
    g.add_argument("--clip-grad", dest="clip_grad_norm", type=float, help="whole-model grad-norm clip (0: off)")
    g.add_argument("--accum-steps", type=int, default=None,
                   help="gradient accumulation steps (default: whatever reaches --batch-size)")
    g.add_argument("--per-device-batch", type=int, default=None,
                   help="images per process per step (default: 2 on CUDA, as the official 8x2 setup)")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("devices")
    g.add_argument("--device", default=None, help="cpu | cuda | mps (default: the best available)")
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output", default="runs/latest", help="folder for checkpoints, logs and figures")
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt exactly")
    g.add_argument("--eval-period", dest="eval_period", type=int, help="validate every N iterations")
    g.add_argument("--checkpoint-period", dest="checkpoint_period", type=int,
                   help="write last.pt every N iterations")
    g.add_argument("--val-images", type=int, default=None, help="limit validation to N images")
    g.add_argument("--log-period", type=int, default=10, help="log to metrics.jsonl every N iterations")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = p.parse_args(argv)
    if args.matcher == "fixed" and args.model != "maskformer":
        p.error("--matcher fixed only applies to --model maskformer")
    try:
        args.model_overrides_cli = dict(parse_assignment(s) for s in args.model_set)
    except ValueError as e:
        p.error(str(e))
    return args


def parse_assignment(text: str) -> tuple[str, object]:
    """'dec_layers=2' -> ('dec_layers', 2); values are Python literals, else strings."""
    if "=" not in text:
        raise ValueError(f"--set expects FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


# -----------------------------------------------------------------------------------------------
# Distributed set-up: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK
# -----------------------------------------------------------------------------------------------
def setup_distributed(device_flag: str | None) -> tuple[torch.device, int, int]:
    """Returns (device, rank, world_size); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag:
        device = torch.device(device_flag)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # TF32 matmuls/convs on Ampere+: ~free speed, accuracy unaffected for this model.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, rank, world_size


def all_reduce_mean(values: dict[str, float], world_size: int) -> dict[str, float]:
    """Averages logged scalars over processes so that rank 0 logs the global figure."""
    if world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: v / world_size for k, v in zip(keys, t.tolist())}


# -----------------------------------------------------------------------------------------------
# Data order: a resumable, sharded, infinite batch sampler
# -----------------------------------------------------------------------------------------------
class TrainBatchSampler:
    """Yields per-process batches of `(index, augmentation_seed)` pairs, forever.

    The global order is a fresh permutation every epoch, seeded by (seed, epoch); a global batch
    of `global_batch` items is cut into `world_size` contiguous chunks, one per process. Each
    item also carries its own augmentation seed, so an image's crop/flip/jitter depends only on
    its place in the global order: one process and two processes see exactly the same samples,
    and `--resume` (which restarts the sampler at `start_step`) continues exactly.
    """

    def __init__(self, dataset_size: int, global_batch: int, rank: int, world_size: int,
                 seed: int, start_step: int = 0):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        self.size, self.global_batch = dataset_size, global_batch
        self.rank, self.world_size, self.seed, self.start_step = rank, world_size, seed, start_step

    def __iter__(self):
        per_rank = self.global_batch // self.world_size
        position = self.start_step * self.global_batch  # items consumed before this step
        while True:
            epoch, offset = divmod(position, self.size)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            if offset + self.global_batch > self.size:  # a batch straddles two epochs
                nxt = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch + 1))
                order = torch.cat([order, nxt])
            batch = order[offset: offset + self.global_batch].tolist()
            mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
            yield [(batch[i], self.seed * 1_000_003 + position + i) for i in mine]
            position += self.global_batch


# -----------------------------------------------------------------------------------------------
# Optimiser and schedule (REFERENCE.md)
# -----------------------------------------------------------------------------------------------
NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
    """AdamW parameter groups as the official `build_optimizer`.

    - parameters under `backbone.` get lr x backbone_lr_mult;
    - norm-layer parameters, embeddings (`nn.Embedding`) and Swin's relative-position-bias tables
      get weight decay 0 (official WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0).
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES + (nn.Embedding,)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (id(p) in no_decay or "relative_position_bias_table" in name) else weight_decay
        group_lr = lr * backbone_lr_mult if name.startswith("backbone.") else lr
        groups.setdefault((group_lr, decay), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def lr_factor(step: int, recipe: Recipe) -> float:
    """Multiplier of the base lr at `step` (detectron2's WarmupPolyLR / WarmupMultiStepLR).

    poly:  (1 - step / max_iter) ** 0.9;  step: 0.1 ** (number of lr_steps passed).
    Linear warm-up over the first warmup_iters from warmup_factor to 1, multiplied in.
    """
    if recipe.schedule == "poly":
        factor = (1.0 - step / recipe.max_iter) ** 0.9
    else:
        factor = 0.1 ** sum(step >= s for s in recipe.lr_steps)
    if step < recipe.warmup_iters:
        alpha = step / recipe.warmup_iters
        factor *= recipe.warmup_factor * (1 - alpha) + alpha
    return factor


# -----------------------------------------------------------------------------------------------
# Checkpoints: atomic writes, exact resume
# -----------------------------------------------------------------------------------------------
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
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` atomically: a temp file in the same folder, fsync, then rename over `path`.

    A crash (even SIGKILL) at any moment leaves either the old file or the new one, never a torn one.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file in one line
        raise SystemExit(f"error: cannot read checkpoint {path}: {e}") from None


def load_pretrained(model: nn.Module, path: str, log) -> None:
    """`--weights`: a whole model or a backbone-only state dict (from convert.py or train.py).

    Tensors whose shapes differ from ours (a class head trained for another K) are re-initialised
    and reported; keys absent from the file keep their fresh initialisation and are reported.
    """
    ckpt = load_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise SystemExit(f"error: {path} holds no state dict")
    ours = model.state_dict()
    unknown = sorted(k for k in state if k not in ours)
    if len(unknown) == len(state):
        raise SystemExit(f"error: {path} matches none of this model's parameters "
                         f"(first keys: {list(state)[:3]}); convert it with convert.py first")
    reshaped = sorted(k for k in state if k in ours and state[k].shape != ours[k].shape)
    usable = {k: v for k, v in state.items() if k in ours and k not in reshaped}
    model.load_state_dict(usable, strict=False)
    missing = sorted(k for k in ours if k not in usable)
    log(f"loaded {len(usable)} tensors from {path}")
    if reshaped:
        log(f"re-initialised (shape differs, e.g. another class count): {', '.join(reshaped)}")
    if missing:
        log(f"{len(missing)} tensors not in {path} keep their initialisation (e.g. {missing[0]})")
    if unknown:
        log(f"ignored {len(unknown)} tensors of {path} this model lacks (e.g. {unknown[0]})")


# -----------------------------------------------------------------------------------------------
# One training step: forward (Figure 2), loss (Eq. 3.2d / 3.1b), backward
# -----------------------------------------------------------------------------------------------
def compute_loss(outputs: dict, batch: dict, criterion) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total loss and its unweighted terms (detached, for logging)."""
    if "sem_seg_logits" in outputs:
        # Eq. (3.1b): per-pixel cross-entropy for the PerPixelBaseline(+); PerPixelBaseline+ also
        # supervises every decoder layer's per-pixel logits, as the official head does.
        layers = [outputs] + outputs.get("aux_outputs", [])
        terms = {f"loss_ce{'' if i == 0 else f'_{i - 1}'}": losses.per_pixel_loss(o["sem_seg_logits"], batch["sem_seg"])
                 for i, o in enumerate(layers)}
        total = sum(terms.values())
    else:
        terms = criterion(outputs, batch["targets"])
        # Eq. (3.2d)-(3.2e), summed over the final and every auxiliary decoder layer (deep supervision).
        total = sum(terms[k] * criterion.weight_dict[k] for k in terms)
    return total, {k: v.detach() for k, v in terms.items()}


def move_batch(batch: dict, device: torch.device) -> dict:
    batch = dict(batch)
    batch["images"] = batch["images"].to(device, non_blocking=True)
    batch["sem_seg"] = batch["sem_seg"].to(device, non_blocking=True)
    batch["targets"] = [{**t, "labels": t["labels"].to(device), "masks": t["masks"].to(device)}
                        for t in batch["targets"]]
    return batch


# -----------------------------------------------------------------------------------------------
# The training loop
# -----------------------------------------------------------------------------------------------
class NonFiniteLoss(RuntimeError):
    pass


def build_datasets(args: argparse.Namespace, recipe: Recipe):
    """The training set (with the recipe's augmentation) and the validation set (test resize)."""
    kwargs: dict = {} if recipe.crop_size is None else {"crop_size": recipe.crop_size}
    if args.data == "folder":
        kwargs["ignore_index"] = args.ignore_index
    train_set = data.build_dataset(args.data, args.data_root, "train", train=True, **kwargs)
    val_set = data.build_dataset(args.data, args.data_root, "val", train=False, **kwargs)
    if args.val_images:
        val_set = torch.utils.data.Subset(val_set, range(min(args.val_images, len(val_set))))
    return train_set, val_set


def build_model_and_criterion(args: argparse.Namespace, recipe: Recipe, num_classes: int):
    """Figure 2's model (or a §4 baseline) and the loss of Eq. (3.2d) with its matcher."""
    overrides = dict(recipe.model_overrides)
    overrides.update({"maskformer": {}, "per_pixel": {"head": "per_pixel"},
                      "per_pixel_plus": {"head": "per_pixel_plus"}}[args.model])
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
    criterion = losses.MaskFormerLoss(
        num_classes, num_aux_layers=max(model.config.dec_layers - 1, 0),
        matcher=matcher.FixedMatcher() if args.matcher == "fixed" else matcher.HungarianMatcher())
    return model, criterion


def build_optimizer(model: nn.Module, recipe: Recipe):
    """AdamW over `param_groups` and the warm-up + poly (or step) schedule of `lr_factor`."""
    optimizer = torch.optim.AdamW(param_groups(model, recipe.lr, recipe.weight_decay, recipe.backbone_lr_mult),
                                  lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, recipe))
    return optimizer, scheduler


def train_step(train_model: nn.Module, batches, criterion, optimizer, scaler, accum: int,
               device: torch.device, amp_dtype, clip_grad_norm: float) -> dict[str, float]:
    """One optimiser step = `accum` forward/backward passes, gradient clipping, AdamW.

    Returns the loss terms averaged over the micro-steps, plus the pre-clipping gradient norm;
    all read back from the device in one transfer (one host-device sync per step).
    """
    sums: dict[str, torch.Tensor] = {}
    images = 0
    for micro in range(accum):
        batch = move_batch(next(batches), device)
        images += batch["images"].shape[0]
        last = micro == accum - 1
        # Under DDP, all-reduce gradients only on the last micro-step.
        sync = train_model.no_sync() if isinstance(train_model, DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = train_model(batch["images"])
            loss, terms = compute_loss(outputs, batch, criterion)
            scaler.scale(loss / accum).backward()
        for k, v in {"loss": loss.detach(), **terms}.items():
            sums[k] = sums.get(k, 0.0) + v.float() / accum
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Whole-model gradient clipping at L2 norm 0.01 (official CLIP_GRADIENTS "full_model").
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm if clip_grad_norm > 0 else math.inf)
    stats = dict(zip([*sums, "grad_norm"], torch.stack([*sums.values(), grad_norm.float()]).tolist()))
    if math.isfinite(stats["loss"]):  # a non-finite step is never applied
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    stats["images"] = images
    return stats


def train(args: argparse.Namespace) -> dict:
    """Runs training; returns the final validation metrics (rank 0) and writes everything to --output."""
    device, rank, world_size = setup_distributed(args.device)
    is_main = rank == 0
    out = Path(args.output)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = resolve_recipe(args)

    def log(msg: str) -> None:
        if is_main:
            print(msg, flush=True)

    # ---- seeds: the same on every process (identical initial weights; DDP broadcasts anyway)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    train_set, val_set = build_datasets(args, recipe)
    # ---- batch arithmetic: global batch = processes x per-process batch x accumulation steps
    per_device = args.per_device_batch or (2 if device.type == "cuda" else recipe.batch_size // world_size)
    accum = args.accum_steps or max(1, recipe.batch_size // (per_device * world_size))
    if per_device * world_size * accum != recipe.batch_size:
        raise SystemExit(f"error: batch size {recipe.batch_size} != {world_size} processes x "
                         f"{per_device} per process x {accum} accumulation steps")

    model, criterion = build_model_and_criterion(args, recipe, train_set.num_classes)
    if args.weights:
        load_pretrained(model, args.weights, log)
    model.to(device)
    optimizer, scheduler = build_optimizer(model, recipe)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    # A GradScaler only for fp16 (bf16 has fp32's exponent range and needs none).
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # ---- resume: everything needed to continue bit for bit
    start_step, best_metric, history = 0, -math.inf, []
    if args.resume:
        ckpt = load_checkpoint(out / "last.pt")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_states(ckpt["rng"])
        start_step, best_metric = ckpt["step"], ckpt["best_metric"]
        history = [r for r in read_jsonl(out / "metrics.jsonl") if r["step"] <= start_step]
        log(f"resumed from {out / 'last.pt'} at step {start_step}")
    if is_main:
        (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))

    train_model: nn.Module = model
    if world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)

    sampler = TrainBatchSampler(len(train_set), per_device * world_size, rank, world_size, args.seed,
                                start_step=start_step * accum)
    loader = DataLoader(SeededItems(train_set), batch_sampler=sampler, collate_fn=data.collate,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)
    val_loader = DataLoader(val_set, batch_size=1 if args.data != "shapes" else 8, collate_fn=data.collate,
                            num_workers=args.workers)
    batches = iter(loader)

    def checkpoint_state(step: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "rng": rng_states(), "best_metric": best_metric, "config": asdict(model.config),
                "recipe": asdict(recipe), "class_names": list(train_set.class_names),
                "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}}

    def append_log(record: dict) -> None:
        history.append(record)
        if is_main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    log(f"training {recipe.config} ({args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"params) on {args.data}: {recipe.max_iter} iterations, batch {recipe.batch_size} = {world_size} "
        f"process(es) x {per_device} x {accum} accumulation, lr {recipe.lr}, device {device}")
    progress = make_progress(start_step, recipe.max_iter, disable=not is_main or args.no_progress)
    metric_name = "PQ" if recipe.task == "panoptic" else "mIoU"
    last_metrics: dict = {}
    window_start, window_images = time.perf_counter(), 0
    model.train()
    for step in range(start_step, recipe.max_iter):
        stats = train_step(train_model, batches, criterion, optimizer, scaler, accum, device, amp_dtype,
                           recipe.clip_grad_norm)
        if not math.isfinite(stats["loss"]):
            raise NonFiniteLoss(
                f"error: the loss became {stats['loss']} at step {step} (terms: "
                f"{ {k: v for k, v in stats.items() if k.startswith('loss_')} }); stopping. The last good "
                f"checkpoint is {out / 'last.pt'}; try a lower --lr, --amp bf16 instead of fp16, or --clip-grad.")
        scheduler.step()
        done = step + 1
        window_images += stats.pop("images") * world_size

        # -- logging (global averages across processes)
        if done % args.log_period == 0 or done == recipe.max_iter:
            elapsed = time.perf_counter() - window_start
            record = {"step": done, **all_reduce_mean(stats, world_size), "lr": optimizer.param_groups[0]["lr"],
                      "img_per_s": round(window_images / max(elapsed, 1e-9), 2)}
            if device.type == "cuda":
                record["max_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            window_start, window_images = time.perf_counter(), 0
            append_log(record)
            progress.set_postfix({k: record[k] for k in ("loss", "lr", "img_per_s", "max_mem_mb") if k in record})
        progress.update(1)

        # -- periodic validation (mIoU of Eq. 3.4b, or PQ) and checkpoints
        if done % recipe.eval_period == 0 or done == recipe.max_iter:
            last_metrics = validate(model, val_loader, recipe.task, device, amp_dtype)
            append_log({"step": done, "val_" + metric_name: last_metrics[metric_name]})
            log(f"step {done}: validation {metric_name} = {100 * last_metrics[metric_name]:.2f}")
            if is_main and last_metrics[metric_name] > best_metric:
                best_metric = last_metrics[metric_name]
                save_checkpoint(out / "best.pt", checkpoint_state(done))
        if is_main and (done % recipe.checkpoint_period == 0 or done == recipe.max_iter):
            save_checkpoint(out / "last.pt", checkpoint_state(done))
    progress.close()

    if is_main:
        draw_loss_curve(history, out / "loss_curve.png")
        save_prediction_overlays(model, val_set, train_set, device, out)
        (out / "final_metrics.json").write_text(json.dumps(last_metrics, indent=1))
        log(f"done: {metric_name} {100 * last_metrics.get(metric_name, float('nan')):.2f}; outputs in {out}")
    if world_size > 1:
        dist.destroy_process_group()
    return last_metrics


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class SeededItems(torch.utils.data.Dataset):
    """Adapts a dataset to the `(index, seed)` pairs of `TrainBatchSampler`: the item's
    augmentation draws from `np.random.default_rng(seed)`, independent of worker and process."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index_and_seed: tuple[int, int]) -> dict:
        index, seed = index_and_seed
        return self.dataset.get(index, rng=np.random.default_rng(seed))


def validate(model: nn.Module, loader: DataLoader, task: str, device: torch.device, amp_dtype) -> dict:
    """Validation on the whole split, the same figure as `infer.py --eval` (every process runs it:
    simple, and small next to training). Leaves the model in training mode."""
    metrics = infer.evaluate(model, loader, task=task, device=device, amp_dtype=amp_dtype, progress=False)
    model.train()
    return metrics


def make_progress(start: int, total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=disable, dynamic_ncols=True, desc="train")


# -----------------------------------------------------------------------------------------------
# End-of-run figures, drawn with PIL (matplotlib is not a runtime dependency)
# -----------------------------------------------------------------------------------------------
def draw_loss_curve(history: list[dict], path: Path, size: tuple[int, int] = (640, 360)) -> None:
    """Total training loss against step (log-scale y) with the validation metric marked."""
    from PIL import Image, ImageDraw

    points = [(h["step"], h["loss"]) for h in history if "loss" in h and h["loss"] > 0]
    if len(points) < 2:
        return
    W, H, pad = size[0], size[1], 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    x0, x1 = points[0][0], points[-1][0]
    ys = [math.log10(v) for _, v in points]
    y0, y1 = min(ys), max(ys) + 1e-9

    def xy(step: float, logv: float) -> tuple[float, float]:
        return (pad + (W - 2 * pad) * (step - x0) / max(x1 - x0, 1), H - pad - (H - 2 * pad) * (logv - y0) / (y1 - y0))

    draw.rectangle([pad, pad, W - pad, H - pad], outline="black")
    draw.line([xy(s, y) for (s, _), y in zip(points, ys)], fill=(31, 119, 180), width=2)
    draw.text((pad, 10), f"training loss (log scale): {points[0][1]:.3g} -> {points[-1][1]:.3g}", fill="black")
    draw.text((pad, H - pad + 8), f"step {x0}", fill="black")
    draw.text((W - pad - 60, H - pad + 8), f"step {x1}", fill="black")
    evals = [h for h in history if any(k.startswith("val_") for k in h)]
    if evals:
        last = evals[-1]
        name = next(k for k in last if k.startswith("val_"))
        draw.text((W - 260, 10), f"{name[4:]} at step {last['step']}: {100 * last[name]:.1f}", fill=(200, 0, 0))
    img.save(path)


def save_prediction_overlays(model, val_set, train_set, device, out: Path, count: int = 4) -> None:
    """A few validation images with the predicted semantic map drawn over them."""
    model.eval()
    for i in range(min(count, len(val_set))):
        item = val_set[i]
        pred = infer.predict_semantic(model, item["image"][None].to(device))[0].cpu()
        overlay = infer.draw_overlay(data.denormalize(item["image"]), pred.numpy(),
                                     list(train_set.class_names), train_set.palette)
        overlay.save(out / f"prediction_{i}.png")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    except NonFiniteLoss as e:
        raise SystemExit(str(e)) from None
    except data.DatasetError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
