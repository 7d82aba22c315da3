"""Evaluation metrics for §4 of the paper: mIoU for semantic segmentation, PQ for panoptic.

The paper reports semantic results as mIoU (ADE20K, COCO-Stuff, Cityscapes, Mapillary; Table 1 and
Table 2) and panoptic results as PQ, SQ, RQ overall and for things / stuff (COCO, Table 3). Both
metrics are written here by hand so that a student can read exactly what is counted:

- `SemanticMetrics` accumulates a confusion matrix with one `torch.bincount` per batch, on the
  device of its inputs, as detectron2's `SemSegEvaluator` (used by the official MaskFormer code)
  does with numpy. mIoU averages the per-class IoU over the classes that occur in the ground
  truth or in the prediction; classes absent from both are left out (nan in `per_class_iou`).
  That is the detectron2 of the paper (v0.4-v0.6: IoUs of the ground-truth classes summed, divided
  by the number of classes in ground truth or prediction, so a class only predicted counts 0).
  detectron2 since July 2022 divides by the ground-truth classes only; on a full validation set
  the two agree whenever every predicted class occurs somewhere in its ground truth, on a few
  images (train.py --val-images) they can differ.
- `PanopticMetrics` follows the COCO `panopticapi` (`pq_compute_single_core` / `pq_average`):
  a predicted and a ground-truth segment of the same category match when IoU > 0.5; ground-truth
  void pixels (id 0) inside a predicted segment are left out of the union; a predicted segment
  that lies more than half on void or on a crowd region of its own category is not a false
  positive; crowd ground-truth segments are never matched and never false negatives; categories
  with no TP, FP or FN are left out of the averages.

Reading order: `SemanticMetrics.update` → `SemanticMetrics.compute`, then
`PanopticMetrics.update` (the matching of one image) → `PanopticMetrics.compute` (the averages).

Differences from the official pipeline (all deliberate, none changes a number on real data):
- panopticapi reads the ground-truth segment area from the annotation JSON; we count it from the
  ground-truth id map itself. For COCO both are the same pixel count.
- panopticapi raises ZeroDivisionError when a category group (e.g. "things") has no category
  with TP + FP + FN > 0; we return nan for that group.
- Both classes keep their sums as tensors so that `sync()` can add them across processes
  (distributed.sum_over_processes, an all-reduce) instead of gathering every prediction on one process.
"""

from __future__ import annotations

import json
import math

import torch

from distributed import sum_over_processes

# A segment id of the prediction must stay below this to be packed with the ground truth's id into
# one int64 key (gt_id * OFFSET + pred_id), as panopticapi does with RGB-encoded ids (< 256³).
OFFSET = 256**3
VOID = 0  # segment id 0 = void / unlabelled, in predictions and ground truth alike


class SemanticMetrics:
    """mIoU, pixel accuracy and mean class accuracy from a confusion matrix (§4, Tables 1–2).

    `confusion[g, p]` counts pixels with ground-truth class g and predicted class p. It has one
    extra column, p = K, for predictions outside 0..K-1 (e.g. a "no segment" label): such a pixel
    is a miss for its ground-truth class and a false positive for no class. Pixels whose ground
    truth is `ignore_index` are not counted at all.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion: torch.Tensor | None = None  # created on the device of the first update

    def reset(self) -> None:
        self.confusion = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: `pred` and `target` are integer label maps of the same shape, e.g. (B,H,W)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape")
        for name, labels in (("pred", pred), ("target", target)):
            if labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"SemanticMetrics.update: {name} must be an integer label map (e.g. "
                                 f"scores.argmax(1)), got dtype {labels.dtype}")
        K = self.num_classes
        if self.confusion is None:
            self.confusion = torch.zeros(K, K + 1, dtype=torch.int64, device=target.device)
        target = target.to(self.confusion.device).long().flatten()
        pred = pred.to(self.confusion.device).long().flatten()
        counted = target != self.ignore_index
        target, pred = target[counted], pred[counted]
        if target.numel() and (target.min() < 0 or target.max() >= K):
            raise ValueError(f"target labels must be in 0..{K - 1} or {self.ignore_index} (ignore)")
        pred = torch.where((pred >= 0) & (pred < K), pred, K)  # out of range -> the extra column
        # one bincount over the flattened (g, p) pairs fills the whole matrix
        counts = torch.bincount(target * (K + 1) + pred, minlength=K * (K + 1))
        self.confusion += counts.view(K, K + 1)

    def merge(self, other: SemanticMetrics) -> None:
        """Add the counts of another `SemanticMetrics` (e.g. from another worker)."""
        if other.confusion is None:
            return
        if self.confusion is None:
            self.confusion = other.confusion.clone()
        else:
            self.confusion += other.confusion.to(self.confusion.device)

    def sync(self) -> None:
        """All-reduce the confusion matrix over processes (DDP); every process must call it."""
        if self.confusion is None:
            raise RuntimeError("sync() before any update(): every process needs at least one batch")
        self.confusion = sum_over_processes(self.confusion)

    def compute(self) -> dict:
        """Return {"mIoU", "mACC", "pixel_acc", "per_class_iou", "per_class_acc"} as plain floats in [0, 1]."""
        K = self.num_classes
        confusion = (self.confusion if self.confusion is not None else torch.zeros(K, K + 1)).double().cpu()
        true_pos = confusion.diagonal()  # (K,) the K×K block's diagonal; the extra column has none
        gt_pixels = confusion.sum(1)  # (K,) pixels of each ground-truth class
        pred_pixels = confusion[:, :K].sum(0)  # (K,) pixels predicted as each class
        union = gt_pixels + pred_pixels - true_pos
        # IoU_c = TP / (TP + FP + FN), defined where class c occurs in the ground truth or the prediction
        iou = torch.where(union > 0, true_pos / union, math.nan)
        acc = torch.where(gt_pixels > 0, true_pos / gt_pixels, math.nan)
        return {
            "mIoU": iou.nanmean().item(),
            "mACC": acc.nanmean().item(),
            "pixel_acc": (true_pos.sum() / gt_pixels.sum()).item(),
            "per_class_iou": iou.tolist(),
            "per_class_acc": acc.tolist(),
        }


class PanopticMetrics:
    """Panoptic quality PQ = SQ · RQ (Kirillov et al. 2019), as COCO's panopticapi counts it (§4, Table 3).

    Per category c over the whole dataset:  SQ_c = Σ_TP IoU / |TP|,  RQ_c = |TP| / (|TP| + ½|FP| + ½|FN|),
    PQ_c = SQ_c · RQ_c; PQ, SQ, RQ are the means over categories with |TP| + |FP| + |FN| > 0, over
    all categories, things only ("_th") and stuff only ("_st").
    """

    def __init__(self, is_thing: list[bool]):
        self.is_thing = [bool(t) for t in is_thing]
        self.reset()

    def reset(self) -> None:
        # rows: IoU sum, TP, FP, FN, per category; float64 so one all-reduce carries them all
        self.stats = torch.zeros(4, len(self.is_thing), dtype=torch.float64)

    @torch.no_grad()
    def update(
        self,
        pred_pan_seg: torch.Tensor,
        pred_segments_info: list[dict],
        gt_pan_seg: torch.Tensor,
        gt_segments_info: list[dict],
    ) -> None:
        """Add one image. Id maps (H,W) with 0 = void; segments_info lists {"id", "category_id"
        (contiguous 0..K-1), and for the ground truth "iscrowd" (missing = 0)}."""
        if pred_pan_seg.shape != gt_pan_seg.shape:
            raise ValueError(f"pred {tuple(pred_pan_seg.shape)} and gt {tuple(gt_pan_seg.shape)} differ in size")
        pred_ids = pred_pan_seg.long().flatten()
        gt_ids = gt_pan_seg.to(pred_ids.device).long().flatten()
        # id -> (category, iscrowd)
        pred_segments = {int(s["id"]): (int(s["category_id"]), 0) for s in pred_segments_info}
        gt_segments = {int(s["id"]): (int(s["category_id"]), int(s.get("iscrowd", 0))) for s in gt_segments_info}
        for side, segments in (("predicted", pred_segments), ("ground-truth", gt_segments)):
            for segment_id, (category, _) in segments.items():
                if not 0 <= category < len(self.is_thing):
                    raise ValueError(f"PanopticMetrics: {side} segment {segment_id} has category_id {category}; "
                                     f"expected 0..{len(self.is_thing) - 1} (is_thing has {len(self.is_thing)})")

        if pred_ids.numel() and not 0 <= pred_ids.min() <= pred_ids.max() < OFFSET:
            raise ValueError(f"predicted segment ids must be in 0..{OFFSET - 1}")
        pred_area = self._areas(pred_ids)
        gt_area = self._areas(gt_ids)
        if set(pred_area) - {VOID} != set(pred_segments):
            raise ValueError(
                f"predicted segment ids in the map {sorted(set(pred_area) - {VOID})} and in segments_info "
                f"{sorted(pred_segments)} differ (panopticapi requires them equal)"
            )
        # intersection[(g, p)] = pixels with ground-truth id g and predicted id p
        keys, counts = torch.unique(gt_ids * OFFSET + pred_ids, return_counts=True)
        intersection = {(k // OFFSET, k % OFFSET): c for k, c in zip(keys.tolist(), counts.tolist())}

        iou_sum, tp, fp, fn = self.stats
        gt_matched, pred_matched = set(), set()
        for (gt_id, pred_id), inter in intersection.items():
            if gt_id not in gt_segments or pred_id not in pred_segments:
                continue
            (category, iscrowd), (pred_category, _) = gt_segments[gt_id], pred_segments[pred_id]
            if iscrowd or category != pred_category:
                continue
            # ground-truth void pixels inside the prediction are not part of the union
            union = pred_area[pred_id] + gt_area[gt_id] - inter - intersection.get((VOID, pred_id), 0)
            iou = inter / union
            if iou > 0.5:  # at IoU > 0.5 a match is unique, so no assignment problem is needed
                iou_sum[category] += iou
                tp[category] += 1
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)

        crowd_of_category = {}  # category -> crowd segment id (the last one listed, as panopticapi)
        for gt_id, (category, iscrowd) in gt_segments.items():
            if gt_id in gt_matched:
                continue
            if iscrowd:
                crowd_of_category[category] = gt_id
                continue
            fn[category] += 1

        for pred_id, (category, _) in pred_segments.items():
            if pred_id in pred_matched:
                continue
            # a prediction lying mostly on void or on a crowd region of its category is not counted
            ignored = intersection.get((VOID, pred_id), 0)
            if category in crowd_of_category:
                ignored += intersection.get((crowd_of_category[category], pred_id), 0)
            if ignored / pred_area[pred_id] > 0.5:
                continue
            fp[category] += 1

    @staticmethod
    def _areas(ids: torch.Tensor) -> dict[int, int]:
        values, counts = torch.unique(ids, return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))

    def merge(self, other: PanopticMetrics) -> None:
        """Add the counts of another `PanopticMetrics` (e.g. from another worker)."""
        self.stats += other.stats

    def sync(self) -> None:
        """All-reduce the per-category sums over processes (DDP); every process must call it."""
        self.stats = sum_over_processes(self.stats)

    def compute(self) -> dict:
        """Return PQ, SQ, RQ (and _th, _st) as floats in [0, 1] and "per_class" (nan where excluded)."""
        iou_sum, tp, fp, fn = self.stats
        counted = tp + fp + fn > 0
        sq = torch.where(tp > 0, iou_sum / tp, 0.0)
        rq = torch.where(counted, tp / (tp + 0.5 * fp + 0.5 * fn), 0.0)
        pq = sq * rq  # = Σ IoU / (TP + ½FP + ½FN)
        is_thing = torch.tensor(self.is_thing, dtype=torch.bool)
        results = {}
        for suffix, group in (("", torch.ones_like(is_thing)), ("_th", is_thing), ("_st", ~is_thing)):
            chosen = group & counted
            n = int(chosen.sum())
            for name, value in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                results[name + suffix] = value[chosen].mean().item() if n else math.nan
            results["n" + suffix] = n
        results["per_class"] = [
            {
                "PQ": pq[c].item() if counted[c] else math.nan,
                "SQ": sq[c].item() if counted[c] else math.nan,
                "RQ": rq[c].item() if counted[c] else math.nan,
                "TP": int(tp[c]),
                "FP": int(fp[c]),
                "FN": int(fn[c]),
            }
            for c in range(len(self.is_thing))
        ]
        return results


def strict_json(value, indent: int | None = None) -> str:
    """`json.dumps` for metric records: NaN / ±inf (an undefined mIoU, a class never seen) become
    null, so every file written is strict JSON (Python's default writes the non-standard NaN)."""

    def finite(v):
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return json.dumps(finite(value), indent=indent, allow_nan=False)
