"""The optimiser and learning-rate schedule of the paper's recipe (§4 "Implementation details").

Paper: §4 trains with AdamW and the poly learning-rate schedule (power 0.9), with a backbone
learning-rate multiplier of 0.1 for ResNets and 1.0 for Swin, and linear warm-up for Swin;
docs/recipe.md has every number and the official config it comes from. train.py builds both with
`build_optimizer` from its TrainingRecipe.

Reading order: `build_optimizer` (AdamW + LambdaLR) -> `param_groups` (backbone lr multiplier; no
weight decay on norms, embeddings and relative-position-bias tables) -> `lr_factor` (warm-up, then
poly or step).

How this differs from the official code: the same groups and schedule (detectron2's
`build_optimizer`, WarmupPolyLR / WarmupMultiStepLR); AdamW runs fused where PyTorch has a fused
kernel, the same update up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, recipe):
    """AdamW over `param_groups` and the warm-up + poly (or step) schedule of `lr_factor`, for a
    train.TrainingRecipe.

    The fused implementation where PyTorch has one (CPU, CUDA): one kernel updates every parameter
    instead of a loop of small ops per tensor; the same AdamW update up to float rounding (its speed:
    docs/speed.md).
    """
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, recipe.lr, recipe.weight_decay, recipe.backbone_lr_mult),
                                  lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True if fused else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, recipe))
    return optimizer, scheduler


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


def lr_factor(step: int, recipe) -> float:
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
