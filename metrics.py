"""Evaluation metrics for §4 of the paper: mIoU and PQ^St for semantic segmentation, PQ for panoptic.

The paper reports semantic results as mIoU (ADE20K, COCO-Stuff, Cityscapes, Mapillary; Table 1 and
Table 2) with PQ^St beside it (Tables 2 and 4), and panoptic results as PQ, SQ, RQ overall and for
things / stuff (COCO, Table 3). All are written here by hand so that a student can read exactly
what is counted:

- `SemanticMetrics` accumulates a confusion matrix with one `torch.bincount` per batch, on the
  device of its inputs, as detectron2's `SemSegEvaluator` (used by the official MaskFormer code)
  does with numpy. mIoU averages the per-class IoU over the classes that occur in the ground
  truth or in the prediction; classes absent from both are left out (nan in `per_class_iou`).
  That is the detectron2 of the paper (v0.4-v0.6: IoUs of the ground-truth classes summed, divided
  by the number of classes in ground truth or prediction, so a class only predicted counts 0).
  detectron2 since July 2022 divides by the ground-truth classes only; on a full validation set
  the two agree whenever every predicted class occurs somewhere in its ground truth, on a few
  images (train.py --val-images) they can differ.
- `SemanticMetrics` also gives PQ^St, as the official MaskFormer's
  `tools/evaluate_pq_for_semantic_segmentation.py` counts it: panopticapi's PQ (Kirillov et al.
  2019; docs/paper.md, "Borrowed parts": PQ has no label of its own there) on semantic label maps,
  every class a stuff class. In each image the pixels of class c in the ground truth are one
  ground-truth segment and the pixels predicted c one predicted segment; ignore pixels are void
  (panopticapi's id 0), so a ground-truth segment has no void pixels. TP, FP, FN and the matched
  IoUs are summed per class over images, then averaged as `PanopticMetrics` does. mIoU and PQ^St
  come from the same per-image confusion matrices, one bincount per batch.
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
- The official PQ^St script raises KeyError on a predicted label that is not a class; we count it as
  no segment (its pixels stay in their ground-truth segment's area, like panopticapi's predicted
  void), as mIoU counts it in the extra column. Its predictions are argmaxes, so never such a label.
- panopticapi raises ZeroDivisionError when a category group (e.g. "things") has no category
  with TP + FP + FN > 0; we return nan for that group.
- Both classes keep their sums as tensors so that `sync()` can add them across processes
  (distributed.sum_over_processes, an all-reduce) instead of gathering every prediction on one process.
"""

from __future__ import annotations

import json
import math

import torch

from machinery.distributed import sum_over_processes

# A segment id of the prediction must stay below this to be packed with the ground truth's id into
# one int64 key (gt_id * OFFSET + pred_id), as panopticapi does with RGB-encoded ids (< 256³).
OFFSET = 256**3
VOID = 0  # segment id 0 = void / unlabelled, in predictions and ground truth alike


class SemanticMetrics:
    """mIoU, pixel accuracy, mean class accuracy (§4, Tables 1–2) and PQ^St (Tables 2 and 4).

    `confusion[g, p]` counts pixels with ground-truth class g and predicted class p. It has one
    extra column, p = K, for predictions outside 0..K-1 (e.g. a "no segment" label): such a pixel
    is a miss for its ground-truth class and a false positive for no class. Pixels whose ground
    truth is `ignore_index` are not counted at all. Beside it, per class and summed over images,
    PQ^St's counts: `tp`, `fp`, `fn` (int64) and `iou_sum` (float64, the IoUs of the matches).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        # made on the device of the first update: confusion (K, K+1), tp, fp, fn (K,) int64, iou_sum (K,) float64
        self.confusion: torch.Tensor | None = None
        self.tp = self.fp = self.fn = self.iou_sum = None

    def _zeros(self, device) -> tuple[torch.Tensor, ...]:
        K = self.num_classes
        counts = [torch.zeros(K, K + 1, dtype=torch.int64, device=device)]
        counts += [torch.zeros(K, dtype=torch.int64, device=device) for _ in range(3)]  # tp, fp, fn
        return (*counts, torch.zeros(K, dtype=torch.float64, device=device))  # ..., iou_sum

    def _state(self) -> tuple[torch.Tensor, ...]:
        """(confusion, tp, fp, fn, iou_sum): everything `update` adds to, in one order."""
        return self.confusion, self.tp, self.fp, self.fn, self.iou_sum

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: `pred` and `target` are integer label maps of the same shape, (B,H,W) for B
        images or (H,W) for one (PQ^St's segments are per image; mIoU does not care)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape")
        for name, labels in (("pred", pred), ("target", target)):
            if labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"SemanticMetrics.update: {name} must be an integer label map (e.g. "
                                 f"scores.argmax(1)), got dtype {labels.dtype}")
        K = self.num_classes
        if self.confusion is None:
            self.confusion, self.tp, self.fp, self.fn, self.iou_sum = self._zeros(target.device)
        device = self.confusion.device
        B = math.prod(target.shape[:-2]) if target.dim() > 2 else 1  # the number of images
        pixels = target.shape[-2] * target.shape[-1] if target.dim() > 2 else target.numel()  # per image
        target = target.to(device).long().reshape(B, pixels)
        pred = pred.to(device).long().reshape(B, pixels)
        void = target == self.ignore_index
        if (((target < 0) | (target >= K)) & ~void).any():
            raise ValueError(f"target labels must be in 0..{K - 1} or {self.ignore_index} (ignore)")
        target = torch.where(void, K, target)  # void -> an extra row, K, counted for PQ^St only
        pred = torch.where((pred >= 0) & (pred < K), pred, K)  # out of range -> the extra column
        # one bincount over the flattened (image, g, p) triples fills every image's confusion matrix
        # (B·(K+1)² counts: 5.8 MB per image for ADE20K-Full's 847 classes)
        image = torch.arange(B, device=device)[:, None]  # (B, 1)
        keys = (image * (K + 1) + target) * (K + 1) + pred  # (B, H·W)
        per_image = torch.bincount(keys.flatten(), minlength=B * (K + 1) ** 2).view(B, K + 1, K + 1)
        self.confusion += per_image[:, :K].sum(0)  # (K, K+1): void pixels are not counted

        # PQ^St: per image, class c's pixels form one ground-truth and one predicted segment
        inter = per_image[:, :K, :K].diagonal(dim1=1, dim2=2)  # (B, K) ground truth c predicted c
        gt_area = per_image[:, :K].sum(2)  # (B, K) the ground-truth segment (void pixels are none of it)
        pred_void = per_image[:, K, :K]  # (B, K) the predicted segment on void ...
        pred_area = per_image[:, :, :K].sum(1)  # (B, K) ... and in all
        # panopticapi: union = |pred| + |gt| - |pred ∩ gt| - |pred ∩ void|, i.e. void is not in the union
        union = pred_area + gt_area - inter - pred_void  # (B, K)
        matched = 2 * inter > union  # (B, K) IoU > 0.5, exactly, in integers (then the match is unique)
        iou = inter.double() / union.clamp(min=1)  # (B, K)
        self.tp += matched.sum(0)
        self.iou_sum += torch.where(matched, iou, 0.0).sum(0)
        self.fn += (gt_area > 0).logical_and(~matched).sum(0)
        # an unmatched predicted segment more than half on void is not a false positive
        on_void = 2 * pred_void > pred_area  # (B, K)
        self.fp += (pred_area > 0).logical_and(~matched).logical_and(~on_void).sum(0)

    def merge(self, other: SemanticMetrics) -> None:
        """Add the counts of another `SemanticMetrics` (e.g. from another worker)."""
        if other.confusion is None:
            return
        if self.confusion is None:
            self.confusion, self.tp, self.fp, self.fn, self.iou_sum = (t.clone() for t in other._state())
            return
        for mine, theirs in zip(self._state(), other._state()):
            mine += theirs.to(mine.device)

    def sync(self) -> None:
        """All-reduce the confusion matrix and PQ^St's counts over processes (DDP); every process must
        call it. One all-reduce: all travel as one float64 vector (counts are exact below 2^53)."""
        if self.confusion is None:
            raise RuntimeError("sync() before any update(): every process needs at least one batch")
        state = self._state()
        summed = sum_over_processes(torch.cat([t.flatten().double() for t in state]))
        parts = summed.split([t.numel() for t in state])
        self.confusion, self.tp, self.fp, self.fn, self.iou_sum = (
            part.view_as(t).to(t.dtype) for part, t in zip(parts, state))

    def compute(self) -> dict:
        """Return {"mIoU", "mACC", "pixel_acc", "PQ_St", "SQ_St", "RQ_St", "per_class_iou", "per_class_acc",
        "per_class_pq"} as plain floats in [0, 1] (nan where undefined)."""
        K = self.num_classes
        state = self._state() if self.confusion is not None else self._zeros("cpu")
        confusion, tp, fp, fn, iou_sum = (t.double().cpu() for t in state)
        true_pos = confusion.diagonal()  # (K,) the K×K block's diagonal; the extra column has none
        gt_pixels = confusion.sum(1)  # (K,) pixels of each ground-truth class
        pred_pixels = confusion[:, :K].sum(0)  # (K,) pixels predicted as each class
        union = gt_pixels + pred_pixels - true_pos
        # IoU_c = TP / (TP + FP + FN), defined where class c occurs in the ground truth or the prediction
        iou = torch.where(union > 0, true_pos / union, math.nan)
        acc = torch.where(gt_pixels > 0, true_pos / gt_pixels, math.nan)

        counted = tp + fp + fn > 0  # (K,) classes with no segment anywhere are left out (nan)
        weighted = tp + 0.5 * fp + 0.5 * fn  # (K,) segments counted: |TP| + ½|FP| + ½|FN|
        # PQ_c = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|) = SQ_c · RQ_c,  all (K,), as PanopticMetrics
        pq = torch.where(counted, iou_sum / weighted, math.nan)
        sq = torch.where(counted, torch.where(tp > 0, iou_sum / tp, 0.0), math.nan)  # 0 with no TP
        rq = torch.where(counted, tp / weighted, math.nan)
        return {
            "mIoU": iou.nanmean().item(),
            "mACC": acc.nanmean().item(),
            "pixel_acc": (true_pos.sum() / gt_pixels.sum()).item(),
            "PQ_St": pq.nanmean().item(),
            "SQ_St": sq.nanmean().item(),
            "RQ_St": rq.nanmean().item(),
            "per_class_iou": iou.tolist(),
            "per_class_acc": acc.tolist(),
            "per_class_pq": pq.tolist(),
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
