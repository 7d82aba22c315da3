"""Bipartite matching of predicted segments to ground-truth segments: Eq. (3.2c).

Paper: §3.2 "Mask classification", the matching σ that Eq. (3.2d) (the paper's Eq. (1)) needs.

Why match at all? MaskFormer is a *set predictor*: the transformer decoder outputs N
(prediction, mask) pairs in parallel and nothing ties query 7 to "sky" or to "the second
person". The ground truth is another set, of N_gt segments, in no particular order. A loss that
compared prediction i with segment i would depend on an arbitrary ordering, so the loss must be
invariant to permutations of the predictions. DETR's answer, used here: find the one-to-one
assignment σ of predictions to segments with the lowest total cost (the Hungarian algorithm,
`scipy.optimize.linear_sum_assignment`) and supervise each prediction with the segment it got;
predictions left over are supervised as "no object" ∅ by the loss.

The cost of giving segment j (class c_j, mask m_j) to prediction i is Eq. (3.2c):

    C(i, j) = −λ_cls p_i(c_j) + λ_focal L_focal(m_i, m_j) + λ_dice L_dice(m_i, m_j)

with λ_cls = 1, λ_focal = 20, λ_dice = 1 as in the official config. Why −p_i(c_j) and not the
−log p_i(c_j) of the loss? (DETR, §3.1): a probability lies in [0, 1], on the same scale as the
focal and dice terms, while a log-probability is unbounded (−log p → ∞ as p → 0), so one
confidently wrong class would swamp the mask terms and the assignment would ignore mask
quality. Constants (the "1 −" of 1 − p) do not change the argmin and are dropped.

More ground-truth segments than queries (N_gt > N): `linear_sum_assignment` on the rectangular
N × N_gt matrix matches min(N, N_gt) pairs, so every query gets a segment and the extra segments
are not matched and not supervised, exactly as in the official code (where N = 100 makes this
rare). The loss still counts them in its normaliser num_masks, as the official code does.

Reading order: `HungarianMatcher.forward` → `match` → `cost_matrix` → `focal_cost`,
`dice_cost`; then `FixedMatcher` (the paper's "fixed matching" ablation, §4).

How this file differs from the official `mask_former/modeling/matcher.py`: it computes the same
costs (focal cost ÷ H·W of the prediction, dice with +1 smoothing, GT masks nearest-resized to
the prediction's stride-4 size) in float32, and it raises a clear error on NaN/inf costs
(a diverged model) instead of letting scipy fail cryptically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

# One (query_idx, target_idx) pair of int64 CPU tensors per image, sorted by query index.
Indices = list[tuple[Tensor, Tensor]]


def focal_cost(mask_logits: Tensor, target_masks: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss of Eq. (3.2f) between *every* predicted mask and *every* target mask.

    mask_logits (N, P) logits, target_masks (M, P) in {0, 1}. Returns (N, M): the mean over the
    P pixels of the per-pixel focal loss.
    """
    prob = mask_logits.sigmoid()                                           # (N, P)
    # the per-pixel focal loss if the target pixel is 1: −α (1 − p)^γ log p   (softplus(−x) = −log σ(x))
    focal_pos = alpha * (1 - prob) ** gamma * F.softplus(-mask_logits)     # (N, P)
    # ... and if it is 0: −(1 − α) p^γ log(1 − p)                          (softplus(x) = −log(1 − σ(x)))
    focal_neg = (1 - alpha) * prob ** gamma * F.softplus(mask_logits)      # (N, P)
    num_pixels = mask_logits.shape[1]
    # Eq. (3.2f) for all pairs at once: Σ_p pos[i,p]·t[j,p] + neg[i,p]·(1 − t[j,p]), two matmuls
    cost = focal_pos @ target_masks.T + focal_neg @ (1 - target_masks).T  # (N, M)
    return cost / num_pixels


def dice_cost(mask_logits: Tensor, target_masks: Tensor) -> Tensor:
    """Dice loss of Eq. (3.2g) between every predicted mask and every target mask: (N, M).

    Same arguments as `focal_cost`; the masks' probabilities are sigmoid(logits).
    """
    prob = mask_logits.sigmoid()                                           # (N, P)
    intersection = prob @ target_masks.T                                   # (N, M)
    sizes = prob.sum(-1)[:, None] + target_masks.sum(-1)[None, :]          # (N, M)
    # Eq. (3.2g): L_dice = 1 − (2 Σ m·m_gt + 1) / (Σ m + Σ m_gt + 1)
    return 1 - (2 * intersection + 1) / (sizes + 1)


def check_targets(targets: list[dict], num_images: int, num_classes: int, where: str) -> None:
    """Clear errors for targets that are not one dict {"labels": long (n,), "masks": (n, H, W)}
    per image, with labels in 0..K−1 (the set z_gt of Eq. (3.2b), as data.py builds it)."""
    if len(targets) != num_images:
        raise ValueError(f"{where}: got {len(targets)} target dicts for a batch of {num_images} images")
    for b, target in enumerate(targets):
        labels, masks = target["labels"], target["masks"]
        if labels.dtype != torch.long or labels.dim() != 1:
            raise ValueError(f"{where}: targets[{b}]['labels'] must be a 1-D long tensor, "
                             f"got {labels.dtype} of shape {tuple(labels.shape)}")
        if masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
            raise ValueError(f"{where}: targets[{b}]['masks'] must have shape (n, H, W) with n = "
                             f"len(labels) = {labels.shape[0]}, got {tuple(masks.shape)}")
    all_labels = torch.cat([t["labels"] for t in targets])
    if all_labels.numel() == 0:
        return
    lowest, highest = torch.stack(torch.aminmax(all_labels)).tolist()  # one device→host copy
    if lowest < 0 or highest >= num_classes:
        raise ValueError(f"{where}: target labels must lie in 0..{num_classes - 1} (the model has "
                         f"{num_classes} classes + no-object), got values in {lowest}..{highest}")


class HungarianMatcher(nn.Module):
    """Minimum-cost one-to-one assignment of the N predictions to each image's segments, Eq. (3.2c).

    outputs: {"pred_logits": (B, N, K+1), "pred_masks": (B, N, h, w) logits, ...}
    targets: list of B dicts {"labels": long (n,), "masks": bool/float (n, H, W)}
    Returns, per image, (query_idx, target_idx): int64 CPU tensors of length min(N, n), sorted by
    query index: query query_idx[k] is assigned segment target_idx[k].
    cost_class, cost_focal, cost_dice: the λ of Eq. (3.2c) (official 1, 20, 1, equal to the loss
    weights). `forward` checks the targets, then calls `match`; MaskFormerLoss checks them once
    and calls `match` for every decoder layer.
    """

    def __init__(self, cost_class: float = 1.0, cost_focal: float = 20.0, cost_dice: float = 1.0):
        super().__init__()
        if cost_class == 0 and cost_focal == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_focal and cost_dice cannot all be 0")
        self.cost_class = cost_class
        self.cost_focal = cost_focal
        self.cost_dice = cost_dice

    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        B, N, num_classes_plus_one = outputs["pred_logits"].shape
        check_targets(targets, B, num_classes_plus_one - 1, "HungarianMatcher")
        return self.match(outputs, targets)

    @torch.no_grad()
    def match(self, outputs: dict, targets: list[dict]) -> Indices:
        """σ of Eq. (3.2c) per image, for targets already checked."""
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        B, N, _ = pred_logits.shape
        # C of Eq. (3.2c) for every image that has segments, computed where the outputs live ...
        with_segments = [b for b in range(B) if len(targets[b]["labels"]) > 0]
        device_costs = [self.cost_matrix(pred_logits[b], pred_masks[b], targets[b]) for b in with_segments]
        # ... then one device→host copy for the whole batch (each copy waits for the GPU to finish)
        flat = torch.cat([cost.flatten() for cost in device_costs]).cpu() if device_costs else torch.zeros(0)
        pieces = flat.split([cost.numel() for cost in device_costs])
        costs = {b: piece.view(N, -1) for b, piece in zip(with_segments, pieces)}  # image -> (N, n_b) on CPU
        if not torch.isfinite(flat).all():
            bad = [b for b, cost in costs.items() if not torch.isfinite(cost).all()]
            raise FloatingPointError(f"HungarianMatcher: the cost matrices of images {bad} have NaN/inf "
                                     "entries: the model's outputs are not finite (training diverged?)")
        indices = []
        for b in range(B):  # per image: images have different numbers of segments
            if b not in costs:  # nothing to match: every query is ∅
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            # rows come back sorted (scipy guarantees it): sorted by query index, as in DETR
            query_idx, target_idx = linear_sum_assignment(costs[b].numpy())
            indices.append((torch.as_tensor(query_idx, dtype=torch.int64),
                            torch.as_tensor(target_idx, dtype=torch.int64)))
        return indices

    def cost_matrix(self, pred_logits: Tensor, pred_masks: Tensor, target: dict) -> Tensor:
        """C(i, j) of Eq. (3.2c) for one image: pred_logits (N, K+1), pred_masks (N, h, w) -> (N, n)."""
        N, h, w = pred_masks.shape
        labels = target["labels"]
        prob = pred_logits.float().softmax(-1)                             # (N, K+1), Eq. (3.3a)
        # class term of Eq. (3.2c): −p_i(c_j)  (not −log p, see the module docstring)
        cost_class = -prob[:, labels]                                      # (N, n)

        # GT masks go to the prediction's (stride-4) size, nearest neighbour, as in the official code
        target_masks = F.interpolate(target["masks"][:, None].float(), size=(h, w), mode="nearest")
        target_masks = target_masks.flatten(1)                             # (n, h*w)
        mask_logits = pred_masks.float().flatten(1)                        # (N, h*w)

        # Eq. (3.2c): C = λ_cls·(−p) + λ_focal·L_focal + λ_dice·L_dice
        return (self.cost_class * cost_class
                + self.cost_focal * focal_cost(mask_logits, target_masks)
                + self.cost_dice * dice_cost(mask_logits, target_masks))   # (N, n)


class FixedMatcher(nn.Module):
    """The paper's *fixed* matching (§3.2, ablated in §4): prediction i ↔ the segment of class i.

    Needs N ≥ K queries (the paper uses N = K); queries K..N−1 and queries of classes absent from
    the image are supervised as ∅. Meant for semantic targets, which have one segment per class,
    so a class appearing twice in one image is an error. Same call and return as HungarianMatcher.
    """

    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        B, N, num_classes_plus_one = outputs["pred_logits"].shape
        check_targets(targets, B, num_classes_plus_one - 1, "FixedMatcher")
        return self.match(outputs, targets)

    @torch.no_grad()
    def match(self, outputs: dict, targets: list[dict]) -> Indices:
        """Query c ↔ the segment of class c, for targets already checked."""
        B, N, num_classes_plus_one = outputs["pred_logits"].shape
        K = num_classes_plus_one - 1
        if N < K:
            raise ValueError(f"FixedMatcher: needs at least one query per class, got {N} queries "
                             f"for {K} classes (set num_queries = num_classes)")
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"].cpu()
            if labels.unique().numel() != labels.numel():
                raise ValueError(f"FixedMatcher: targets[{b}] has a class more than once "
                                 f"({labels.tolist()}); fixed matching needs one segment per class")
            # query c is matched to the segment whose label is c; sorting by label sorts by query
            query_idx, target_idx = labels.sort()
            indices.append((query_idx, target_idx))
        return indices
