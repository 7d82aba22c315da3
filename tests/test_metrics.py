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
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import data
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
    dataset = data.build_dataset("coco_panoptic", shared_data / "coco_panoptic", split="val")
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
    semantic.update(torch.randint(0, 5, (3, 8, 8), generator=g), torch.randint(0, 5, (3, 8, 8), generator=g))
    semantic.sync()
    panoptic = PanopticMetrics([True, False])
    panoptic.update(torch.tensor([[1, 1, 2]]), info((1, rank, 0), (2, 1, 0)), torch.tensor([[1, 1, 2]]),
                    info((1, 0, 0), (2, 1, 0)))
    panoptic.sync()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"confusion": semantic.confusion.tolist(), "stats": panoptic.stats.tolist()}, f)
    torch.distributed.destroy_process_group()


def test_sync_all_reduces_across_processes(tmp_path):
    world_size = 2
    torch.multiprocessing.spawn(_ddp_worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)),
                                nprocs=world_size)
    semantic, panoptic = SemanticMetrics(5), PanopticMetrics([True, False])
    for rank in range(world_size):  # the same updates, on one process
        g = torch.Generator().manual_seed(rank)
        semantic.update(torch.randint(0, 5, (3, 8, 8), generator=g), torch.randint(0, 5, (3, 8, 8), generator=g))
        panoptic.update(torch.tensor([[1, 1, 2]]), info((1, rank, 0), (2, 1, 0)), torch.tensor([[1, 1, 2]]),
                        info((1, 0, 0), (2, 1, 0)))
    for rank in range(world_size):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["confusion"] == semantic.confusion.tolist()
        assert result["stats"] == panoptic.stats.tolist()
