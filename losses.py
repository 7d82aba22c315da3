"""Training losses: mask classification, Eq. (3.2d)–(3.2g), and the per-pixel baseline, Eq. (3.1b).

Paper: §3.2 (the loss L_mask-cls of Eq. (3.2d), the paper's Eq. (1), with the binary mask loss
of Eq. (3.2e)–(3.2g)) and §3.1 (per-pixel cross-entropy, Eq. (3.1b), for PerPixelBaseline(+)).

Follow one image from the dataset to the loss value:

1. data.py gives the image's ground truth as a set of segments, Eq. (3.2b):
   `labels` long (n,) with classes in 0..K−1 and `masks` bool (n, H, W), one binary mask per
   segment (for semantic data: one segment per class present). `collate` pads the masks to the
   batch's (Hp, Wp) with False.
2. The model predicts N segments, Eq. (3.2a): `pred_logits` (N, K+1), the last column being
   "no object" ∅, and `pred_masks` (N, Hp/4, Wp/4) mask logits.
3. matcher.py finds the assignment σ (prediction σ(j) ↔ segment j) minimising Eq. (3.2c); the
   GT masks are nearest-resized down to the prediction size for that cost only.
4. `loss_labels`: every query gets a target class: c_j if it was matched to segment j, ∅
   otherwise. Cross-entropy over K+1 classes, with ∅ weighted by no_object_weight = 0.1: the
   first term of Eq. (3.2d).
5. `loss_masks`: each matched predicted mask is upsampled (bilinear) to the targets' padded size
   (Hp, Wp) and compared with its GT mask by the focal loss, Eq. (3.2f), and the dice loss,
   Eq. (3.2g): the second term of Eq. (3.2d), split as in Eq. (3.2e). Unmatched queries get no
   mask loss (the indicator 1{c ≠ ∅}).
6. The terms come back unweighted ("loss_ce", "loss_focal", "loss_dice"); `weight_dict` holds
   λ = 1, 20, 1 and the training loop sums Σ_k weight_dict[k] · losses[k]. With deep
   supervision, each decoder layer's output ("aux_outputs") is matched anew and gets the same
   three terms, keys suffixed "_0" (earliest layer) … "_4".

Reading order: `MaskFormerLoss.forward` → `loss_labels` → `loss_masks` → `sigmoid_focal_loss`,
`dice_loss`; then `PerPixelLoss` (Eq. (3.1b)) → `per_pixel_cross_entropy` (`per_pixel_loss`: the same
with its label check). Both criteria are called the
same way by train.py: `terms = criterion(outputs, batch)`, then Σ_k weight_dict[k] · terms[k].

How this differs from the paper's formulas, following the official code (SetCriterion in
`mask_former/modeling/criterion.py`, which follows DETR):
- Eq. (3.2d) is written as a sum over segments. The code normalises instead: the cross-entropy
  is a *weighted mean* over all B·N queries, Σ w_c·(−log p) / Σ w_c with w = 1 for real classes
  and 0.1 for ∅ (under DDP or accumulation Σ w_c is that of the global batch, like num_masks: the
  official code averages the processes' own weighted means instead, so its result depends on how
  the batch is split; here 2 processes x 8 images give the numbers of 1 process x 16); the focal
  and dice terms are summed over matched masks and divided by
  num_masks = the number of GT masks in the batch, averaged over processes, at least 1 (with
  gradient accumulation: of the whole accumulated batch, divided by the accumulation steps).
- Focal loss per mask is a mean over pixels (Eq. (3.2f) says so; the dice of Eq. (3.2g) sums).
- Ignore and padding pixels are background (0) in every GT mask, so the mask losses push
  predictions towards 0 there, exactly as the official code does (it never uses its `valid`
  map; official issue #57).
- Per-pixel baselines: Eq. (3.1b) sums over pixels; the official code (detectron2's semantic
  segmentation head) averages over labelled pixels.
- Losses are computed in float32 even when the model runs in bf16/fp16 (autocast).

"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from machinery.distributed import sum_over_processes, world_size
from matcher import HungarianMatcher, Indices, check_targets


def sigmoid_focal_loss(mask_logits: Tensor, target_masks: Tensor, num_masks: float | Tensor,
                       alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss, Eq. (3.2f): per mask the mean over pixels, then summed over masks / num_masks.

    mask_logits (M, P) logits; target_masks (M, P) in {0, 1}.
    """
    positive = target_masks > 0                                            # (M, P): GT pixel is 1
    # x_t, the logit of the GT label: x where the GT pixel is 1, −x where it is 0. Then
    # p_t = σ(x_t) (p or 1 − p), 1 − p_t = σ(−x_t) and −log p_t = softplus(−x_t), all stable.
    neg_x_t = torch.where(positive, -mask_logits, mask_logits)             # −x_t
    alpha_t = torch.where(positive, alpha, 1 - alpha).to(mask_logits.dtype)  # α_t: α or 1 − α
    # Eq. (3.2f): −α_t (1 − p_t)^γ log p_t at every pixel. Written with few (M, P) temporaries:
    # autograd keeps each for the backward pass, and at (M, 512·512) per decoder layer they
    # dominate the memory and time of the loss (tooling/benchmark.py).
    focal = alpha_t * neg_x_t.sigmoid() ** gamma * F.softplus(neg_x_t)     # (M, P)
    per_mask = focal.mean(1)                                               # (M,)
    return per_mask.sum() / num_masks


def dice_loss(mask_logits: Tensor, target_masks: Tensor, num_masks: float | Tensor) -> Tensor:
    """Dice loss, Eq. (3.2g), on the sigmoid probabilities, summed over masks / num_masks.

    Same arguments as `sigmoid_focal_loss`.
    """
    prob = mask_logits.sigmoid()                                           # (M, P)
    intersection = (prob * target_masks).sum(1)                            # (M,)
    # Eq. (3.2g): L_dice = 1 − (2 Σ m·m_gt + 1) / (Σ m + Σ m_gt + 1)
    per_mask = 1 - (2 * intersection + 1) / (prob.sum(1) + target_masks.sum(1) + 1)
    return per_mask.sum() / num_masks


def upsample_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """F.interpolate(x, size, mode="bilinear", align_corners=False) for x (..., h, w), as two matmuls.

    Bilinear interpolation is separable: each output row mixes two input rows with the weights of
    1-D linear interpolation, and likewise for columns, so up = A_hᵀ · x · A_w with A_h (h, H) and
    A_w (w, W) the 1-D interpolation matrices (got by interpolating the identity). Same numbers up to
    float rounding; its backward is two matmuls instead of F.interpolate's scatter, which matters
    because the loss upsamples every decoder layer's masks (timings: docs/speed.md).
    """
    h, w = x.shape[-2:]
    rows, cols = interpolation_matrix(h, size[0], x), interpolation_matrix(w, size[1], x)  # (h, H), (w, W)
    return rows.T @ x @ cols                                               # (..., H, W)


def interpolation_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """(size_in, size_out): column j holds the weights of output j in 1-D linear interpolation
    (align_corners=False), i.e. the identity interpolated; dtype and device of `like`."""
    identity = torch.eye(size_in, dtype=like.dtype, device=like.device)[None]  # (1, size_in, size_in)
    return F.interpolate(identity, size=size_out, mode="linear", align_corners=False)[0]


def loss_normalisers(targets: list[dict], num_queries: int, no_object_weight: float,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """The two normalisers of Eq. (3.2d) for `targets`, averaged over processes with one all-reduce:
    num_masks (the GT masks, at least 1) and class_weight_sum (the cross-entropy's Σ over the B·N
    queries of their class weight: 1 for a query matched to a segment, no_object_weight for ∅). The
    mean over processes makes each process's loss its share of the global weighted mean (train.py
    computes them once per step for all its micro-batches)."""
    num_masks = sum(len(t["labels"]) for t in targets)
    # every image's min(segments, N) segments are matched (Eq. (3.2c) is a full assignment); the rest are ∅
    matched = sum(min(len(t["labels"]), num_queries) for t in targets)
    class_weight_sum = matched + (len(targets) * num_queries - matched) * no_object_weight
    # the means over processes: their sums / their number
    local = torch.tensor([float(num_masks), float(class_weight_sum)], device=device)
    num_masks, class_weight_sum = sum_over_processes(local) / world_size()
    return num_masks.clamp(min=1), class_weight_sum


class MaskFormerLoss(nn.Module):
    """L_mask-cls of Eq. (3.2d) (the paper's Eq. (1)) for the final and every auxiliary output.

    num_classes: K (without ∅). matcher: HungarianMatcher with the loss weights as its costs
    (the official setting) when None; FixedMatcher() for the fixed-matching ablation.
    class_weight, focal_weight, dice_weight: λ of the CE, focal and dice terms (1, 20, 1),
    only used in `weight_dict` and the default matcher. num_aux_layers: how many auxiliary
    outputs `weight_dict` covers (decoder layers − 1 = 5 in the paper).

    forward(outputs, batch) -> dict of unweighted scalar terms, reading batch["targets"] (one dict
    {"labels", "masks"} per image, Eq. (3.2b)); the total is sum(weight_dict[k] * v for k, v in
    terms.items()).
    """

    def __init__(self, num_classes: int, matcher: nn.Module | None = None, no_object_weight: float = 0.1,
                 class_weight: float = 1.0, focal_weight: float = 20.0, dice_weight: float = 1.0,
                 num_aux_layers: int = 5):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher(
            cost_class=class_weight, cost_focal=focal_weight, cost_dice=dice_weight)
        self.num_aux_layers = num_aux_layers
        # per-class CE weights: 1 for the K classes, no_object_weight for ∅ (official `empty_weight`)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)
        # ∅'s weight as a host number (the buffer's float32 value): the CE normaliser reads it every step,
        # and reading it from the buffer on a GPU would be a host-device sync
        self.no_object_weight = float(empty_weight[-1])

        layer_weights = {"loss_ce": class_weight, "loss_focal": focal_weight, "loss_dice": dice_weight}
        self.weight_dict = dict(layer_weights)
        for i in range(num_aux_layers):
            self.weight_dict.update({f"{key}_{i}": weight for key, weight in layer_weights.items()})

    def forward(self, outputs: dict, batch: dict) -> dict[str, Tensor]:
        targets = batch["targets"]
        B, N, num_classes_plus_one = outputs["pred_logits"].shape
        if num_classes_plus_one != self.num_classes + 1:
            raise ValueError(f"MaskFormerLoss: pred_logits has {num_classes_plus_one} classes per query, "
                             f"expected num_classes + 1 = {self.num_classes + 1} (the last one is ∅)")
        aux_outputs = outputs.get("aux_outputs", [])
        if len(aux_outputs) > self.num_aux_layers:
            raise ValueError(f"MaskFormerLoss: outputs have {len(aux_outputs)} aux_outputs but weight_dict "
                             f"covers {self.num_aux_layers}; pass num_aux_layers=dec_layers - 1")
        # checked once here; the matcher's `match` (once per decoder layer) does not check again
        check_targets(targets, B, self.num_classes, "MaskFormerLoss")

        # one normaliser for all layers: the number of GT masks, Eq. (3.2d) divided by it (train.py passes
        # batch["num_masks"] under gradient accumulation: that of the whole accumulated batch, per micro-batch)
        # and the cross-entropy's normaliser, likewise global (batch["class_weight_sum"] under accumulation)
        if "num_masks" in batch:
            num_masks, class_weight_sum = batch["num_masks"], batch["class_weight_sum"]
        else:
            num_masks, class_weight_sum = loss_normalisers(targets, N, self.no_object_weight,
                                                           outputs["pred_logits"].device)
        losses = self.layer_losses(outputs, targets, num_masks, class_weight_sum)
        # deep supervision: every decoder layer is matched anew and gets the same terms
        for i, layer_outputs in enumerate(aux_outputs):
            layer_losses = self.layer_losses(layer_outputs, targets, num_masks, class_weight_sum)
            losses.update({f"{key}_{i}": value for key, value in layer_losses.items()})
        return losses

    def layer_losses(self, outputs: dict, targets: list[dict], num_masks: Tensor,
                     class_weight_sum: Tensor) -> dict[str, Tensor]:
        """The three terms of Eq. (3.2d)/(3.2e) for one decoder layer's predictions."""
        indices = self.matcher.match(outputs, targets)
        return {**self.loss_labels(outputs, targets, indices, class_weight_sum),
                **self.loss_masks(outputs, targets, indices, num_masks)}

    def loss_labels(self, outputs: dict, targets: list[dict], indices: Indices,
                    class_weight_sum: Tensor) -> dict[str, Tensor]:
        """First term of Eq. (3.2d): −log p_σ(j)(c_j) for matched queries, −log p(∅) for the rest.
        class_weight_sum: the normaliser (`loss_normalisers`)."""
        pred_logits = outputs["pred_logits"].float()
        B, N, _ = pred_logits.shape
        device = pred_logits.device
        batch_idx, query_idx = self.matched_queries(indices, device)
        # target class of every query: ∅ (index K) unless the query was matched to a segment
        target_classes = torch.full((B, N), self.num_classes, dtype=torch.long, device=device)  # (B, N)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(device)
        # weighted mean over the B·N queries of −log p(target), ∅ weighted by no_object_weight
        loss_ce = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, weight=self.empty_weight,
                                  reduction="sum") / class_weight_sum
        return {"loss_ce": loss_ce}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: Indices,
                   num_masks: Tensor) -> dict[str, Tensor]:
        """Second term of Eq. (3.2d), L_mask of Eq. (3.2e) split into its focal and dice parts."""
        device = outputs["pred_masks"].device
        batch_idx, query_idx = self.matched_queries(indices, device)
        pred_masks = outputs["pred_masks"][batch_idx, query_idx].float()   # (M, h, w), M matched masks
        target_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)])
        target_masks = target_masks.to(device=device, dtype=pred_masks.dtype)  # (M, H, W)
        M, H, W = target_masks.shape
        # predictions go *up* to the targets' padded size (the matcher went the other way)
        pred_masks = upsample_bilinear(pred_masks, (H, W)).flatten(1)      # (M, H*W)
        target_masks = target_masks.flatten(1)                             # (M, H*W)
        return {"loss_focal": sigmoid_focal_loss(pred_masks, target_masks, num_masks),
                "loss_dice": dice_loss(pred_masks, target_masks, num_masks)}

    @staticmethod
    def matched_queries(indices: Indices, device: torch.device) -> tuple[Tensor, Tensor]:
        """(batch_idx, query_idx) of all matched queries, image by image: index (B, N, ...) tensors."""
        batch_idx = torch.cat([torch.full_like(query, b) for b, (query, _) in enumerate(indices)])
        query_idx = torch.cat([query for query, _ in indices])
        return batch_idx.to(device), query_idx.to(device)


def per_pixel_loss(sem_seg_logits: Tensor, sem_seg: Tensor, ignore_index: int = 255) -> Tensor:
    """Eq. (3.1b) for PerPixelBaseline(+): per-pixel cross-entropy over K classes, labels checked first.

    sem_seg_logits (B, K, h, w) are upsampled (bilinear) to the labels' (H, W); sem_seg (B, H, W)
    long with values in 0..K−1 or ignore_index. The mean over labelled pixels (official; the
    paper writes a sum); 0, still attached to the graph, when every pixel is ignored.
    """
    check_sem_seg(sem_seg, *sem_seg_logits.shape[:2], ignore_index, "per_pixel_loss")
    return per_pixel_cross_entropy(sem_seg_logits, sem_seg, ignore_index)


def check_sem_seg(sem_seg: Tensor, num_images: int, num_classes: int, ignore_index: int, where: str) -> None:
    """A clear error unless sem_seg is a long (B, H, W) map of 0..K−1 or ignore_index (one host read)."""
    if sem_seg.dim() != 3 or sem_seg.shape[0] != num_images or sem_seg.dtype != torch.long:
        raise ValueError(f"{where}: sem_seg must be a long (B={num_images}, H, W) tensor, "
                         f"got {sem_seg.dtype} of shape {tuple(sem_seg.shape)}")
    labelled = sem_seg != ignore_index                                     # (B, H, W)
    bad = labelled & ((sem_seg < 0) | (sem_seg >= num_classes))
    if bad.any():
        raise ValueError(f"{where}: sem_seg values must be in 0..{num_classes - 1} or {ignore_index} (ignore), "
                         f"got {sem_seg[bad].unique().tolist()[:10]}")


def per_pixel_cross_entropy(sem_seg_logits: Tensor, sem_seg: Tensor, ignore_index: int) -> Tensor:
    """Eq. (3.1b) for labels already checked (`check_sem_seg`); see `per_pixel_loss`."""
    H, W = sem_seg.shape[-2:]
    logits = upsample_bilinear(sem_seg_logits.float(), (H, W))            # (B, K, H, W)
    # Eq. (3.1b): Σ_i −log p_i(y_i) over labelled pixels, then / their number
    total = F.cross_entropy(logits, sem_seg, ignore_index=ignore_index, reduction="sum")
    return total / (sem_seg != ignore_index).sum().clamp(min=1)


class PerPixelLoss(nn.Module):
    """Eq. (3.1b) for PerPixelBaseline(+), with the same interface as `MaskFormerLoss`.

    forward(outputs, batch) reads outputs["sem_seg_logits"] (B, K, h, w) and batch["sem_seg"]
    (B, H, W) and returns {"loss_ce": ...}; with deep supervision (PerPixelBaseline+, as the
    official head) also one term per auxiliary output, "loss_ce_0" (earliest layer) onwards.
    weight_dict gives every term weight 1 (the official per-pixel head has no other weights).
    """

    def __init__(self, num_aux_layers: int = 0, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index
        self.weight_dict = {"loss_ce": 1.0, **{f"loss_ce_{i}": 1.0 for i in range(num_aux_layers)}}

    def forward(self, outputs: dict, batch: dict) -> dict[str, Tensor]:
        sem_seg, logits = batch["sem_seg"], outputs["sem_seg_logits"]
        # checked once here, not once per decoder layer (each check is a host read: a GPU sync)
        check_sem_seg(sem_seg, *logits.shape[:2], self.ignore_index, "PerPixelLoss")
        terms = {"loss_ce": per_pixel_cross_entropy(logits, sem_seg, self.ignore_index)}
        # deep supervision: every decoder layer's per-pixel logits get the same loss
        for i, layer_outputs in enumerate(outputs.get("aux_outputs", [])):
            terms[f"loss_ce_{i}"] = per_pixel_cross_entropy(layer_outputs["sem_seg_logits"], sem_seg,
                                                            self.ignore_index)
        return terms
