"""tooling/experiments.py and what it added: DETR's box matching (matcher.BoxMatcher), attention weights
(maskformer.MultiHeadAttention(need_weights=True)), the shapes options, and a --quick study end to end."""

import itertools
import json
import math
import statistics

import numpy as np
import pytest
import torch
from torch import nn

import data
import maskformer
import matcher
from machinery import datasets, shapes
from tooling import experiments


# ---- the box cost: hand-computed GIoU, boxes from masks, brute-force assignment ----------------
def test_generalized_box_iou_of_hand_computed_cases():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    # overlapping: intersection 1, union 4 + 4 - 1 = 7, enclosing box (0,0)-(3,3) of area 9
    # disjoint: intersection 0, union 4 + 1 = 5, enclosing (0,0)-(4,4) of area 16
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [3.0, 3.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    giou = matcher.generalized_box_iou(a, b)
    expected = torch.tensor([[1 / 7 - (9 - 7) / 9, 0 - (16 - 5) / 16, 1.0]])
    assert torch.allclose(giou, expected, atol=1e-6)


def test_mask_boxes_of_a_hand_drawn_mask():
    masks = torch.zeros(2, 4, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1-2, columns 2-4
    boxes = matcher.mask_boxes(masks)
    assert torch.allclose(boxes[0], torch.tensor([2 / 8, 1 / 4, 5 / 8, 3 / 4]))
    assert torch.equal(boxes[1], torch.zeros(4))  # empty mask


def naive_box(mask: np.ndarray) -> np.ndarray:
    """(cx, cy, w, h) and (x0, y0, x1, y1) of a mask by np.nonzero, normalised."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4)
    return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])


def naive_giou(a: np.ndarray, b: np.ndarray) -> float:
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_box_matcher_finds_the_brute_force_optimum_of_detr_box_cost():
    torch.manual_seed(0)
    N, n, h, w, K = 5, 3, 12, 12, 4
    for trial in range(3):
        pred_masks = torch.randn(1, N, h, w) * 3
        pred_logits = torch.randn(1, N, K + 1)
        gt = torch.zeros(n, h, w, dtype=torch.bool)
        for j in range(n):  # a random rectangle per segment
            y0, x0 = np.random.default_rng(trial * 10 + j).integers(0, 8, 2)
            gt[j, y0:y0 + 4, x0:x0 + 3] = True
        labels = torch.tensor([0, 2, 3])
        (query_idx, target_idx), = matcher.BoxMatcher()({"pred_logits": pred_logits, "pred_masks": pred_masks},
                                                        [{"labels": labels, "masks": gt}])
        prob = pred_logits[0].softmax(-1).numpy()
        cost = np.zeros((N, n))
        for i, j in itertools.product(range(N), range(n)):  # DETR's cost, one pair at a time
            pb, tb = naive_box(pred_masks[0, i].numpy() > 0), naive_box(gt[j].numpy())
            centre_size = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]])  # noqa: E731
            l1 = np.abs(centre_size(pb) - centre_size(tb)).sum()
            cost[i, j] = -prob[i, labels[j]] + 5 * l1 - 2 * naive_giou(pb, tb)
        best = min(sum(cost[perm[j], j] for j in range(n)) for perm in itertools.permutations(range(N), n))
        found = sum(cost[q, t] for q, t in zip(query_idx.tolist(), target_idx.tolist()))
        assert len(query_idx) == n and found == pytest.approx(best, abs=1e-5)


# ---- attention weights -------------------------------------------------------------------------
def test_attention_weights_reproduce_the_layer_output_and_torch_multihead_attention():
    torch.manual_seed(0)
    attention = maskformer.MultiHeadAttention(16, num_heads=4).eval()
    for p in attention.parameters():  # non-zero biases too
        nn.init.normal_(p, std=0.3)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    out, weights = attention(q, k, v, need_weights=True)
    assert weights.shape == (2, 4, 5, 9)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 5), atol=1e-6)
    assert torch.allclose(out, attention(q, k, v), atol=1e-5)  # the default (fused) path
    # the weights alone rebuild the output: per head Σ_j w[i, j] · v_proj(v)[j], heads joined, out_proj
    values = attention.v_proj(v).view(2, 9, 4, 4).transpose(1, 2)  # (B, heads, Lk, d)
    rebuilt = attention.out_proj((weights @ values).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(rebuilt, out, atol=1e-5)
    # an independent implementation: torch.nn.MultiheadAttention with the same weights
    reference = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                                  attention.v_proj.weight]))
        reference.in_proj_bias.copy_(torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
        reference.out_proj.weight.copy_(attention.out_proj.weight)
        reference.out_proj.bias.copy_(attention.out_proj.bias)
    ref_out, ref_weights = reference(q, k, v, need_weights=True, average_attn_weights=False)
    assert torch.allclose(ref_out, out, atol=1e-5) and torch.allclose(ref_weights, weights, atol=1e-6)


def test_cross_attention_maps_leave_the_outputs_unchanged_and_the_model_as_it_was():
    torch.manual_seed(0)
    model = maskformer.build_model("tiny", num_classes=5).eval()
    images = torch.randn(1, 3, 64, 64)
    outputs, maps = experiments.cross_attention_maps(model, images)
    plain = model(images)
    assert torch.allclose(outputs["pred_masks"], plain["pred_masks"], atol=1e-5)
    assert len(maps) == model.config.dec_layers
    assert maps[0].shape == (1, model.config.num_heads, model.config.num_queries, 2 * 2)  # res5 of 64 px: 2x2
    assert all("forward" not in vars(layer.cross_attn) for layer in model.transformer.decoder_layers)


# ---- shapes options ------------------------------------------------------------------------------
def test_many_class_and_stuff_shapes_have_consistent_labels():
    dataset = datasets.build_dataset("shapes", split="val", task="panoptic", image_size=64, num_images=4,
                                 colours=3, stuff=4)
    assert dataset.num_classes == 4 + 6 * 3 == len(dataset.class_names)
    assert dataset.is_thing == [False] * 4 + [True] * 18
    assert dataset.class_names[4:7] == ["red circle", "green circle", "yellow circle"]
    for index in range(4):
        sample = dataset.load(index)
        category = {s["id"]: s["category_id"] for s in sample.segments_info}
        # every pixel's class is its segment's category; stuff classes have one segment each
        assert np.array_equal(np.vectorize(category.get)(sample.pan_seg), sample.sem_seg)
        stuff = [s["category_id"] for s in sample.segments_info if not s["isthing"]]
        assert len(stuff) == len(set(stuff)) and all(c < 4 for c in stuff)
        for s in sample.segments_info:  # a colour class's pixels carry its colour (± the shading ramp)
            if s["isthing"]:
                tone = (s["category_id"] - 4) % 3
                mean = sample.image[sample.pan_seg == s["id"]].mean(0)
                assert np.abs(mean - shapes.TONE_PALETTE[tone]).max() < 0.2 * 255 + 12


def test_shapes_options_are_checked():
    with pytest.raises(data.DatasetError, match="colours=17"):
        datasets.build_dataset("shapes", colours=17)
    assert shapes.num_shapes_classes(16, 0) == 97 and shapes.num_shapes_classes(0, 0) == 7


# ---- the study machinery -------------------------------------------------------------------------
def test_mean_std_is_the_sample_standard_deviation():
    values = [0.5, 0.7, 0.65]
    assert experiments.mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert experiments.mean_std([0.3]) == (0.3, 0.0)


class FixedOutputs(nn.Module):
    """A stand-in model whose class predictions are given: to count Figure 4's categories by hand."""

    def __init__(self, predictions: list[list[int]], num_classes: int):
        super().__init__()
        self.predictions, self.calls = predictions, 0
        self.config = maskformer.MaskFormerConfig(backbone="none", num_classes=num_classes,
                                                  num_queries=len(predictions[0]))

    def forward(self, images):
        rows = self.predictions[self.calls:self.calls + len(images)]
        self.calls += len(images)
        return {"pred_logits": nn.functional.one_hot(torch.tensor(rows), self.config.num_classes + 1).float()}


def test_categories_per_query_counts_distinct_non_empty_classes():
    # 3 images, 3 queries, K = 4 (class 4 = ∅): query 0 says 1, 1, 2; query 1 always ∅; query 2 says 0, 3, 3
    predictions = [[1, 4, 0], [1, 4, 3], [2, 4, 3]]
    model = FixedOutputs(predictions, num_classes=4)
    loader = [{"images": torch.zeros(2, 3, 32, 32)}, {"images": torch.zeros(1, 3, 32, 32)}]
    assert experiments.categories_per_query(model, loader) == [2, 0, 2]


def test_segments_of_classes_gives_one_segment_per_class():
    label_map = torch.tensor([[0, 0, 2], [2, -1, 2]])
    pan_seg, segments = experiments.segments_of_classes(label_map)
    assert pan_seg.tolist() == [[1, 1, 3], [3, 0, 3]]
    assert segments == [{"id": 1, "category_id": 0}, {"id": 3, "category_id": 2}]


def test_quick_study_end_to_end_then_resumes_without_training(tmp_path, monkeypatch):
    experiments.main(["table4", "--quick", "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")])
    result = json.loads((tmp_path / "results" / "table4.json").read_text())
    assert list(result["arms"]) == list(experiments.STUDIES["table4"].arms)
    for arm in result["arms"].values():
        assert len(arm["runs"]) == 1 and arm["mean"]["mIoU"] == arm["runs"][0]["mIoU"] and arm["std"]["mIoU"] == 0
        assert 0 <= arm["mean"]["mIoU"] <= 1
    table = (tmp_path / "results" / "table4.md").read_text()
    first = result["arms"]["PerPixelBaseline"]["mean"]["mIoU"]
    assert f"| PerPixelBaseline | {100 * first:.1f} ± 0.0 | 1 |" in table
    assert (tmp_path / "results" / "table4.png").stat().st_size > 0

    import train

    def no_training(args):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train, "train", no_training)
    experiments.main(["table4", "--quick", "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")])
    again = json.loads((tmp_path / "results" / "table4.json").read_text())
    assert again["arms"] == result["arms"] and math.isfinite(again["wall_s"])


# ---- the command-line flags ------------------------------------------------------------------------
def test_train_flags_for_box_matching_and_the_shapes_options():
    import train

    args = train.parse_args(["--matcher", "box", "--shapes-stuff", "4", "--task", "panoptic", "--crop-size", "64",
                             "--val-images", "2"])
    recipe = train.resolve_recipe(args)
    train_set, val_set = train.build_datasets(args, recipe)
    assert recipe.task == train_set.task == "panoptic" and train_set.num_classes == 4 + 6
    assert val_set.dataset.stuff == 4 and len(val_set) == 2
    _, criterion = train.build_model_and_criterion(args, recipe, train_set.num_classes)
    assert isinstance(criterion.matcher, matcher.BoxMatcher)
    for argv in (["--matcher", "box", "--head", "per_pixel"], ["--data", "ade20k", "--shapes-colours", "2"]):
        with pytest.raises(SystemExit):
            train.parse_args(argv)


def test_figure4_on_the_study_runs_and_on_a_given_checkpoint(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    experiments.main(["figure4", "--quick", "--results", str(results), "--work", str(work)])
    result = json.loads((results / "figure4.json").read_text())
    assert list(result["counts"]) == ["K = 97, seed 0", "K = 7, seed 0"]
    for label, counts in result["counts"].items():
        assert len(counts) == 20 and counts == sorted(counts, reverse=True)
        assert result["summary"][label]["never"] == counts.count(0)
    checkpoint = work / experiments.run_key(experiments.FIGURE4_ARMS["K = 7"], 0) / "last.pt"
    experiments.main(["figure4", "--checkpoint", str(checkpoint), "--val-images", "4"])
    again = json.loads((checkpoint.parent / "figure4" / "figure4.json").read_text())
    assert list(again["counts"]) == [str(checkpoint)] and len(again["counts"][str(checkpoint)]) == 20
