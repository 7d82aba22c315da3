"""Reference solutions of the exercises, written as a student would: from the paper, with torch only.

Nothing here imports the project's modules; `python exercises/check.py --all` checks every
function against the project's implementation. Equation labels are those of `docs/paper.md`.
This folder (instructor/) is left out of the student bundle (`python instructor/bundle.py`);
hand this file out after the class, with instructor/GUIDE.md for the answers to the questions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dice_loss(mask_logits: Tensor, target_masks: Tensor) -> Tensor:
    """Exercise 1, Eq. (3.2g): L_dice = 1 − (2 Σ m·m_gt + 1) / (Σ m + Σ m_gt + 1), one value per mask.

    mask_logits (M, P) logits, target_masks (M, P) 0/1 → (M,).
    """
    m = mask_logits.sigmoid()  # the predicted mask as probabilities
    numerator = 2 * (m * target_masks).sum(dim=1) + 1
    denominator = m.sum(dim=1) + target_masks.sum(dim=1) + 1
    return 1 - numerator / denominator


def sigmoid_focal_loss(mask_logits: Tensor, target_masks: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Exercise 2, Eq. (3.2f): the mean over pixels of −α_t (1 − p_t)^γ log p_t, one value per mask.

    mask_logits (M, P) logits, target_masks (M, P) 0/1 → (M,).
    """
    p = torch.sigmoid(mask_logits)
    t = target_masks
    p_t = t * p + (1 - t) * (1 - p)  # probability given to the true label of each pixel
    alpha_t = t * alpha + (1 - t) * (1 - alpha)
    # −log p_t from the logits (log of a sigmoid would overflow for large logits)
    minus_log_p_t = F.binary_cross_entropy_with_logits(mask_logits, t, reduction="none")
    loss = alpha_t * (1 - p_t) ** gamma * minus_log_p_t  # (M, P)
    return loss.mean(dim=1)


def matching_cost(class_logits: Tensor, mask_logits: Tensor, labels: Tensor, target_masks: Tensor,
                  cost_class: float = 1.0, cost_focal: float = 20.0, cost_dice: float = 1.0) -> Tensor:
    """Exercise 3, Eq. (3.2c): C(i, j) = −λ_cls p_i(c_j) + λ_focal focal(m_i, m_j) + λ_dice dice(m_i, m_j).

    class_logits (N, K+1), mask_logits (N, P), labels (n,), target_masks (n, P) 0/1 → (N, n).
    Every prediction against every segment: loops over the pairs, as written in the paper.
    """
    N, n = class_logits.shape[0], labels.shape[0]
    probs = class_logits.softmax(dim=-1)  # over all K + 1 classes, ∅ included
    cost = torch.zeros(N, n)
    for i in range(N):
        for j in range(n):
            # the same mask on both sides of the pair, as (1, P) rows for the per-mask losses above
            pred, target = mask_logits[i:i + 1], target_masks[j:j + 1]
            cost[i, j] = (-cost_class * probs[i, labels[j]]
                          + cost_focal * sigmoid_focal_loss(pred, target)[0]
                          + cost_dice * dice_loss(pred, target)[0])
    return cost


def mask_probabilities(mask_embeddings: Tensor, pixel_embeddings: Tensor) -> Tensor:
    """Exercise 4, Eq. (3.3b): m_i[h, w] = sigmoid(E_mask[:, i]ᵀ · E_pixel[:, h, w]).

    mask_embeddings (B, N, C), pixel_embeddings (B, C, H, W) → (B, N, H, W).
    """
    B, C, H, W = pixel_embeddings.shape
    pixels = pixel_embeddings.reshape(B, C, H * W)  # (B, C, HW)
    dots = torch.bmm(mask_embeddings, pixels)  # (B, N, HW): every query · every pixel
    return dots.sigmoid().reshape(B, -1, H, W)


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Exercise 5, Eq. (3.4b): score of class c at pixel (h, w) = Σ_i p_i(c) · m_i[h, w], c ∈ {1…K}.

    class_logits (B, N, K+1), mask_logits (B, N, H, W) → (B, K, H, W).
    """
    probs = class_logits.softmax(dim=-1)[:, :, :-1]  # (B, N, K): ∅ dropped after the softmax
    masks = mask_logits.sigmoid()  # (B, N, H, W)
    # Σ over the queries n of probs[b, n, k] · masks[b, n, h, w]
    return (probs[:, :, :, None, None] * masks[:, :, None, :, :]).sum(dim=1)


def panoptic_quality(pred_pan_seg: Tensor, pred_segments: dict[int, int], gt_pan_seg: Tensor,
                     gt_segments: dict[int, int]) -> dict[str, float]:
    """Exercise 6: PQ, SQ, RQ of one image (Kirillov et al. 2019), averaged over classes.

    pred_pan_seg, gt_pan_seg: (H, W) segment-id maps, every pixel in some segment;
    pred_segments, gt_segments: {segment id: class}. A predicted and a ground-truth segment match
    when they have the same class and IoU > 0.5. Per class: SQ = mean IoU of the matches,
    RQ = TP / (TP + FP/2 + FN/2), PQ = SQ · RQ; then each is averaged over the classes with any
    TP, FP or FN.
    """
    classes = set(pred_segments.values()) | set(gt_segments.values())
    iou_sum = dict.fromkeys(classes, 0.0)
    tp, fp, fn = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    matched_pred = set()
    for gt_id, c in gt_segments.items():
        gt_mask = gt_pan_seg == gt_id
        match = None
        for pred_id, pred_c in pred_segments.items():
            if pred_c != c:
                continue
            pred_mask = pred_pan_seg == pred_id
            iou = (gt_mask & pred_mask).sum().item() / (gt_mask | pred_mask).sum().item()
            if iou > 0.5:  # at most one prediction can overlap a segment by more than half
                match = (pred_id, iou)
        if match is None:
            fn[c] += 1
        else:
            matched_pred.add(match[0])
            tp[c] += 1
            iou_sum[c] += match[1]
    for pred_id, c in pred_segments.items():
        if pred_id not in matched_pred:
            fp[c] += 1
    pq, sq, rq = [], [], []
    for c in classes:
        sq_c = iou_sum[c] / tp[c] if tp[c] > 0 else 0.0
        rq_c = tp[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c])
        pq.append(sq_c * rq_c)
        sq.append(sq_c)
        rq.append(rq_c)
    return {"PQ": sum(pq) / len(pq), "SQ": sum(sq) / len(sq), "RQ": sum(rq) / len(rq)}


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Exercise 7 (Swin, §3.2 of its paper): (B, H, W, C) → (B·nH·nW, ws, ws, C), windows row by row."""
    B, H, W, C = x.shape
    windows = []
    for b in range(B):
        for top in range(0, H, window_size):
            for left in range(0, W, window_size):
                windows.append(x[b, top:top + window_size, left:left + window_size])
    return torch.stack(windows)


def shifted_window_mask(Hp: int, Wp: int, window_size: int, shift_size: int) -> Tensor:
    """Exercise 8 (Swin): which tokens of a cyclically shifted window may attend to each other.

    Label the Hp × Wp map by region (3 bands per axis: before Hp − ws, up to Hp − shift, the rest),
    cut it into windows, and give −100 to every pair of tokens with different labels, else 0.
    Returns (nW, ws², ws²).
    """
    labels = torch.zeros(Hp, Wp)
    bands = [(0, Hp - window_size), (Hp - window_size, Hp - shift_size), (Hp - shift_size, Hp)]
    col_bands = [(0, Wp - window_size), (Wp - window_size, Wp - shift_size), (Wp - shift_size, Wp)]
    region = 0
    for top, bottom in bands:
        for left, right in col_bands:
            labels[top:bottom, left:right] = region
            region += 1
    windows = window_partition(labels[None, :, :, None], window_size)  # (nW, ws, ws, 1)
    windows = windows.reshape(windows.shape[0], window_size * window_size)  # (nW, N)
    same = windows[:, :, None] == windows[:, None, :]  # (nW, N, N)
    mask = torch.zeros(same.shape)
    mask[~same] = -100.0
    return mask


def mask_classification_loss(class_logits: Tensor, mask_logits: Tensor, targets: list[dict], indices: list,
                             no_object_weight: float = 0.1) -> dict[str, Tensor]:
    """Exercise 9, Eq. (3.2d) with the matching given, normalised as the official code does.

    class_logits (B, N, K+1), mask_logits (B, N, P); targets[b] = {"labels" (n_b,), "masks" (n_b, P)};
    indices[b] = (query_idx, segment_idx): prediction query_idx[k] is matched to segment segment_idx[k].
    Returns the unweighted terms {"loss_ce", "loss_focal", "loss_dice"}.
    """
    B, N, K1 = class_logits.shape
    # targets of the class term: c_j for the matched queries, ∅ (index K) for all others
    target_classes = torch.full((B, N), K1 - 1, dtype=torch.long)
    matched_logits, matched_targets = [], []
    for b, (query_idx, segment_idx) in enumerate(indices):
        target_classes[b, query_idx] = targets[b]["labels"][segment_idx]
        matched_logits.append(mask_logits[b, query_idx])
        matched_targets.append(targets[b]["masks"][segment_idx])
    # −log p_i(target) of every query, weighted 1 for a real class and no_object_weight for ∅,
    # then the weighted mean Σ w·(−log p) / Σ w
    log_probs = class_logits.log_softmax(dim=-1)  # (B, N, K+1)
    minus_log_p = -log_probs.gather(2, target_classes[..., None])[..., 0]  # (B, N)
    weights = torch.where(target_classes == K1 - 1, no_object_weight, 1.0)  # (B, N)
    loss_ce = (weights * minus_log_p).sum() / weights.sum()
    # the mask terms of the matched pairs, summed and divided by the number of ground-truth masks
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    logits, masks = torch.cat(matched_logits), torch.cat(matched_targets)  # (M, P) each
    return {"loss_ce": loss_ce,
            "loss_focal": sigmoid_focal_loss(logits, masks).sum() / num_masks,
            "loss_dice": dice_loss(logits, masks).sum() / num_masks}


def panoptic_inference(class_logits: Tensor, mask_logits: Tensor, is_thing: list[bool],
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                       ) -> tuple[Tensor, list[dict]]:
    """Exercise 10, Eq. (3.4a) with the filters of panoptic inference.

    class_logits (N, K+1), mask_logits (N, H, W) → pan_seg (H, W) long (0 = void) and
    segments_info [{"id", "category_id"}]. Steps: keep confident non-∅ queries; give every pixel
    to the kept query with the largest p_i(c_i)·m_i[h, w]; drop queries that keep less than
    overlap_threshold of their own mask; merge the queries of one stuff class.
    """
    K = class_logits.shape[1] - 1
    scores, classes = class_logits.softmax(dim=-1).max(dim=-1)  # p_i(c_i), c_i over all K + 1 classes
    kept = [i for i in range(len(scores)) if classes[i] != K and scores[i] > object_mask_threshold]
    pan_seg = torch.zeros(mask_logits.shape[1:], dtype=torch.long)
    if not kept:
        return pan_seg, []
    masks = mask_logits[kept].sigmoid()  # (M, H, W)
    # Eq. (3.4a): pixel (h, w) goes to argmax_i p_i(c_i) · m_i[h, w]
    winner = (scores[kept][:, None, None] * masks).argmax(dim=0)  # (H, W) index into kept
    segments_info, stuff_ids = [], {}
    for k, i in enumerate(kept):
        won = winner == k
        own = masks[k] >= 0.5
        if won.sum() == 0 or own.sum() == 0 or won.sum() / own.sum() < overlap_threshold:
            continue  # mostly hidden by other queries: no segment, its pixels stay void
        c = int(classes[i])
        if not is_thing[c] and c in stuff_ids:
            segment_id = stuff_ids[c]  # one segment per stuff class
        else:
            segment_id = len(segments_info) + 1
            segments_info.append({"id": segment_id, "category_id": c})
            if not is_thing[c]:
                stuff_ids[c] = segment_id
        pan_seg[won] = segment_id
    return pan_seg, segments_info
