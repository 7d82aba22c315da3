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
`dice_cost`; then `FixedMatcher` (the paper's "fixed matching" ablation, §4) and `BoxMatcher`
(DETR's box-based matching, the comparison arm of the paper's Table 5: `mask_boxes`,
`generalized_box_iou`).

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
    per image, with labels in 0..K−1 (the set z_gt of Eq. (3.2b), as data.py builds it) and one
    (H, W) for the whole batch."""
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
    sizes = {tuple(t["masks"].shape[1:]) for t in targets}
    if len(sizes) > 1:
        raise ValueError(f"{where}: all targets' masks must share the padded batch size "
                         f"(collate pads them), got sizes {sorted(sizes)}")
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
        segments = [len(t["labels"]) for t in targets]  # n_b per image
        # C of Eq. (3.2c) between all B·N predictions and all T = Σ n_b segments of the batch at once,
        # as DETR's matcher does: one round of tensor ops instead of one per image (on a CPU the small
        # per-image ops cost more than the cross-image pairs they avoid). Image b keeps its (N, n_b) block.
        batch_targets = {"labels": torch.cat([t["labels"] for t in targets]),
                         "masks": torch.cat([t["masks"] for t in targets])}
        cost = self.cost_matrix(pred_logits.flatten(0, 1), pred_masks.flatten(0, 1), batch_targets)  # (B·N, T)
        # one device→host copy for the whole batch (each copy waits for the GPU to finish)
        cost = cost.view(B, N, -1).cpu()                                   # (B, N, T)
        blocks = [cost[b].split(segments, dim=1)[b] for b in range(B)]     # image b: (N, n_b)
        if not torch.isfinite(cost).all():
            bad = [b for b, block in enumerate(blocks) if not torch.isfinite(block).all()]
            raise FloatingPointError(f"HungarianMatcher: the cost matrices of images {bad} have NaN/inf "
                                     "entries: the model's outputs are not finite (training diverged?)")
        indices = []
        for block in blocks:  # per image: images have different numbers of segments
            # rows come back sorted (scipy guarantees it): sorted by query index, as in DETR; an image
            # without segments gets two empty index tensors (every query is ∅)
            query_idx, target_idx = linear_sum_assignment(block.numpy())
            indices.append((torch.as_tensor(query_idx, dtype=torch.int64),
                            torch.as_tensor(target_idx, dtype=torch.int64)))
        return indices

    def cost_matrix(self, pred_logits: Tensor, pred_masks: Tensor, target: dict) -> Tensor:
        """C(i, j) of Eq. (3.2c): pred_logits (N, K+1), pred_masks (N, h, w) -> (N, n) for the n segments
        of `target` (one image's, or the whole batch's: `match` passes B·N predictions and all T)."""
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


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes (M, 4) = (x0, y0, x1, y1) of binary masks (M, h, w), normalised to [0, 1] by the
    mask size (a box covers whole pixels: x1 = last column + 1). An empty mask gets (0, 0, 0, 0)."""
    M, h, w = masks.shape
    columns, rows = masks.any(1), masks.any(2)  # (M, w), (M, h): columns / rows holding a pixel
    x = torch.arange(w, device=masks.device)
    y = torch.arange(h, device=masks.device)
    x0 = torch.where(columns, x, w).amin(1)  # first column with a pixel (w if none)
    x1 = torch.where(columns, x + 1, 0).amax(1)  # one past the last such column (0 if none)
    y0 = torch.where(rows, y, h).amin(1)
    y1 = torch.where(rows, y + 1, 0).amax(1)
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], 1).float()  # (M, 4)
    return torch.where(columns.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """GIoU (Rezatofighi et al. 2019) of every pair of (x0, y0, x1, y1) boxes: (A, 4), (B, 4) → (A, B).
    GIoU = IoU − (|C| − |A ∪ B|) / |C|, C the smallest box enclosing both; in [−1, 1]."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])  # (A,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])  # (B,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (A, B, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (A, B, 2)
    overlap = (bottom_right - top_left).clamp(min=0)  # (A, B, 2)
    intersection = overlap[..., 0] * overlap[..., 1]  # (A, B)
    union = area1[:, None] + area2[None, :] - intersection  # (A, B)
    enclosing = (torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
                 - torch.min(boxes1[:, None, :2], boxes2[None, :, :2]))  # (A, B, 2): the enclosing box's sides
    enclosing_area = enclosing[..., 0] * enclosing[..., 1]  # (A, B)
    iou = intersection / (union + eps)
    return iou - (enclosing_area - union) / (enclosing_area + eps)


def to_centre_size(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) → (cx, cy, w, h), the parametrisation DETR's L1 cost compares."""
    return torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)


class BoxMatcher(HungarianMatcher):
    """DETR's box-based matching cost, the "box" arm of the paper's Table 5 (§4.3).

    The mask terms of Eq. (3.2c) are replaced by DETR's box terms, between the boxes around the
    predicted masks (m_i > 0.5, i.e. logit > 0) and around the ground-truth masks:

        C(i, j) = −λ_cls p_i(c_j) + λ_L1 ‖b_i − b_j‖₁ + λ_giou (−GIoU(b_i, b_j))

    with DETR's λ_cls = 1, λ_L1 = 5, λ_giou = 2 and boxes as normalised (cx, cy, w, h) for the L1
    term. The loss is unchanged (Eq. (3.2d), masks): only the assignment σ differs. Boxes are
    ambiguous for stuff (a wall and the floor under it can share one box), which is the paper's
    explanation of why mask-based matching wins (Table 5).
    """

    def __init__(self, cost_class: float = 1.0, cost_l1: float = 5.0, cost_giou: float = 2.0):
        super().__init__(cost_class=cost_class, cost_focal=0.0, cost_dice=0.0)  # no mask terms
        self.cost_l1, self.cost_giou = cost_l1, cost_giou

    def cost_matrix(self, pred_logits: Tensor, pred_masks: Tensor, target: dict) -> Tensor:
        """C(i, j) above for one image: pred_logits (N, K+1), pred_masks (N, h, w) → (N, n)."""
        N, h, w = pred_masks.shape
        prob = pred_logits.float().softmax(-1)  # (N, K+1), Eq. (3.3a)
        cost_class = -prob[:, target["labels"]]  # (N, n)
        target_masks = F.interpolate(target["masks"][:, None].float(), size=(h, w), mode="nearest")[:, 0]  # (n, h, w)
        pred_boxes = mask_boxes(pred_masks > 0)  # (N, 4): sigmoid(logit) > 0.5
        target_boxes = mask_boxes(target_masks > 0.5)  # (n, 4)
        cost_l1 = torch.cdist(to_centre_size(pred_boxes), to_centre_size(target_boxes), p=1)  # (N, n)
        cost_giou = -generalized_box_iou(pred_boxes, target_boxes)  # (N, n)
        return self.cost_class * cost_class + self.cost_l1 * cost_l1 + self.cost_giou * cost_giou
