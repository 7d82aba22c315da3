"""Tests for the classroom exercises (exercises/check.py, exercises/*.ipynb, instructor/).

Every checker must accept the reference solution (instructor/solutions.py, written from the paper,
independent of the project's code) and reject realistic wrong answers, written out below, with the
named hint ("Hint [no_smoothing]: ...") that check.py promises; among them, for every exercise,
an answer that calls or imports the project's own implementation. Every exercise notebook must run
top to bottom unsolved and report "not implemented yet", and run with the reference solution
pasted in. The student bundle must hold no solution and no guide.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
EXERCISES_DIR = REPO / "exercises"
INSTRUCTOR_DIR = REPO / "instructor"
sys.path[:0] = [str(EXERCISES_DIR), str(INSTRUCTOR_DIR)]

import bundle  # noqa: E402
import check  # noqa: E402
import solutions  # noqa: E402

import backbones  # noqa: E402
import inference  # noqa: E402
import losses  # noqa: E402
import maskformer  # noqa: E402
import matcher  # noqa: E402
import metrics  # noqa: E402
from backbones import window_partition as project_window_partition  # noqa: E402

# Hints that do not belong to one exercise's list of mistakes
GENERAL_HINTS = ["uses_project_code", "uses_checker_code", "in_place", "not_differentiable", "not_finite",
                 "constant_offset", "constant_factor", "transposed"]

# ---------------------------------------------------------------------------------------------
# Realistic wrong answers, one list per exercise: (wrong function, name of the hint it must get)
# ---------------------------------------------------------------------------------------------


def dice_without_smoothing(x, t):
    p = x.sigmoid()
    return 1 - 2 * (p * t).sum(1) / (p.sum(1) + t.sum(1))


def dice_on_logits(x, t):
    return 1 - (2 * (x * t).sum(1) + 1) / (x.sum(1) + t.sum(1) + 1)


def dice_coefficient(x, t):
    return 1 - solutions.dice_loss(x, t)


def dice_summed_over_masks(x, t):
    return solutions.dice_loss(x, t).sum()


def dice_with_means(x, t):
    p = x.sigmoid()
    return 1 - (2 * (p * t).mean(1) + 1) / (p.mean(1) + t.mean(1) + 1)


def dice_thresholded(x, t):
    p = (x.sigmoid() > 0.5).float()  # not differentiable
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def dice_in_place(x, t):
    loss = solutions.dice_loss(x, t)
    t.mul_(0)  # overwrites the caller's targets
    return loss


def dice_by_the_project(x, t):
    return torch.stack([losses.dice_loss(x[i:i + 1], t[i:i + 1], 1) for i in range(len(x))])


def focal_alpha_everywhere(x, t, alpha=0.25, gamma=2.0):
    p = x.sigmoid()
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * (1 - p_t) ** gamma * F.binary_cross_entropy_with_logits(x, t, reduction="none")).mean(1)


def focal_without_gamma(x, t, alpha=0.25, gamma=2.0):
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (alpha_t * F.binary_cross_entropy_with_logits(x, t, reduction="none")).mean(1)


def focal_summed(x, t, alpha=0.25, gamma=2.0):
    return solutions.sigmoid_focal_loss(x, t, alpha, gamma) * x.shape[1]


def focal_hard_coded(x, t, alpha=0.25, gamma=2.0):
    return solutions.sigmoid_focal_loss(x, t)  # ignores its arguments


def focal_plain_bce(x, t, alpha=0.25, gamma=2.0):
    return F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1)


def focal_naive_log(x, t, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (-alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).mean(1)  # inf once p_t rounds to 0


def focal_log_of_each_term(x, t, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))  # 0 · (−inf) = NaN at a logit of 50
    return (alpha_t * (1 - p_t) ** gamma * ce).mean(1)


def focal_bce_on_probabilities(x, t, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    ce = F.binary_cross_entropy(p, t, reduction="none")  # clamps log to −100: finite but wrong at ±50
    return (alpha_t * (1 - p_t) ** gamma * ce).mean(1)


def focal_clamped(x, t, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x).clamp(1e-6, 1 - 1e-6)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (-alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).mean(1)


def focal_importing_the_project(x, t, alpha=0.25, gamma=2.0):
    import losses

    return torch.stack([losses.sigmoid_focal_loss(x[i:i + 1], t[i:i + 1], 1, alpha=alpha, gamma=gamma)
                        for i in range(len(x))])


def cost_with_plus_p(x, m, y, t, cost_class=1.0, cost_focal=20.0, cost_dice=1.0):
    correct = solutions.matching_cost(x, m, y, t, cost_class, cost_focal, cost_dice)
    return correct + 2 * cost_class * x.softmax(-1)[:, y]  # +p instead of −p


def cost_with_log(x, m, y, t, cost_class=1.0, cost_focal=20.0, cost_dice=1.0):
    correct = solutions.matching_cost(x, m, y, t, cost_class, cost_focal, cost_dice)
    prob = x.softmax(-1)[:, y]
    return correct + cost_class * (prob - prob.log())  # −p replaced by −log p


def cost_without_weights(x, m, y, t, cost_class=1.0, cost_focal=20.0, cost_dice=1.0):
    return solutions.matching_cost(x, m, y, t, 1.0, 1.0, 1.0)


def cost_softmax_without_no_object(x, m, y, t, cost_class=1.0, cost_focal=20.0, cost_dice=1.0):
    correct = solutions.matching_cost(x, m, y, t, cost_class, cost_focal, cost_dice)
    return correct + cost_class * (x.softmax(-1)[:, y] - x[:, :-1].softmax(-1)[:, y])


def cost_transposed(x, m, y, t, cost_class=1.0, cost_focal=20.0, cost_dice=1.0):
    return solutions.matching_cost(x, m, y, t, cost_class, cost_focal, cost_dice).T


def cost_by_the_project(x, m, y, t, cost_class=1.0, cost_focal=20.0, cost_dice=1.0):
    N, P = m.shape
    hungarian = matcher.HungarianMatcher(cost_class, cost_focal, cost_dice)
    return hungarian.cost_matrix(x, m.view(N, 1, P), {"labels": y, "masks": t.view(-1, 1, P)})


def masks_without_sigmoid(e, p):
    return torch.einsum("bnc,bchw->bnhw", e, p)


def masks_softmax_over_queries(e, p):
    return torch.einsum("bnc,bchw->bnhw", e, p).softmax(1)


def masks_wrong_einsum(e, p):
    return torch.einsum("bnc,bchw->bnhw", e, p.transpose(2, 3)).sigmoid()  # H and W swapped


def masks_by_the_project(e, p):
    model = SimpleNamespace(mask_embed=torch.nn.Identity(), config=SimpleNamespace(head="per_pixel_plus"))
    return maskformer.MaskFormer.segment(model, e, p)["sem_seg_logits"].sigmoid()


def semantic_with_no_object(x, m):
    return torch.einsum("bnk,bnhw->bkhw", x.softmax(-1), m.sigmoid())


def semantic_softmax_after_dropping(x, m):
    return torch.einsum("bnk,bnhw->bkhw", x[..., :-1].softmax(-1), m.sigmoid())


def semantic_without_sigmoid(x, m):
    return torch.einsum("bnk,bnhw->bkhw", x.softmax(-1)[..., :-1], m)


def semantic_through_the_checker(x, m):
    return check.inference.semantic_inference(x, m)


def student_pq(pred, pred_segments, gt, gt_segments, strict=True, same_category=True, half=True,
               per_category=True):
    """A student's PQ written as loops, with switches for four mistakes (defaults: right)."""
    stats = {}  # category -> [IoU sum, TP, FP, FN]
    matched_pred, matched_gt = set(), set()
    for g_id, g_cat in gt_segments.items():
        for p_id, p_cat in pred_segments.items():
            if same_category and g_cat != p_cat:
                continue
            iou = int(((gt == g_id) & (pred == p_id)).sum()) / int(((gt == g_id) | (pred == p_id)).sum())
            if (iou > 0.5) if strict else (iou >= 0.5):
                stats.setdefault(g_cat, [0.0, 0, 0, 0])
                stats[g_cat][0] += iou
                stats[g_cat][1] += 1
                matched_pred.add(p_id)
                matched_gt.add(g_id)
    for g_id, g_cat in gt_segments.items():
        if g_id not in matched_gt:
            stats.setdefault(g_cat, [0.0, 0, 0, 0])[3] += 1
    for p_id, p_cat in pred_segments.items():
        if p_id not in matched_pred:
            stats.setdefault(p_cat, [0.0, 0, 0, 0])[2] += 1
    w = 0.5 if half else 1.0

    def scores(iou, tp, fp, fn):
        sq = iou / tp if tp else 0.0
        rq = tp / (tp + w * fp + w * fn)
        return sq * rq, sq, rq

    if per_category:
        per = [scores(*values) for values in stats.values()]
        return {k: sum(p[i] for p in per) / len(per) for i, k in enumerate(("PQ", "SQ", "RQ"))}
    total = [sum(values[i] for values in stats.values()) for i in range(4)]
    return dict(zip(("PQ", "SQ", "RQ"), scores(*total)))


def pq_non_strict(*args):
    return student_pq(*args, strict=False)


def pq_without_halves(*args):
    return student_pq(*args, half=False)


def pq_pooled(*args):
    return student_pq(*args, per_category=False)


def pq_any_category(*args):
    return student_pq(*args, same_category=False)


def pq_by_the_project(pred, pred_segments, gt, gt_segments):
    pq = metrics.PanopticMetrics([True] * 8)
    pq.update(pred, [{"id": i, "category_id": c} for i, c in pred_segments.items()],
              gt, [{"id": i, "category_id": c} for i, c in gt_segments.items()])
    return {key: value for key, value in pq.compute().items() if key in ("PQ", "SQ", "RQ")}


def windows_by_reshape(x, ws):
    return x.reshape(-1, ws, ws, x.shape[-1])


def windows_column_major(x, ws):
    B, H, W, C = x.shape
    return x.reshape(B, H // ws, ws, W // ws, ws, C).permute(0, 3, 1, 2, 4, 5).reshape(-1, ws, ws, C)


def windows_not_flattened(x, ws):
    B, H, W, C = x.shape
    return x.reshape(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)


def shift_mask_bool(Hp, Wp, ws, s):
    return solutions.shifted_window_mask(Hp, Wp, ws, s) != 0


def shift_mask_inf(Hp, Wp, ws, s):
    return solutions.shifted_window_mask(Hp, Wp, ws, s).masked_fill(
        solutions.shifted_window_mask(Hp, Wp, ws, s) != 0, float("-inf"))


def shift_mask_inverted(Hp, Wp, ws, s):
    return -100.0 - solutions.shifted_window_mask(Hp, Wp, ws, s)


def mask_from_bands(Hp, Wp, ws, row_bands, col_bands, partition=solutions.window_partition):
    """The student's usual recipe: label the regions slice by slice, cut into windows, compare labels."""
    labels = torch.zeros(Hp, Wp)
    for r, rows in enumerate(row_bands):
        for c, cols in enumerate(col_bands):
            labels[rows, cols] = 3 * r + c
    windows = partition(labels[None, :, :, None], ws).reshape(-1, ws * ws)
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape).masked_fill(differ, -100.0)


def shift_mask_wrapped_at_start(Hp, Wp, ws, s):
    return mask_from_bands(Hp, Wp, ws, [slice(0, s), slice(s, None)], [slice(0, s), slice(s, None)])


def shift_mask_off_by_one(Hp, Wp, ws, s):
    # the last band should be slice(Hp - s, Hp): it starts one row (column) too early here
    return mask_from_bands(Hp, Wp, ws, [slice(0, Hp - ws), slice(Hp - ws, Hp - s - 1), slice(Hp - s - 1, Hp)],
                           [slice(0, Wp - ws), slice(Wp - ws, Wp - s - 1), slice(Wp - s - 1, Wp)])


def shift_mask_two_bands(Hp, Wp, ws, s):
    """Not a mistake: bands [0, Hp − ws) and [Hp − ws, Hp − s) never share a window, so two bands
    per axis, split at Hp − s, give the same mask. The checker must accept it."""
    return mask_from_bands(Hp, Wp, ws, [slice(0, Hp - s), slice(Hp - s, Hp)], [slice(0, Wp - s), slice(Wp - s, Wp)])


def shift_mask_with_the_project_partition(Hp, Wp, ws, s):
    bands = [slice(0, Hp - ws), slice(Hp - ws, Hp - s), slice(Hp - s, Hp)]
    col_bands = [slice(0, Wp - ws), slice(Wp - ws, Wp - s), slice(Wp - s, Wp)]
    return mask_from_bands(Hp, Wp, ws, bands, col_bands, partition=project_window_partition)


def loss_without_no_object_weight(c, m, t, i, no_object_weight=0.1):
    return solutions.mask_classification_loss(c, m, t, i, 1.0)


def loss_ignoring_the_matching(c, m, t, i, no_object_weight=0.1):
    in_order = [(torch.arange(len(q)), torch.arange(len(s))) for q, s in i]  # prediction k with segment k
    return solutions.mask_classification_loss(c, m, t, in_order, no_object_weight)


def loss_normalised_per_image(c, m, t, i, no_object_weight=0.1):
    per_image = [solutions.mask_classification_loss(c[b:b + 1], m[b:b + 1], [t[b]], [i[b]], no_object_weight)
                 for b in range(len(t))]
    whole = solutions.mask_classification_loss(c, m, t, i, no_object_weight)
    return {"loss_ce": whole["loss_ce"], "loss_focal": torch.stack([p["loss_focal"] for p in per_image]).mean(),
            "loss_dice": torch.stack([p["loss_dice"] for p in per_image]).mean()}


def loss_mean_over_matched(c, m, t, i, no_object_weight=0.1):
    whole = solutions.mask_classification_loss(c, m, t, i, no_object_weight)
    logits = torch.cat([m[b, q] for b, (q, _) in enumerate(i)])
    masks = torch.cat([t[b]["masks"][s] for b, (_, s) in enumerate(i)])
    return {"loss_ce": whole["loss_ce"], "loss_focal": solutions.sigmoid_focal_loss(logits, masks).mean(),
            "loss_dice": solutions.dice_loss(logits, masks).mean()}  # NaN when the batch has no segment


def loss_by_the_project(c, m, t, i, no_object_weight=0.1):
    criterion = losses.MaskFormerLoss(c.shape[-1] - 1, matcher=torch.nn.Identity(), no_object_weight=no_object_weight,
                                      num_aux_layers=0)
    outputs = {"pred_logits": c, "pred_masks": m[:, :, None]}
    targets = [{"labels": x["labels"], "masks": x["masks"][:, None]} for x in t]
    num_masks, class_weight_sum = losses.loss_normalisers(targets, c.shape[1], no_object_weight, c.device)
    return {**criterion.loss_labels(outputs, targets, i, class_weight_sum),
            **criterion.loss_masks(outputs, targets, i, num_masks)}


def student_panoptic(c, m, is_thing, object_mask_threshold=0.8, overlap_threshold=0.8, rank_by_score=True,
                     overlap=True, merge_stuff=True):
    """A vectorised student answer, with switches for three mistakes (defaults: right)."""
    K = c.shape[-1] - 1
    scores, classes = c.softmax(-1).max(-1)
    keep = ((classes != K) & (scores > object_mask_threshold)).nonzero().flatten()
    pan_seg = torch.zeros(m.shape[1:], dtype=torch.long)
    if len(keep) == 0:
        return pan_seg, []
    masks = m[keep].sigmoid()
    winner = ((scores[keep, None, None] if rank_by_score else 1) * masks).argmax(0)
    won = torch.stack([(winner == k).sum() for k in range(len(keep))])
    own = (masks >= 0.5).flatten(1).sum(1)
    segments, stuff = [], {}
    for k, query in enumerate(keep.tolist()):
        if won[k] == 0 or (overlap and (own[k] == 0 or won[k] < overlap_threshold * own[k])):
            continue
        category = int(classes[query])
        if merge_stuff and not is_thing[category] and category in stuff:
            pan_seg[winner == k] = stuff[category]
            continue
        segments.append({"id": len(segments) + 1, "category_id": category})
        stuff[category] = segments[-1]["id"]
        pan_seg[winner == k] = segments[-1]["id"]
    return pan_seg, segments


WRONG = {
    "dice": [(dice_without_smoothing, "no_smoothing"), (dice_on_logits, "logits_not_probabilities"),
             (dice_coefficient, "coefficient_not_loss"), (dice_summed_over_masks, "summed_over_masks"),
             (dice_with_means, "means_not_sums"), (dice_thresholded, "not_differentiable"),
             (dice_in_place, "in_place"), (dice_by_the_project, "uses_project_code"),
             (losses.dice_loss, "uses_project_code")],
    "focal": [(focal_alpha_everywhere, "alpha_everywhere"), (focal_without_gamma, "gamma_missing"),
              (focal_summed, "sum_over_pixels"), (focal_hard_coded, "arguments_ignored"),
              (focal_plain_bce, "plain_bce"), (focal_naive_log, "unstable_log"),
              (focal_bce_on_probabilities, "unstable_log"),
              (focal_log_of_each_term, "unstable_log"), (focal_clamped, "unstable_log"),
              (focal_importing_the_project, "uses_project_code")],
    "matching_cost": [(cost_with_plus_p, "class_term_sign"), (cost_with_log, "minus_log_p"),
                      (cost_without_weights, "weights_missing"),
                      (cost_softmax_without_no_object, "softmax_without_no_object"),
                      (cost_transposed, "transposed"), (cost_by_the_project, "uses_project_code")],
    "mask_embedding": [(masks_without_sigmoid, "sigmoid_missing"), (masks_softmax_over_queries, "softmax_over_queries"),
                       (masks_wrong_einsum, "height_width_swapped"), (masks_by_the_project, "uses_project_code")],
    "semantic_inference": [(semantic_with_no_object, "no_object_kept"),
                           (semantic_softmax_after_dropping, "no_object_dropped_before_softmax"),
                           (semantic_without_sigmoid, "sigmoid_missing"),
                           (inference.semantic_inference, "uses_project_code"),
                           (semantic_through_the_checker, "uses_project_code")],
    "panoptic_quality": [(pq_non_strict, "iou_not_strict"), (pq_without_halves, "halves_missing"),
                         (pq_pooled, "pooled_over_classes"), (pq_any_category, "any_category"),
                         (pq_by_the_project, "uses_project_code")],
    "window_partition": [(windows_by_reshape, "reshape_without_permute"), (windows_column_major, "column_major"),
                         (windows_not_flattened, "not_flattened"), (project_window_partition, "uses_project_code"),
                         (functools.partial(backbones.window_partition), "uses_project_code")],
    "shifted_window_mask": [(shift_mask_bool, "booleans"), (shift_mask_inf, "minus_inf"),
                            (shift_mask_inverted, "inverted"), (shift_mask_wrapped_at_start, "wrapped_at_start"),
                            (shift_mask_off_by_one, "band_off_by_one"),
                            (shift_mask_with_the_project_partition, "uses_project_code")],
    "mask_classification_loss": [(loss_without_no_object_weight, "no_object_weight_missing"),
                                 (loss_ignoring_the_matching, "matching_ignored"),
                                 (loss_normalised_per_image, "num_masks_per_image"),
                                 (loss_mean_over_matched, "no_masks_in_batch"),
                                 (loss_by_the_project, "uses_project_code")],
    "panoptic_inference": [(functools.partial(student_panoptic, rank_by_score=False), "rank_by_mask_only"),
                           (functools.partial(student_panoptic, overlap=False), "overlap_filter_missing"),
                           (functools.partial(student_panoptic, merge_stuff=False), "stuff_not_merged"),
                           (inference.panoptic_inference, "uses_project_code")],
}


def listed_mistakes(name: str, monkeypatch) -> list:
    """The Mistake list a checker passes to run_checks."""
    listed = {}
    run_checks = check.run_checks

    def capture(title, fn, cases, reference, mistakes=(), **kwargs):
        listed["mistakes"] = list(mistakes)
        return run_checks(title, fn, cases, reference, mistakes, **kwargs)

    monkeypatch.setattr(check, "run_checks", capture)
    exercise = check.EXERCISES[name]
    exercise.check(getattr(solutions, exercise.function), verbose=False)
    monkeypatch.setattr(check, "run_checks", run_checks)
    return listed["mistakes"]


def test_every_exercise_has_wrong_answers_and_a_notebook():
    assert set(WRONG) == set(check.EXERCISES)
    notebooks = {p.name for p in EXERCISES_DIR.glob("*.ipynb")}
    assert notebooks == {exercise.notebook for exercise in check.EXERCISES.values()}
    assert 10 <= len(check.EXERCISES) <= 12
    assert not (EXERCISES_DIR / "solutions.py").exists()  # the solutions live in instructor/


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_checker_accepts_the_reference_solution(name, capsys):
    exercise = check.EXERCISES[name]
    ok, message = exercise.check(getattr(solutions, exercise.function))
    assert ok, message
    assert "Correct" in capsys.readouterr().out  # the verdict is printed


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_checker_rejects_wrong_answers_with_a_named_hint(name):
    exercise = check.EXERCISES[name]
    assert len(WRONG[name]) >= 3 and "uses_project_code" in {hint for _, hint in WRONG[name]}
    for wrong, hint in WRONG[name]:
        ok, message = exercise.check(wrong, verbose=False)
        label = getattr(wrong, "__name__", repr(wrong))
        assert not ok, f"{name}: {label} was accepted"
        assert f"Hint [{hint}]:" in message, f"{name}: {label} got {message!r}"


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_every_listed_mistake_is_caught_with_its_own_hint(name, monkeypatch):
    # a mistake equivalent to the right answer (or shadowed by an earlier one) would never show its hint
    exercise = check.EXERCISES[name]
    mistakes = listed_mistakes(name, monkeypatch)
    assert len(mistakes) >= 4
    # the mistakes are check.py's own functions, which the guard rejects in a solution: run them past it
    monkeypatch.setattr(check, "_guard", lambda title, fn: None)
    for mistake in mistakes:
        assert re.fullmatch(r"[a-z_]+", mistake.name)
        ok, message = exercise.check(mistake.wrong, verbose=False)
        assert not ok and message.endswith(f"Hint [{mistake.name}]: {mistake.text}"), \
            f"{name}: the mistake {mistake.name!r} gave {message!r}"


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_checker_reports_unsolved_and_crashing_functions(name, capsys):
    exercise = check.EXERCISES[name]

    def stub(*args, **kwargs):
        raise NotImplementedError

    ok, message = exercise.check(stub)
    assert not ok and check.NOT_IMPLEMENTED in message
    assert check.NOT_IMPLEMENTED in capsys.readouterr().out

    def crashes(*args, **kwargs):
        raise ValueError("shapes do not line up")

    ok, message = exercise.check(crashes, verbose=False)
    assert not ok and "raised ValueError: shapes do not line up" in message


def test_equivalent_answers_are_accepted():
    # answers written differently from the references are as right as they are
    assert check.check_shifted_window_mask(shift_mask_two_bands, verbose=False)[0]
    assert check.check_mask_embedding(
        lambda e, p: torch.einsum("bnc,bchw->bnhw", e, p).sigmoid(), verbose=False)[0]
    assert check.check_window_partition(
        lambda x, ws: x.unfold(1, ws, ws).unfold(2, ws, ws).permute(0, 1, 2, 4, 5, 3).reshape(-1, ws, ws, x.shape[-1]),
        verbose=False)[0]

    def focal_with_logsigmoid(x, t, alpha=0.25, gamma=2.0):
        x_t = torch.where(t > 0, x, -x)  # the logit of the true label
        alpha_t = torch.where(t > 0, alpha, 1 - alpha)
        return (-alpha_t * (1 - x_t.sigmoid()) ** gamma * F.logsigmoid(x_t)).mean(1)

    assert check.check_focal(focal_with_logsigmoid, verbose=False)[0]
    assert check.check_panoptic_inference(student_panoptic, verbose=False)[0]


def test_the_guard_finds_every_way_of_using_the_project():
    from inference import semantic_inference as project_semantic

    def helper(x, m):
        return inference.semantic_inference(x, m)

    def calls_a_helper(x, m):
        return helper(x, m)

    def imports_inside(x, m):
        from inference import semantic_inference

        return semantic_inference(x, m)

    def imports_by_name(x, m):
        return importlib.import_module("inference").semantic_inference(x, m)

    def default_argument(x, m, implementation=inference.semantic_inference):
        return implementation(x, m)

    def closure():
        project = inference

        return lambda x, m: project.semantic_inference(x, m)

    ways = {inference.semantic_inference: "inference.semantic_inference",
            lambda x, m: inference.semantic_inference(x, m): "inference.semantic_inference",
            lambda x, m: project_semantic(x, m): "inference.semantic_inference",
            calls_a_helper: "inference.semantic_inference", imports_inside: "import inference",
            imports_by_name: "the module 'inference'", default_argument: "inference.semantic_inference",
            closure(): "inference", semantic_through_the_checker: "inference",
            lambda e, p: check._masks_reference(e, p): "check._masks_reference"}
    for fn, used in ways.items():
        assert check.project_code_used(fn) == used
    # torch, the student's own helpers, the checker's own mistakes and the reference solutions are fine
    for exercise in check.EXERCISES.values():
        assert check.project_code_used(getattr(solutions, exercise.function)) is None
    assert check.project_code_used(student_panoptic) is None
    assert check.project_code_used(pq_non_strict) is None
    assert check.project_code_used(student_pq) is None
    assert check.project_code_used(lambda x, t: F.binary_cross_entropy_with_logits(x, t)) is None


def test_generic_hints_name_offsets_factors_and_infinities():
    x = torch.tensor([1.0, 2.0, 4.0])
    assert check.generic_hint(x + 0.5, x)[0] == "constant_offset" and "0.5" in check.generic_hint(x + 0.5, x)[1]
    name, text = check.generic_hint(3 * x, x)
    assert name == "constant_factor" and "3 × the reference" in text
    assert check.generic_hint(torch.zeros(3, 2), torch.zeros(2, 3))[0] == "transposed"
    assert check.generic_hint(torch.tensor([1.0, float("inf"), 4.0]), x)[0] == "not_finite"
    assert check.tensor_problem(x + 1e-7, x) is None
    assert "expected shape (3,)" in check.tensor_problem(torch.zeros(4), x)
    assert "is inf at index (1,)" in check.tensor_problem(torch.tensor([1.0, float("inf"), 4.0]), x)


def test_focal_hint_at_extreme_logits():
    # the naive −log p_t passes every case but the one with logits of ±50: there it returns inf
    ok, message = check.check_focal(focal_naive_log, verbose=False)
    assert "extreme logits of ±50" in message and "inf" in message
    assert "Hint [unstable_log]" in message and "F.logsigmoid" in message and "numerical stability" in message
    x = torch.tensor([[50.0, -50.0]])
    assert torch.isinf(focal_naive_log(x, torch.tensor([[0.0, 1.0]]))).all()
    assert torch.isfinite(solutions.sigmoid_focal_loss(x, torch.tensor([[0.0, 1.0]]))).all()


def test_pq_mistake_generator_and_scenes():
    # a student's PQ written out (student_pq, switches at their defaults) is the project's PQ; the random
    # scenes exercise true positives, false positives and false negatives
    totals = torch.zeros(3)
    for seed in range(50, 56):
        scene = check._random_panoptic(seed)
        assert check.pq_problem(student_pq(*scene), check._pq_reference(*scene)) is None
        pred, pred_segments, gt, gt_segments = scene
        pq = check.metrics.PanopticMetrics([True] * 4)
        pq.update(pred, [{"id": i, "category_id": c} for i, c in pred_segments.items()],
                  gt, [{"id": i, "category_id": c} for i, c in gt_segments.items()])
        totals += pq.stats[1:].sum(1)
    assert (totals > 0).all(), f"TP, FP, FN over the scenes: {totals.tolist()}"
    # the IoU = 0.5 scene: one segment of class 1 unmatched on both sides, background matched
    result = check._pq_reference(*check._half_iou_case())
    assert result["RQ"] == pytest.approx((1.0 + 0.0) / 2)


def test_panoptic_scenes_make_every_filter_act():
    # a student's panoptic inference agrees with the project's, and the scenes make the overlap filter
    # and the merging of stuff act somewhere
    dropped_by_overlap = merged_stuff = 0
    for seed in range(80, 87):
        scene = check._panoptic_scene(seed)
        assert check.panoptic_problem(student_panoptic(*scene), inference.panoptic_inference(*scene)) is None
        segments = len(inference.panoptic_inference(*scene)[1])
        dropped_by_overlap += len(check._panoptic_mistake(*scene, mistake="overlap_filter_missing")[1]) > segments
        merged_stuff += len(check._panoptic_mistake(*scene, mistake="stuff_not_merged")[1]) > segments
    assert dropped_by_overlap > 0 and merged_stuff > 0


def checker_functions() -> dict[str, object]:
    """Every function and class defined in check.py (its module dict, __module__ == check)."""
    return {name: value for name, value in vars(check).items()
            if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == check.__name__}


def takes_arguments(value) -> bool:
    try:
        return bool(inspect.signature(value).parameters)
    except (TypeError, ValueError):
        return False


def test_mistake_functions_have_no_right_default():
    # check.py ships to students: no function of it computes a right answer from its defaults. A mistake
    # function needs the mistake named (keyword-only, no default) and refuses a name it does not know
    helpers = checker_functions()
    mistake_functions = [value for name, value in helpers.items() if name.endswith("_mistake")]
    assert len(mistake_functions) >= 5
    for function in mistake_functions:
        parameter = inspect.signature(function).parameters["mistake"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is inspect.Parameter.empty
    scene = check._panoptic_scene(80)
    class_logits, _, targets, indices = check._loss_inputs(70, (2, 3), N=6, K=4, P=30)
    for call in [lambda: check._dice_mistake(torch.zeros(1, 4), torch.zeros(1, 4), mistake="none"),
                 lambda: check._focal_mistake(torch.zeros(1, 4), torch.zeros(1, 4), mistake="none"),
                 lambda: check._pq_mistake(*check._half_iou_case(), mistake="none"),
                 lambda: check._class_term_mistake(class_logits, targets, indices, mistake="none"),
                 lambda: check._panoptic_mistake(*scene, mistake="none")]:
        with pytest.raises(ValueError, match="unknown"):
            call()
    # no variant with switches (the old `_dice`, `_focal`, `_pq_variant`, ...) is left
    assert not [name for name in helpers if name.endswith("_variant") or name in ("_dice", "_focal")]


WRAPPER_STYLES = {  # a notebook cell's one-line ways of calling check.HELPER inside a solution ({p}: a prefix)
    "global": "def {p}wrap(*args, **kwargs):\n    return check.{name}(*args, **kwargs)\n",
    "import": "def {p}wrap(*args, **kwargs):\n    from check import {name}\n    return {name}(*args, **kwargs)\n",
    "dynamic_import": "def {p}wrap(*args, **kwargs):\n"
                      "    return importlib.import_module('check').{name}(*args, **kwargs)\n",
    "default": "def {p}wrap(*args, _helper=check.{name}, **kwargs):\n    return _helper(*args, **kwargs)\n",
    "closure": "def {p}make():\n    helper = check.{name}\n    return lambda *args, **kwargs: helper(*args, **kwargs)\n"
               "{p}wrap = {p}make()\n",
    "helper": "def {p}inner(*args, **kwargs):\n    return check.{name}(*args, **kwargs)\n"
              "def {p}wrap(*args, **kwargs):\n    return {p}inner(*args, **kwargs)\n",
    "partial": "{p}wrap = functools.partial(check.{name})\n",
}


def test_wrappers_around_every_checker_function_are_rejected(tmp_path):
    # a student's one-line wrapper around any function or class of check.py, written outside the
    # repository as a notebook cell is, is refused by every exercise with the hint uses_checker_code
    helpers = sorted(name for name, value in checker_functions().items() if takes_arguments(value))
    assert {"_dice_mistake", "_focal_mistake", "_pq_mistake", "_class_term_mistake", "_panoptic_mistake",
            "_loss_reference", "_cost_reference", "_pq_reference", "_masks_reference", "_per_mask", "run_checks",
            "check_dice", "Mistake", "Case"} <= set(helpers)
    assert REPO not in tmp_path.resolve().parents
    source = "import functools\nimport importlib\n\nimport check\n\n" + "".join(
        WRAPPER_STYLES[style].format(name=name, p=f"{style}_{name}_") for style in WRAPPER_STYLES for name in helpers)
    path = tmp_path / "notebook_cell.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("notebook_cell", path)
    cell = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cell)
    for exercise_name, exercise in check.EXERCISES.items():
        for style in WRAPPER_STYLES:
            for name in helpers:
                ok, message = exercise.check(getattr(cell, f"{style}_{name}_wrap"), verbose=False)
                assert not ok and "Hint [uses_checker_code]:" in message and "the checker's own code" in message, \
                    f"{exercise_name}: a {style} wrapper around check.{name} got {message!r}"


def test_teacher_command_line():
    done = subprocess.run([sys.executable, str(EXERCISES_DIR / "check.py"), "--all", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(check.EXERCISES)} of {len(check.EXERCISES)} reference solutions pass" in done.stdout
    for exercise in check.EXERCISES.values():
        assert f"{exercise.difficulty}, {exercise.minutes} min" in done.stdout


def test_teacher_command_line_fails_on_a_broken_solution(monkeypatch, capsys):
    broken = SimpleNamespace(**{e.function: getattr(solutions, e.function) for e in check.EXERCISES.values()})
    broken.dice_loss = dice_without_smoothing
    monkeypatch.setitem(sys.modules, "solutions", broken)
    assert check.main(["--all", "--quiet"]) == 1
    assert "FAILED: dice" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The instructor's folder: the student bundle and the guide
# ---------------------------------------------------------------------------------------------


def test_student_bundle_has_no_solutions_and_its_checkers_work(tmp_path):
    out = tmp_path / "students"
    done = subprocess.run([sys.executable, str(INSTRUCTOR_DIR / "bundle.py"), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not [f for f in files if f.startswith("instructor/") or "solutions" in f or "GUIDE" in f]
    assert "tests/test_exercises.py" not in files
    expected = {f"exercises/{e.notebook}" for e in check.EXERCISES.values()} | {"exercises/check.py", "losses.py"}
    assert expected <= files
    # --all says clearly that the solutions are not there ...
    done = subprocess.run([sys.executable, "exercises/check.py", "--all"], cwd=out, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "reference solutions are not in this bundle" in done.stdout
    # ... while a student's checker call works as in the full repository
    student = ("import sys; sys.path.insert(0, 'exercises'); import check, torch; "
               "ok, _ = check.check_dice(lambda x, t: 1 - (2 * (x.sigmoid() * t).sum(1) + 1) / "
               "(x.sigmoid().sum(1) + t.sum(1) + 1)); sys.exit(0 if ok else 1)")
    done = subprocess.run([sys.executable, "-c", student], cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bundle_as_zip_and_bad_output(tmp_path):
    count = bundle.write_bundle(tmp_path / "students.zip")
    names = zipfile.ZipFile(tmp_path / "students.zip").namelist()
    assert len(names) == count == len(bundle.student_files())
    assert "students/exercises/check.py" in names and not [n for n in names if "/instructor/" in n]
    assert set(bundle.repository_files()) - set(bundle.student_files()) >= {
        "instructor/solutions.py", "instructor/GUIDE.md", "instructor/bundle.py"}
    with pytest.raises(SystemExit):
        bundle.main([str(tmp_path / "students.zip")])  # exists already
    with pytest.raises(SystemExit):
        bundle.main([str(REPO / "exercises" / "inside.zip")])


def test_guide_answers_every_exercise_and_names_every_hint(monkeypatch):
    guide = (INSTRUCTOR_DIR / "GUIDE.md").read_text()
    for name, exercise in check.EXERCISES.items():
        section = guide.split(f"## {exercise.notebook}")[1].split("\n## ")[0] if f"## {exercise.notebook}" in guide \
            else pytest.fail(f"GUIDE.md has no section '## {exercise.notebook}'")
        assert "Answers" in section and "Common mistakes" in section and "What the checker tests" in section, name
        for mistake in listed_mistakes(name, monkeypatch):
            assert f"`{mistake.name}`" in section, f"GUIDE.md, {exercise.notebook}: hint {mistake.name} not described"
        # every question of the notebook has a numbered answer
        questions = len(re.findall(r"^\d\. ", "".join(
            cell.source for cell in read_notebook(EXERCISES_DIR / exercise.notebook).cells
            if cell.cell_type == "markdown" and "Question" in cell.source), re.M))
        answers = len(re.findall(r"^\d\. ", section.split("Answers")[1].split("Common mistakes")[0], re.M))
        assert answers >= max(questions, 1), f"{exercise.notebook}: {questions} questions, {answers} answers"
    for hint in GENERAL_HINTS + ["unstable_log"]:
        assert f"`{hint}`" in guide


def test_students_readme_lists_every_exercise():
    readme = (EXERCISES_DIR / "README.md").read_text()
    for exercise in check.EXERCISES.values():
        row = next((line for line in readme.splitlines() if f"[`{exercise.notebook}`]" in line), "")
        assert f"| {exercise.difficulty} | {exercise.minutes} min |" in row, exercise.notebook


def test_exercise_files_cite_only_the_repository():
    for path in [*EXERCISES_DIR.iterdir(), *INSTRUCTOR_DIR.iterdir()]:
        if path.is_file():
            text = path.read_text()
            assert "PAPER.md" not in text and "REFERENCE.md" not in text and "shared/" not in text, path.name


# ---------------------------------------------------------------------------------------------
# The exercise notebooks
# ---------------------------------------------------------------------------------------------


def read_notebook(path: Path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev requirement (requirements-dev.txt)")
    return nbformat.read(path, as_version=4)


def stub_cell(nb, exercise) -> str:
    stubs = [cell.source for cell in nb.cells
             if cell.cell_type == "code" and "raise NotImplementedError" in cell.source]
    assert len(stubs) == 1, f"{exercise.notebook}: expected one stub cell"
    return stubs[0]


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_notebook_stub_matches_the_checker_and_states_difficulty(name):
    exercise = check.EXERCISES[name]
    nb = read_notebook(EXERCISES_DIR / exercise.notebook)
    (stub,) = [node for node in ast.parse(stub_cell(nb, exercise)).body
               if isinstance(node, ast.FunctionDef) and node.name == exercise.function]
    # same parameters and defaults as the reference solution, so the checker can call either
    reference = inspect.signature(getattr(solutions, exercise.function))
    assert [a.arg for a in stub.args.args] == list(reference.parameters)
    defaults = [ast.literal_eval(d) for d in stub.args.defaults]
    assert defaults == [p.default for p in reference.parameters.values() if p.default is not inspect.Parameter.empty]
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert any(f"check.{exercise.check.__name__}({exercise.function})" in source for source in code)
    intro = nb.cells[0].source
    assert f"**Difficulty:** {exercise.difficulty} · **Expected time:** about {exercise.minutes} minutes" in intro


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_notebook_runs_with_the_reference_solution(name, monkeypatch, capsys):
    """The cells after the checker (plots, demos) run once the exercise is solved: the stub cell is
    replaced by the reference solution and the code cells run in this process."""
    pytest.importorskip("matplotlib", reason="matplotlib is a dev requirement (requirements-dev.txt)")
    import matplotlib

    matplotlib.use("Agg")
    exercise = check.EXERCISES[name]
    nb = read_notebook(EXERCISES_DIR / exercise.notebook)
    monkeypatch.chdir(EXERCISES_DIR)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the setup cell prepends to it
    namespace = {"__name__": "__main__"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if "raise NotImplementedError" in cell.source:
            namespace[exercise.function] = getattr(solutions, exercise.function)
            continue
        exec(compile(cell.source, exercise.notebook, "exec"), namespace)  # noqa: S102
    assert namespace["ok"], namespace["message"]
    assert "solve the exercise first" not in capsys.readouterr().out
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_unsolved_notebook_runs_and_says_not_implemented(name, monkeypatch):
    """As a student opens it: a python3 Jupyter kernel, working directory exercises/."""
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev requirement (requirements-dev.txt)")
    pytest.importorskip("ipykernel", reason="ipykernel is a dev requirement (requirements-dev.txt)")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no Jupyter kernel named python3: run `python -m ipykernel install --user --name python3`")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it; tiny tensors, a busy machine
    nb = read_notebook(EXERCISES_DIR / check.EXERCISES[name].notebook)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(EXERCISES_DIR)}}).execute()
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert check.NOT_IMPLEMENTED in text
