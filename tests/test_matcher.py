"""Tests for matcher.py: the cost of Eq. (3.2c) and the assignment it gives.

References: a naive per-pair loop for the cost (float64, written from the formulas), brute
force over all permutations for the assignment, and the Hugging Face port's
MaskFormerHungarianMatcher (skipped when transformers is not importable).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from matcher import FixedMatcher, HungarianMatcher

ALPHA, GAMMA = 0.25, 2.0
STRIDE = 2  # targets are STRIDE x the prediction size in these tests


def random_case(seed: int, num_segments: list[int], N: int = 5, K: int = 4, h: int = 6, w: int = 5,
                stride: int = STRIDE, unique_labels: bool = False) -> tuple[dict, list[dict]]:
    """Random model outputs and one target dict per image (len(num_segments) images)."""
    g = torch.Generator().manual_seed(seed)
    B = len(num_segments)
    outputs = {"pred_logits": torch.randn(B, N, K + 1, generator=g) * 2,
               "pred_masks": torch.randn(B, N, h, w, generator=g) * 2}
    targets = []
    for n in num_segments:
        if unique_labels:
            labels = torch.randperm(K, generator=g)[:n]
        else:
            labels = torch.randint(0, K, (n,), generator=g)
        masks = torch.rand(n, h * stride, w * stride, generator=g) > 0.6
        targets.append({"labels": labels, "masks": masks})
    return outputs, targets


def naive_cost(pred_logits: torch.Tensor, pred_masks: torch.Tensor, target: dict, stride: int = STRIDE,
               cost_class: float = 1.0, cost_focal: float = 20.0, cost_dice: float = 1.0) -> torch.Tensor:
    """C(i, j) of Eq. (3.2c) for one image, one pair at a time, in float64."""
    N = pred_logits.shape[0]
    M = len(target["labels"])
    logits = pred_logits.double()
    cost = torch.zeros(N, M, dtype=torch.float64)
    for i in range(N):
        probs = logits[i].exp() / logits[i].exp().sum()
        m = torch.sigmoid(pred_masks[i].double())
        for j in range(M):
            # nearest downsampling by an integer factor keeps every stride-th pixel
            t = target["masks"][j, ::stride, ::stride].double()
            focal = torch.where(t == 1, -ALPHA * (1 - m) ** GAMMA * torch.log(m),
                                -(1 - ALPHA) * m ** GAMMA * torch.log(1 - m)).mean()
            dice = 1 - (2 * (m * t).sum() + 1) / (m.sum() + t.sum() + 1)
            cost[i, j] = -cost_class * probs[target["labels"][j]] + cost_focal * focal + cost_dice * dice
    return cost


def brute_force(cost: torch.Tensor) -> tuple[list[int], list[int]]:
    """Minimum-cost one-to-one matching of min(N, M) pairs by trying every permutation."""
    N, M = cost.shape
    best, best_pairs = math.inf, []
    if M <= N:  # choose a distinct query for every target
        for queries in itertools.permutations(range(N), M):
            total = sum(cost[q, j].item() for j, q in enumerate(queries))
            if total < best:
                best, best_pairs = total, sorted(zip(queries, range(M)))
    else:  # choose a distinct target for every query
        for chosen in itertools.permutations(range(M), N):
            total = sum(cost[i, t].item() for i, t in enumerate(chosen))
            if total < best:
                best, best_pairs = total, list(zip(range(N), chosen))
    return [q for q, _ in best_pairs], [t for _, t in best_pairs]


def test_cost_matrix_equals_naive_per_pair_loop():
    outputs, targets = random_case(0, [4, 2])
    matcher = HungarianMatcher()
    for b in range(2):
        cost = matcher.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b], targets[b])
        assert cost.shape == (5, len(targets[b]["labels"]))
        torch.testing.assert_close(cost.double(), naive_cost(outputs["pred_logits"][b],
                                                             outputs["pred_masks"][b], targets[b]),
                                   rtol=1e-5, atol=1e-5)


def test_cost_weights_scale_each_term():
    outputs, targets = random_case(1, [3])
    args = (outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0])
    reference = naive_cost(*args, cost_class=2.0, cost_focal=0.5, cost_dice=3.0)
    cost = HungarianMatcher(cost_class=2.0, cost_focal=0.5, cost_dice=3.0).cost_matrix(*args)
    torch.testing.assert_close(cost.double(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed,N,M", [(0, 4, 4), (1, 5, 3), (2, 6, 1), (3, 5, 5), (4, 3, 5), (5, 2, 4)])
def test_matching_equals_brute_force(seed, N, M):
    outputs, targets = random_case(seed, [M], N=N)
    (query_idx, target_idx), = HungarianMatcher()(outputs, targets)
    expected_query, expected_target = brute_force(naive_cost(outputs["pred_logits"][0],
                                                             outputs["pred_masks"][0], targets[0]))
    assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
    assert query_idx.tolist() == expected_query
    assert target_idx.tolist() == expected_target


def test_more_ground_truth_than_queries_matches_every_query_once():
    # 3 queries, 6 segments: min(N, M) = 3 pairs; 3 segments stay unmatched (not supervised)
    outputs, targets = random_case(7, [6], N=3)
    (query_idx, target_idx), = HungarianMatcher()(outputs, targets)
    assert query_idx.tolist() == [0, 1, 2]
    assert len(set(target_idx.tolist())) == 3
    cost = naive_cost(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0])
    assert (query_idx.tolist(), target_idx.tolist()) == brute_force(cost)


def test_indices_sorted_by_query():
    outputs, targets = random_case(8, [5, 2, 4], N=8)
    for query_idx, target_idx in HungarianMatcher()(outputs, targets):
        assert query_idx.tolist() == sorted(query_idx.tolist())
        assert len(query_idx) == len(target_idx) == len(set(target_idx.tolist()))


def test_batched_result_equals_per_image_result():
    outputs, targets = random_case(9, [3, 0, 5, 1], N=6)
    matcher = HungarianMatcher()
    batched = matcher(outputs, targets)
    for b in range(4):
        single_outputs = {key: value[b:b + 1] for key, value in outputs.items()}
        (query_idx, target_idx), = matcher(single_outputs, [targets[b]])
        assert torch.equal(batched[b][0], query_idx) and torch.equal(batched[b][1], target_idx)


def test_empty_targets():
    outputs, targets = random_case(10, [0, 2, 0])
    indices = HungarianMatcher()(outputs, targets)
    for b in (0, 2):
        query_idx, target_idx = indices[b]
        assert query_idx.shape == (0,) and target_idx.shape == (0,)
        assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
    assert len(indices[1][0]) == 2
    outputs, targets = random_case(11, [0, 0])  # a batch with no segments at all
    assert all(len(q) == 0 and len(t) == 0 for q, t in HungarianMatcher()(outputs, targets))


def test_bool_and_float_masks_give_the_same_matching():
    outputs, targets = random_case(12, [3, 4])
    float_targets = [{"labels": t["labels"], "masks": t["masks"].float()} for t in targets]
    bool_indices = HungarianMatcher()(outputs, targets)
    float_indices = HungarianMatcher()(outputs, float_targets)
    for (q1, t1), (q2, t2) in zip(bool_indices, float_indices):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)


def test_non_finite_cost_raises_and_names_the_image():
    outputs, targets = random_case(14, [2, 0, 3])
    outputs["pred_masks"][2, 1, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"images \[2\] have NaN"):
        HungarianMatcher()(outputs, targets)


def test_one_device_to_host_copy_per_call(monkeypatch):
    """A batch of 4 images (one without segments) is matched with one `.cpu()` of the costs and one
    `.tolist()` of the label range, not one per image: on CUDA each such copy waits for the GPU.
    The assignment is the one image-by-image matching gives."""
    outputs, targets = random_case(16, [3, 0, 2, 4])
    calls = {"cpu": 0, "tolist": 0, "item": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    indices = HungarianMatcher()(outputs, targets)
    assert calls == {"cpu": 1, "tolist": 1, "item": 0}
    monkeypatch.undo()
    for b, target in enumerate(targets):
        one_image = HungarianMatcher()({k: v[b:b + 1] for k, v in outputs.items()}, [target])[0]
        assert all(torch.equal(x, y) for x, y in zip(indices[b], one_image))


def test_bad_targets_raise_clear_errors():
    outputs, targets = random_case(15, [2])
    bad_label = [{"labels": torch.tensor([0, 4]), "masks": targets[0]["masks"]}]  # K = 4: 4 is ∅
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        HungarianMatcher()(outputs, bad_label)
    with pytest.raises(ValueError, match="masks"):
        HungarianMatcher()(outputs, [{"labels": targets[0]["labels"], "masks": targets[0]["masks"][:1]}])
    with pytest.raises(ValueError, match="2 target dicts for a batch of 1"):
        HungarianMatcher()(outputs, targets * 2)
    outputs, targets = random_case(15, [2, 1])  # the batch is matched as one: its masks share one size
    targets[1] = {"labels": targets[1]["labels"], "masks": targets[1]["masks"][:, :-1]}
    with pytest.raises(ValueError, match="share the padded batch size"):
        HungarianMatcher()(outputs, targets)
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(0, 0, 0)


def test_fixed_matcher_pairs_query_i_with_class_i():
    # N = K = 4; labels 2, 0, 3 -> queries 0, 2, 3 get segments 1, 0, 2; query 1 is ∅
    outputs, _ = random_case(16, [0], N=4, K=4)
    masks = torch.zeros(3, 12, 10, dtype=torch.bool)
    targets = [{"labels": torch.tensor([2, 0, 3]), "masks": masks}]
    (query_idx, target_idx), = FixedMatcher()(outputs, targets)
    assert query_idx.tolist() == [0, 2, 3] and target_idx.tolist() == [1, 0, 2]
    # more queries than classes is allowed: the extra queries are always ∅
    outputs, targets = random_case(17, [3, 0], N=6, K=4, unique_labels=True)
    for target, (query_idx, target_idx) in zip(targets, FixedMatcher()(outputs, targets)):
        assert torch.equal(target["labels"][target_idx], query_idx)
        assert query_idx.tolist() == sorted(query_idx.tolist())


def test_fixed_matcher_errors():
    outputs, targets = random_case(18, [2], N=3, K=4, unique_labels=True)
    with pytest.raises(ValueError, match="3 queries for 4 classes"):
        FixedMatcher()(outputs, targets)
    outputs, _ = random_case(19, [0], N=4, K=4)
    repeated = [{"labels": torch.tensor([1, 1]), "masks": torch.zeros(2, 12, 10, dtype=torch.bool)}]
    with pytest.raises(ValueError, match="more than once"):
        FixedMatcher()(outputs, repeated)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    outputs, targets = random_case(20, [3, 0, 4], N=6)
    cuda_outputs = {key: value.cuda() for key, value in outputs.items()}
    cuda_targets = [{key: value.cuda() for key, value in t.items()} for t in targets]
    for (q1, t1), (q2, t2) in zip(HungarianMatcher()(outputs, targets),
                                  HungarianMatcher()(cuda_outputs, cuda_targets)):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)


def test_equals_hugging_face_matcher():
    """Same indices as transformers' MaskFormerHungarianMatcher with the MaskFormer costs (1, 20, 1).

    Call differences, not definitional ones: HF takes (masks_queries_logits, class_queries_logits,
    mask_labels, class_labels) positionally, its cost_mask defaults to 1.0 (its model passes
    config.mask_weight = 20), and its resize of the labels fails on bool masks, so it gets float
    masks here. It also replaces NaN/inf costs by a large number where we raise.
    """
    try:
        from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher
    except ImportError as error:
        pytest.skip(f"transformers' MaskFormer port is not importable ({error}); it is only a reference")
    outputs, targets = random_case(21, [3, 0, 7, 1], N=6, K=5, h=8, w=12, stride=4)
    hf_matcher = MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    hf_indices = hf_matcher(outputs["pred_masks"], outputs["pred_logits"],
                            [t["masks"].float() for t in targets], [t["labels"] for t in targets])
    for (q1, t1), (q2, t2) in zip(HungarianMatcher()(outputs, targets), hf_indices):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)
