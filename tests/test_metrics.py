"""Tests of metrics.py: hand-worked cases, then torchmetrics as an independent reference.

Definitional differences from torchmetrics, stated where each comparison is made:
- `MulticlassJaccardIndex(average="macro", ignore_index=255)` accumulates one confusion matrix over
  the dataset and averages over classes with a non-empty union: the same definition as ours.
- `MulticlassAccuracy(average="macro")` also averages over classes that are only predicted (accuracy
  0); our mean class accuracy, like detectron2's mACC, averages over ground-truth classes only.
- `segmentation.MeanIoU` averages a per-*image* mIoU over images (each image's own set of present
  classes) and has no ignore index, so it equals ours only image by image without ignored pixels.
- `PanopticQuality` differs from COCO's panopticapi (which we follow) in four ways: (1) predicted
  void pixels inside a ground-truth segment are removed from the union (panopticapi keeps them);
  (2) a ground-truth segment lying more than half on predicted void is not a false negative
  (panopticapi counts it); (3) it has no crowd regions; (4) it merges all segments of a stuff
  category into one. On maps with no predicted void, no crowd and one segment per stuff category
  per image the two agree exactly; `test_pq_differs_from_torchmetrics_on_predicted_void` shows (1).
- PQ^St (`SemanticMetrics`) is checked against a naive re-implementation of the official MaskFormer
  script, and against `PanopticQuality` with every class stuff: (4) is then PQ^St's own rule, (3)
  does not arise, and (1), (2) need predicted void, i.e. predictions outside 0..K-1, which the
  comparison leaves out (torchmetrics would call them void; PQ^St calls them no segment).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from machinery import datasets
from metrics import PanopticMetrics, SemanticMetrics

# ---------------------------------------------------------------- semantic: hand-worked cases


def test_semantic_hand_worked():
    K = 4  # class 3 occurs in neither map -> excluded from the mean, nan in per_class_iou
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 1, 0]])  # the last two pixels are ignored
    m = SemanticMetrics(K)
    m.update(pred, target)
    r = m.compute()
    # class 0: TP 1, gt 2, pred 2 -> 1/3; class 1: TP 2, union 3 -> 2/3; class 2: TP 1, union 2 -> 1/2
    assert r["per_class_iou"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(r["per_class_iou"][3])
    assert r["mIoU"] == pytest.approx(0.5)
    assert r["pixel_acc"] == pytest.approx(4 / 6)
    assert r["mACC"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert isinstance(r["mIoU"], float) and isinstance(r["per_class_iou"], list)


def test_semantic_class_only_predicted_counts_as_zero():
    target = torch.tensor([[0, 0, 1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 3]])  # class 3 predicted, absent from the ground truth
    m = SemanticMetrics(4)
    m.update(pred, target)
    r = m.compute()
    assert r["per_class_iou"] == pytest.approx([1 / 2, 2 / 3, 1 / 2, 0.0])
    assert r["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2 + 0) / 4)
    assert r["mACC"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)  # accuracy: ground-truth classes only


def test_semantic_out_of_range_prediction_is_a_miss_only():
    # a prediction outside 0..K-1 (e.g. "no segment") lowers its ground-truth class and no other
    m = SemanticMetrics(2)
    m.update(torch.tensor([0, -1, 1, 7]), torch.tensor([0, 0, 1, 1]))
    r = m.compute()
    assert r["per_class_iou"] == pytest.approx([1 / 2, 1 / 2])
    assert r["pixel_acc"] == pytest.approx(2 / 4)


def test_semantic_rejects_bad_target_and_shape():
    m = SemanticMetrics(3)
    with pytest.raises(ValueError, match="target labels"):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one shape"):
        m.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))


def test_semantic_merge_and_reset():
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (4, 9, 11), generator=g)
    targets = torch.randint(0, 5, (4, 9, 11), generator=g)
    whole, first, second = SemanticMetrics(5), SemanticMetrics(5), SemanticMetrics(5)
    whole.update(preds, targets)
    first.update(preds[:2], targets[:2])
    second.update(preds[2:], targets[2:])
    first.merge(second)
    assert torch.equal(first.confusion, whole.confusion)
    whole.reset()
    whole.update(preds[:2], targets[:2])
    second.merge(whole)
    assert torch.equal(second.confusion, first.confusion)


# ---------------------------------------------------------------- semantic: against torchmetrics


def test_miou_matches_torchmetrics_jaccard_over_a_dataset():
    pytest.importorskip("torchmetrics", reason="torchmetrics is the reference mIoU here")
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    K = 7
    g = torch.Generator().manual_seed(1)
    ours = SemanticMetrics(K)
    jaccard = MulticlassJaccardIndex(num_classes=K, ignore_index=255, average="macro")
    jaccard_per_class = MulticlassJaccardIndex(num_classes=K, ignore_index=255, average="none")
    pixel_acc = MulticlassAccuracy(num_classes=K, ignore_index=255, average="micro")
    class_acc = MulticlassAccuracy(num_classes=K, ignore_index=255, average="none")
    for _ in range(5):
        target = torch.randint(0, K - 1, (2, 13, 17), generator=g)  # class K-1 only ever predicted
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=K - 1), 0)
        pred[torch.rand(target.shape, generator=g) < 0.1] = K - 1
        pred[target == 255] = torch.randint(0, K, pred.shape, generator=g)[target == 255]
        ours.update(pred, target)
        for metric in (jaccard, jaccard_per_class, pixel_acc, class_acc):
            metric.update(pred.flatten(), target.flatten())
    r = ours.compute()
    assert r["mIoU"] == pytest.approx(jaccard.compute().item(), abs=1e-6)
    assert r["per_class_iou"] == pytest.approx(jaccard_per_class.compute().tolist(), abs=1e-6)
    assert r["per_class_iou"][K - 1] == 0.0  # predicted only: IoU 0, and it is in the mean
    assert r["pixel_acc"] == pytest.approx(pixel_acc.compute().item(), abs=1e-6)
    # mean class accuracy: like detectron2 we average over classes present in the ground truth;
    # torchmetrics' average="macro" also counts a class that is only predicted (accuracy 0), so
    # the reference is its per-class accuracy averaged over the ground-truth classes 0..K-2
    assert r["per_class_acc"][: K - 1] == pytest.approx(class_acc.compute()[: K - 1].tolist(), abs=1e-6)
    assert math.isnan(r["per_class_acc"][K - 1])
    assert r["mACC"] == pytest.approx(class_acc.compute()[: K - 1].mean().item(), abs=1e-6)


def test_miou_matches_torchmetrics_meaniou_image_by_image():
    pytest.importorskip("torchmetrics", reason="torchmetrics is the reference mIoU here")
    from torchmetrics.segmentation import MeanIoU

    # MeanIoU is a per-image mean with no ignore index; on one image without ignore it is ours
    K = 6
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        target = torch.randint(0, K - 2, (1, 20, 24), generator=g)  # classes K-2, K-1 absent from gt
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.5, target, (target + 1) % (K - 1))
        ours = SemanticMetrics(K)
        ours.update(pred, target)
        reference = MeanIoU(num_classes=K, input_format="index")
        reference.update(pred, target)
        assert ours.compute()["mIoU"] == pytest.approx(reference.compute().item(), abs=1e-6)


# ---------------------------------------------------------------- semantic: PQ^St


def pq_st_reference(pairs, K: int, ignore: int = 255) -> dict:
    """The official `evaluate_pq_for_semantic_segmentation.py`, written naively from its definition:
    `pairs` is a list of (pred, target) numpy (H,W) label maps, one per image."""
    iou_sum, tp, fp, fn = [0.0] * K, [0] * K, [0] * K, [0] * K
    excused = 0  # unmatched predicted segments more than half on void
    for pred, target in pairs:
        void = target == ignore
        # one segment per class present: ground truth from the non-void pixels, prediction from all
        # pixels, labels outside 0..K-1 being no segment
        gt_segments = {int(c): target == c for c in np.unique(target) if c != ignore}
        pred_segments = {int(c): pred == c for c in np.unique(pred) if 0 <= c < K}
        gt_matched, pred_matched = set(), set()
        for g, gt_mask in gt_segments.items():
            for p, pred_mask in pred_segments.items():
                if g != p:
                    continue
                intersection = int((gt_mask & pred_mask).sum())
                union = int(pred_mask.sum() + gt_mask.sum()) - intersection - int((pred_mask & void).sum())
                if intersection / union > 0.5:
                    tp[g] += 1
                    iou_sum[g] += intersection / union
                    gt_matched.add(g)
                    pred_matched.add(p)
        for g in gt_segments:
            if g not in gt_matched:
                fn[g] += 1
        for p, pred_mask in pred_segments.items():
            if p in pred_matched:
                continue
            if (pred_mask & void).sum() / pred_mask.sum() > 0.5:
                excused += 1
            else:
                fp[p] += 1
    per_class = []  # (PQ, SQ, RQ) per class, None where TP + FP + FN = 0
    for c in range(K):
        if tp[c] + fp[c] + fn[c] == 0:
            per_class.append(None)
            continue
        weighted = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
        per_class.append((iou_sum[c] / weighted, iou_sum[c] / tp[c] if tp[c] else 0.0, tp[c] / weighted))
    counted = [v for v in per_class if v is not None]
    means = [sum(v[i] for v in counted) / len(counted) if counted else math.nan for i in range(3)]
    return {"PQ_St": means[0], "SQ_St": means[1], "RQ_St": means[2], "TP": tp, "FP": fp, "FN": fn,
            "excused": excused, "per_class_pq": [math.nan if v is None else v[0] for v in per_class]}


def assert_pq_st_equal(metric: SemanticMetrics, pairs) -> dict:
    """`metric`'s PQ^St, counts included, against `pq_st_reference` on the same images."""
    expected, r = pq_st_reference(pairs, metric.num_classes, metric.ignore_index), metric.compute()
    assert (metric.tp.tolist(), metric.fp.tolist(), metric.fn.tolist()) == (expected["TP"], expected["FP"],
                                                                          expected["FN"])
    for key in ("PQ_St", "SQ_St", "RQ_St"):
        assert r[key] == pytest.approx(expected[key], abs=1e-12, nan_ok=True)
    assert r["per_class_pq"] == pytest.approx(expected["per_class_pq"], abs=1e-12, nan_ok=True)
    return r


def random_semantic_batch(g: torch.Generator, B: int, K: int, H: int = 16, W: int = 20):
    """(pred, target) (B,H,W): blocky ground truth with ignore pixels, a prediction that keeps each
    block with some chance, so segments match, miss and overlap around IoU 0.5."""
    coarse = torch.randint(0, K, (B, 4, 5), generator=g)
    target = coarse.repeat_interleave(H // 4, 1).repeat_interleave(W // 5, 2)
    keep = torch.rand(B, 4, 5, generator=g) < 0.6
    pred_coarse = torch.where(keep, coarse, torch.randint(0, K, (B, 4, 5), generator=g))
    pred = pred_coarse.repeat_interleave(H // 4, 1).repeat_interleave(W // 5, 2)
    noise = torch.rand(B, H, W, generator=g) < 0.15
    pred = torch.where(noise, torch.randint(0, K, (B, H, W), generator=g), pred)
    # ignore: whole blocks (predictions there are excused when mostly on them) and single pixels
    ignored = (torch.rand(B, 4, 5, generator=g) < 0.15).repeat_interleave(H // 4, 1).repeat_interleave(W // 5, 2)
    target = torch.where(ignored | (torch.rand(B, H, W, generator=g) < 0.05), 255, target)
    return pred, target


def test_pq_st_matches_the_official_algorithm_on_random_maps():
    K = 6
    g = torch.Generator().manual_seed(4)
    metric, pairs = SemanticMetrics(K), []
    for batch in range(5):
        pred, target = random_semantic_batch(g, B=3, K=K)
        if batch == 2:  # (H,W) inputs: one image each
            for b in range(3):
                metric.update(pred[b], target[b])
        else:
            metric.update(pred, target)
        pairs += [(p.numpy(), t.numpy()) for p, t in zip(pred, target)]
    r = assert_pq_st_equal(metric, pairs)
    assert metric.tp.sum() >= 10 and metric.fp.sum() >= 10 and metric.fn.sum() >= 10  # all three occur,
    assert pq_st_reference(pairs, K)["excused"] >= 2  # and predictions excused by the void rule
    assert 0 < r["PQ_St"] < r["SQ_St"] <= 1 and 0 < r["RQ_St"] < 1
    # the same images, one at a time: the same numbers
    one_by_one = SemanticMetrics(K)
    for p, t in pairs:
        one_by_one.update(torch.from_numpy(p), torch.from_numpy(t))
    assert torch.equal(one_by_one.tp, metric.tp) and torch.equal(one_by_one.confusion, metric.confusion)
    assert one_by_one.compute()["PQ_St"] == pytest.approx(r["PQ_St"], abs=1e-12)


def test_pq_st_class_only_predicted_or_only_in_ground_truth():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 2, 2]])
    m = SemanticMetrics(4)
    m.update(pred, target)
    r = assert_pq_st_equal(m, [(pred.numpy(), target.numpy())])
    # class 0: TP, IoU 1 -> PQ 1; class 1: only in ground truth, FN -> 0; class 2: only predicted,
    # FP -> 0; class 3 occurs nowhere -> nan, out of the mean
    assert (m.tp.tolist(), m.fp.tolist(), m.fn.tolist()) == ([1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0])
    assert r["per_class_pq"][:3] == [1.0, 0.0, 0.0] and math.isnan(r["per_class_pq"][3])
    assert (r["PQ_St"], r["SQ_St"], r["RQ_St"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_pq_st_hand_worked_iou_just_above_and_just_below_half():
    # one image of 1 × 200 pixels, K = 3:
    #   class 0: ground truth 0..99, predicted 0..50: intersection 51, union 100 -> IoU 0.51 > 0.5: TP
    #   class 1: ground truth 100..199, predicted 100..148: 49 / 100 = 0.49: no match, one FP and one FN
    #   class 2: predicted 51..99 and 149..199 (100 pixels), absent from the ground truth: one FP
    # PQ_0 = 0.51 / 1 = 0.51, PQ_1 = 0 / (0 + ½ + ½) = 0, PQ_2 = 0 / ½ = 0 -> PQ^St = 0.51 / 3 = 0.17
    # SQ: 0.51, 0 (no TP), 0 -> 0.17;  RQ: 1, 0, 0 -> 1/3
    target = torch.tensor([0] * 100 + [1] * 100)[None]
    pred = torch.tensor([0] * 51 + [2] * 49 + [1] * 49 + [2] * 51)[None]
    m = SemanticMetrics(3)
    m.update(pred, target)
    r = assert_pq_st_equal(m, [(pred.numpy(), target.numpy())])
    assert (m.tp.tolist(), m.fp.tolist(), m.fn.tolist()) == ([1, 0, 0], [0, 1, 1], [0, 1, 0])
    assert r["PQ_St"] == pytest.approx(0.17)
    assert r["SQ_St"] == pytest.approx(0.17)
    assert r["RQ_St"] == pytest.approx(1 / 3)
    assert r["per_class_pq"] == pytest.approx([0.51, 0.0, 0.0])
    assert r["mIoU"] == pytest.approx((0.51 + 0.49 + 0.0) / 3)  # mIoU counts class 2 too (IoU 0)


def test_pq_st_void_pixels():
    X = 255  # ignore
    target = torch.tensor([[0, 0, 0, X, X, X, X, 1, 1, 1, 1, 1]])
    # class 0 covers its 3 pixels and 2 void ones: void is out of the union -> IoU 3 / 3 = 1, a TP.
    # class 2 (absent from the ground truth) lies 2 of 3 pixels on void: more than half -> not a FP.
    pred = torch.tensor([[0, 0, 0, 0, 0, 2, 2, 2, 1, 1, 1, 1]])
    m = SemanticMetrics(3)
    m.update(pred, target)
    r = assert_pq_st_equal(m, [(pred.numpy(), target.numpy())])
    assert m.iou_sum[0] == 1.0 and m.fp[2] == 0 and math.isnan(r["per_class_pq"][2])
    assert r["PQ_St"] == pytest.approx((1 + 0.8) / 2)  # class 1: IoU 4 / 5
    # class 2 now lies 1 of 3 pixels on void (less than half): a FP; and 2 of 4 (exactly half): a FP
    for labels in ([0, 0, 0, 0, 0, 0, 2, 2, 2, 1, 1, 1], [0, 0, 0, 0, 0, 2, 2, 2, 2, 1, 1, 1]):
        pred, m = torch.tensor([labels]), SemanticMetrics(3)
        m.update(pred, target)
        assert_pq_st_equal(m, [(pred.numpy(), target.numpy())])
        assert m.fp[2] == 1


def test_pq_st_merge_sums_both_halves():
    K = 5
    g = torch.Generator().manual_seed(5)
    whole, first, second = SemanticMetrics(K), SemanticMetrics(K), SemanticMetrics(K)
    for i in range(4):
        pred, target = random_semantic_batch(g, B=2, K=K)
        whole.update(pred, target)
        (first if i < 2 else second).update(pred, target)
    fresh = SemanticMetrics(K)
    fresh.merge(first)  # into a metric with no update yet: a copy, `first` stays as it is
    fresh.merge(second)
    assert first.tp.sum() < fresh.tp.sum() == whole.tp.sum()
    first.merge(second)
    for merged in (fresh, first):
        assert all(torch.equal(a, b) for a, b in zip(merged._state()[:4], whole._state()[:4]))  # counts
        assert torch.allclose(merged.iou_sum, whole.iou_sum, rtol=0, atol=1e-12)
        got, expected = merged.compute(), whole.compute()
        assert [got[k] for k in ("PQ_St", "SQ_St", "RQ_St")] == pytest.approx(
            [expected[k] for k in ("PQ_St", "SQ_St", "RQ_St")], abs=1e-12)
    whole.reset()
    assert all(t is None for t in whole._state())
    assert math.isnan(whole.compute()["PQ_St"])  # no class counts


def test_pq_st_prediction_outside_the_classes_is_no_segment():
    X = 255
    target = torch.tensor([[0, 0, 0, 0, 1, 1, X, X]])
    # -1, 2 and 255 are no class of K = 2: class 0 predicted on 3 of its 4 pixels -> IoU 3/4, TP;
    # class 1 predicted nowhere -> FN; the out-of-range pixels on void are no FP of any class
    pred = torch.tensor([[0, 0, 0, -1, 2, 255, 7, -3]])
    m = SemanticMetrics(2)
    m.update(pred, target)
    r = assert_pq_st_equal(m, [(pred.numpy(), target.numpy())])
    assert (m.tp.tolist(), m.fp.tolist(), m.fn.tolist()) == ([1, 0], [0, 0], [0, 1])
    assert r["PQ_St"] == pytest.approx(0.75 / 2)
    assert r["per_class_iou"] == pytest.approx([3 / 4, 0.0])  # mIoU's extra column, unchanged


def test_pq_st_matches_torchmetrics_with_every_class_stuff():
    pytest.importorskip("torchmetrics", reason="torchmetrics is a second PQ^St reference here")
    from torchmetrics.detection import PanopticQuality

    # every class stuff: torchmetrics merges a stuff class's pixels into one segment per image, as
    # PQ^St does; ground-truth ignore (a category it does not know) is its void, left out of the
    # union and excusing predictions more than half on it, as panopticapi. It differs only on
    # predicted void (see the module docstring), which in-range predictions never have.
    K = 6
    reference = PanopticQuality(things=set(), stuffs=set(range(K)), return_per_class=True, return_sq_and_rq=True)
    ours = SemanticMetrics(K)
    g = torch.Generator().manual_seed(6)
    for _ in range(4):
        pred, target = random_semantic_batch(g, B=3, K=K)
        ours.update(pred, target)
        zeros = torch.zeros_like(pred)  # instance ids: none for stuff
        reference.update(torch.stack([pred, zeros], -1), torch.stack([target, zeros], -1))
    r = ours.compute()
    per_class = reference.compute()  # (K, 3): PQ, SQ, RQ, 0 where a class has no counts
    counted = [c for c in range(K) if not math.isnan(r["per_class_pq"][c])]
    assert len(counted) == K and ours.fp.sum() > 0 and ours.fn.sum() > 0
    # the same counts exactly (torchmetrics' states, in its category order: stuff 0..K-1 here)
    for name, count in (("true_positives", ours.tp), ("false_positives", ours.fp), ("false_negatives", ours.fn)):
        assert getattr(reference, name).tolist() == count.tolist()
    # the same numbers up to float32: torchmetrics divides the areas in single precision
    assert r["per_class_pq"] == pytest.approx(per_class[:, 0].tolist(), abs=1e-6)
    mean = per_class[counted].mean(0).tolist()
    assert [r["PQ_St"], r["SQ_St"], r["RQ_St"]] == pytest.approx(mean, abs=1e-6)


# ---------------------------------------------------------------- panoptic: hand-worked cases

# categories: 0 thing, 1 stuff, 2 thing, 3 thing (occurs nowhere -> left out of every average)
IS_THING = [True, False, True, True]


def info(*segments: tuple) -> list[dict]:
    return [{"id": i, "category_id": c, "iscrowd": crowd} for i, c, crowd in segments]


def test_pq_hand_worked_with_void_in_union():
    gt = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 0, 0, 3]])
    gt_info = info((1, 0, 0), (2, 1, 0), (3, 2, 0))
    pred = torch.tensor([[5, 5, 5, 6, 6, 6, 6, 6, 6, 7]])
    pred_info = info((5, 0, 0), (6, 1, 0), (7, 0, 0))
    m = PanopticMetrics(IS_THING)
    m.update(pred, pred_info, gt, gt_info)
    r = m.compute()
    # pred 5 vs gt 1 (cat 0): inter 3, union 3 + 4 - 3 = 4 -> IoU 0.75, TP
    # pred 6 vs gt 2 (cat 1): inter 3, union 6 + 3 - 3 - 2 void pixels = 4 -> 0.75, TP
    #   (without leaving out void, 3/6 = 0.5 would not be a match)
    # pred 7 (cat 0) lies on gt 3 (cat 2): no match, no void -> FP for cat 0; gt 3 -> FN for cat 2
    per_class = r["per_class"]
    assert (per_class[0]["TP"], per_class[0]["FP"], per_class[0]["FN"]) == (1, 1, 0)
    assert per_class[0]["SQ"] == pytest.approx(0.75)
    assert per_class[0]["RQ"] == pytest.approx(1 / 1.5)
    assert per_class[0]["PQ"] == pytest.approx(0.5)
    assert per_class[1]["PQ"] == pytest.approx(0.75)
    assert (per_class[2]["PQ"], per_class[2]["FN"]) == (0.0, 1)
    assert math.isnan(per_class[3]["PQ"])
    assert r["PQ"] == pytest.approx((0.5 + 0.75 + 0.0) / 3)
    assert r["SQ"] == pytest.approx((0.75 + 0.75 + 0.0) / 3)
    assert r["RQ"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert r["PQ_th"] == pytest.approx(0.25)
    assert r["PQ_st"] == pytest.approx(0.75)
    assert (r["n"], r["n_th"], r["n_st"]) == (3, 2, 1)


def test_pq_prediction_mostly_on_void_is_not_a_false_positive():
    gt = torch.tensor([[1, 1, 1, 0, 0, 0]])  # gt 1: category 1 (stuff), then 3 void pixels
    gt_info = info((1, 1, 0))
    pred_info = info((4, 1, 0), (8, 0, 0), (9, 0, 0))
    # pred 8 (2 of 2 pixels void) and pred 9 (1 of 1 void) lie more than half on void: ignored
    m = PanopticMetrics(IS_THING)
    m.update(torch.tensor([[4, 4, 4, 8, 8, 9]]), pred_info, gt, gt_info)
    per_class = m.compute()["per_class"]
    assert (per_class[1]["TP"], per_class[1]["SQ"]) == (1, 1.0)
    assert per_class[0]["FP"] == 0
    # pred 8 now lies 1 of 2 pixels on void: exactly half is not "more than half" -> a FP
    m = PanopticMetrics(IS_THING)
    m.update(torch.tensor([[4, 4, 8, 8, 9, 9]]), pred_info, gt, gt_info)
    per_class = m.compute()["per_class"]
    assert per_class[1]["TP"] == 1 and per_class[1]["SQ"] == pytest.approx(2 / 3)
    assert per_class[0]["FP"] == 1


def test_pq_crowd_regions():
    gt = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2]])
    gt_info = info((1, 0, 1), (2, 1, 0))  # gt 1: a crowd region of category 0
    # pred 5 of category 0 lies on the crowd region of its own category -> neither TP nor FP;
    # the crowd itself is never a FN, so category 0 has no counts and is left out of the mean
    pred = torch.tensor([[5, 5, 5, 6, 6, 6, 6, 6]])
    m = PanopticMetrics(IS_THING)
    m.update(pred, info((5, 0, 0), (6, 1, 0)), gt, gt_info)
    r = m.compute()
    assert r["PQ"] == pytest.approx(4 / 5)  # only category 1: IoU 4 / (5 + 4 - 4)
    assert r["n"] == 1 and math.isnan(r["PQ_th"])
    # the same segment labelled category 2 is not covered by a crowd of its category -> FP
    m = PanopticMetrics(IS_THING)
    m.update(pred, info((5, 2, 0), (6, 1, 0)), gt, gt_info)
    r = m.compute()
    assert r["per_class"][2]["FP"] == 1
    assert r["PQ"] == pytest.approx((4 / 5 + 0) / 2)
    # a crowd segment is never matched, even by a perfect prediction of its category
    m = PanopticMetrics(IS_THING)
    m.update(torch.tensor([[5, 5, 5, 5, 6, 6, 6, 6]]), info((5, 0, 0), (6, 1, 0)), gt, gt_info)
    assert m.compute()["per_class"][0]["TP"] == 0


def test_pq_iou_exactly_half_is_no_match():
    gt = torch.tensor([[1, 1, 2, 2]])
    pred = torch.tensor([[5, 6, 6, 6]])  # pred 6 vs gt 2: inter 2, union 3 -> 2/3; pred 5 vs gt 1: 1/2
    m = PanopticMetrics(IS_THING)
    m.update(pred, info((5, 0, 0), (6, 0, 0)), gt, info((1, 0, 0), (2, 0, 0)))
    c = m.compute()["per_class"][0]
    assert (c["TP"], c["FP"], c["FN"]) == (1, 1, 1)
    assert c["SQ"] == pytest.approx(2 / 3)


def test_pq_rejects_inconsistent_prediction():
    m = PanopticMetrics(IS_THING)
    gt = torch.tensor([[1, 1]])
    with pytest.raises(ValueError, match="segments_info"):
        m.update(torch.tensor([[1, 2]]), info((1, 0, 0)), gt, info((1, 0, 0)))  # id 2 has no info
    with pytest.raises(ValueError, match="segments_info"):
        m.update(torch.tensor([[1, 1]]), info((1, 0, 0), (3, 0, 0)), gt, info((1, 0, 0)))  # 3 not in map


def test_pq_on_real_coco_ground_truth(shared_data):
    dataset = datasets.build_dataset("coco_panoptic", shared_data / "coco_panoptic", split="val")
    perfect, one_missed = PanopticMetrics(dataset.is_thing), PanopticMetrics(dataset.is_thing)
    segments_per_class, missed_classes = {}, []
    for i in range(len(dataset)):
        sample = dataset.load(i)  # the ground truth at its original resolution
        gt, info = torch.from_numpy(sample.pan_seg).long(), sample.segments_info
        assert any(s["iscrowd"] for s in info)  # the samples have crowd regions
        # the ground truth as prediction, crowd segments included: those are neither TP nor FP
        perfect.update(gt, info, gt, info)
        # the same with the largest non-crowd segment left out (void): one FN for its class
        largest = max((s for s in info if not s["iscrowd"]), key=lambda s: int((gt == s["id"]).sum()))
        pred = torch.where(gt == largest["id"], 0, gt)
        one_missed.update(pred, [s for s in info if s is not largest], gt, info)
        missed_classes.append(largest["category_id"])
        for s in info:
            if not s["iscrowd"]:
                segments_per_class[s["category_id"]] = segments_per_class.get(s["category_id"], 0) + 1
    r = perfect.compute()
    assert (r["PQ"], r["SQ"], r["RQ"], r["n"]) == (1.0, 1.0, 1.0, len(segments_per_class))
    # each remaining segment matches with IoU 1: PQ_c = RQ_c = TP / (TP + FN/2)
    expected = []
    for c, n in segments_per_class.items():
        misses = missed_classes.count(c)
        expected.append((n - misses) / (n - misses + 0.5 * misses))
    assert one_missed.compute()["PQ"] == pytest.approx(sum(expected) / len(expected))


# ---------------------------------------------------------------- panoptic: against torchmetrics


def random_panoptic_pair(g: torch.Generator, is_thing: list[bool], H: int = 32, W: int = 40):
    """A ground truth (with void) and a prediction (no void) as category/instance maps, made from
    stuff blocks and thing rectangles; the prediction is a jittered, partly relabelled copy."""
    stuff = [c for c, t in enumerate(is_thing) if not t]
    things = [c for c, t in enumerate(is_thing) if t]

    def draw(coarse, boxes):
        category = coarse.repeat_interleave(H // coarse.shape[0], 0).repeat_interleave(W // coarse.shape[1], 1)
        instance = torch.zeros(H, W, dtype=torch.long)
        for j, (c, y, x, h, w) in enumerate(boxes, start=1):
            category[y : y + h, x : x + w] = c
            instance[y : y + h, x : x + w] = j
        return category, instance

    coarse = torch.tensor(stuff)[torch.randint(len(stuff), (4, 5), generator=g)]
    boxes = []
    for _ in range(6):
        h, w = (int(v) for v in torch.randint(4, 14, (2,), generator=g))
        y, x = int(torch.randint(0, H - h, (1,), generator=g)), int(torch.randint(0, W - w, (1,), generator=g))
        boxes.append((things[int(torch.randint(len(things), (1,), generator=g))], y, x, h, w))
    gt_category, gt_instance = draw(coarse, boxes)
    gt_category[torch.rand(H, W, generator=g) < 0.05] = -1  # void pixels

    pred_coarse = torch.where(torch.rand(coarse.shape, generator=g) < 0.2, torch.tensor(stuff[0]), coarse)
    pred_boxes = []
    for c, y, x, h, w in boxes[1:]:  # box 0 missed: a false negative
        if torch.rand(1, generator=g) < 0.2:
            c = things[int(torch.randint(len(things), (1,), generator=g))]
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        pred_boxes.append((c, min(max(y + dy, 0), H - h), min(max(x + dx, 0), W - w), h, w))
    pred_boxes.append((things[0], 0, 0, 5, 5))  # often a false positive
    pred_category, pred_instance = draw(pred_coarse, pred_boxes)
    return (pred_category, pred_instance), (gt_category, gt_instance)


def to_ids(category: torch.Tensor, instance: torch.Tensor, is_thing: list[bool]):
    """Category/instance maps -> (segment-id map with 0 = void, segments_info); stuff: one segment per class."""
    stuff = ~torch.tensor(is_thing)[category.clamp(min=0)]
    key = torch.where(stuff, -1, instance)  # all pixels of a stuff category form one segment
    pairs = torch.stack([category, key], -1).flatten(0, 1)
    uniques, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    ids = (inverse + 1).view(category.shape)
    segments = []
    for i, (c, _) in enumerate(uniques.tolist(), start=1):
        if c < 0:
            ids[ids == i] = 0
        else:
            segments.append({"id": i, "category_id": c, "iscrowd": 0})
    return ids, segments


def test_pq_matches_torchmetrics_on_random_maps():
    pytest.importorskip("torchmetrics", reason="torchmetrics is the reference PQ here")
    from torchmetrics.detection import PanopticQuality

    is_thing = [True, True, True, False, False, True, False]
    void_category = len(is_thing) + 10  # an unknown category is torchmetrics' void
    reference = PanopticQuality(
        things={c for c, t in enumerate(is_thing) if t},
        stuffs={c for c, t in enumerate(is_thing) if not t},
        return_per_class=True,
        return_sq_and_rq=True,
    )
    ours = PanopticMetrics(is_thing)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        (pc, pi), (gc, gi) = random_panoptic_pair(g, is_thing)
        pred_ids, pred_info = to_ids(pc, pi, is_thing)
        gt_ids, gt_info = to_ids(gc, gi, is_thing)
        ours.update(pred_ids, pred_info, gt_ids, gt_info)
        gc = torch.where(gc < 0, void_category, gc)
        reference.update(torch.stack([pc, pi], -1)[None], torch.stack([gc, gi], -1)[None])
    r = ours.compute()
    # torchmetrics' rows: PQ, SQ, RQ (0 where a class has no counts), things first, then stuff
    order = [c for c, t in enumerate(is_thing) if t] + [c for c, t in enumerate(is_thing) if not t]
    per_class = reference.compute()[torch.tensor(order).argsort()]  # rows back in category order
    counted = [c for c in range(len(is_thing)) if not math.isnan(r["per_class"][c]["PQ"])]
    assert sum(r["per_class"][c]["TP"] for c in counted) >= 5  # the case exercises matches,
    assert sum(r["per_class"][c]["FP"] for c in counted) >= 3  # false positives
    assert sum(r["per_class"][c]["FN"] for c in counted) >= 3  # and false negatives
    for c in range(len(is_thing)):
        expected = per_class[c].tolist() if c in counted else [0.0, 0.0, 0.0]
        got = [r["per_class"][c][k] if c in counted else 0.0 for k in ("PQ", "SQ", "RQ")]
        assert got == pytest.approx(expected, abs=1e-6)
    mean = per_class[counted].mean(0).tolist()  # torchmetrics averages over the same classes
    assert [r["PQ"], r["SQ"], r["RQ"]] == pytest.approx(mean, abs=1e-6)


def test_pq_differs_from_torchmetrics_on_predicted_void():
    pytest.importorskip("torchmetrics", reason="torchmetrics is the reference PQ here")
    from torchmetrics.detection import PanopticQuality

    # gt: one stuff segment of 6 pixels; pred: 3 of them, the rest predicted void.
    # panopticapi: IoU = 3 / (3 + 6 - 3) = 0.5 -> no match (1 FP, 1 FN, PQ 0).
    # torchmetrics drops predicted void from the union: 3 / (3 + 6 - 3 - 3) = 1 -> a perfect TP.
    gt = torch.tensor([[1, 1, 1, 1, 1, 1]])
    pred = torch.tensor([[2, 2, 2, 0, 0, 0]])
    ours = PanopticMetrics([False, True])
    ours.update(pred, info((2, 0, 0)), gt, info((1, 0, 0)))
    c = ours.compute()["per_class"][0]
    assert (c["TP"], c["FP"], c["FN"], c["PQ"]) == (0, 1, 1, 0.0)
    reference = PanopticQuality(things={1}, stuffs={0}, allow_unknown_preds_category=True, return_per_class=True)
    pred_tm = torch.tensor([[[0, 0]] * 3 + [[5, 0]] * 3])[None]  # category 5 = unknown = void
    reference.update(pred_tm, torch.zeros(1, 1, 6, 2, dtype=torch.long))
    assert reference.compute()[0, 1].item() == pytest.approx(1.0)  # columns: things {1}, then stuff {0}


# ---------------------------------------------------------------- DDP: sync() sums over processes


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    g = torch.Generator().manual_seed(rank)
    semantic = SemanticMetrics(5)
    semantic.update(*random_semantic_batch(g, B=3, K=5))
    semantic.sync()
    panoptic = PanopticMetrics([True, False])
    panoptic.update(torch.tensor([[1, 1, 2]]), info((1, rank, 0), (2, 1, 0)), torch.tensor([[1, 1, 2]]),
                    info((1, 0, 0), (2, 1, 0)))
    panoptic.sync()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"semantic": [t.tolist() for t in semantic._state()], "stats": panoptic.stats.tolist()}, f)
    torch.distributed.destroy_process_group()


def test_sync_all_reduces_across_processes(tmp_path):
    world_size = 2
    torch.multiprocessing.spawn(_ddp_worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)),
                                nprocs=world_size)
    semantic, panoptic = SemanticMetrics(5), PanopticMetrics([True, False])
    for rank in range(world_size):  # the same updates, on one process
        g = torch.Generator().manual_seed(rank)
        semantic.update(*random_semantic_batch(g, B=3, K=5))  # PQ^St counts and matched IoUs too
        panoptic.update(torch.tensor([[1, 1, 2]]), info((1, rank, 0), (2, 1, 0)), torch.tensor([[1, 1, 2]]),
                        info((1, 0, 0), (2, 1, 0)))
    for rank in range(world_size):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["semantic"] == [t.tolist() for t in semantic._state()]  # confusion, PQ^St counts
        assert result["stats"] == panoptic.stats.tolist()
