"""Tests for the classroom exercises (exercises/check.py, exercises/solutions.py, exercises/*.ipynb).

Every checker must accept the reference solution (written from the paper, independent of the
project's code) and reject realistic wrong answers, written out below, naming the mistake where
check.py promises a hint. Every exercise notebook must run top to bottom unsolved and report
"not implemented yet" instead of crashing.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
EXERCISES_DIR = REPO / "exercises"
sys.path.insert(0, str(EXERCISES_DIR))

import check  # noqa: E402
import solutions  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Realistic wrong answers, one list per exercise: (wrong function, text the verdict must contain)
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


def cost_with_log(x, m, y, t, cost_class=1.0, cost_mask=20.0, cost_dice=1.0):
    correct = solutions.matching_cost(x, m, y, t, cost_class, cost_mask, cost_dice)
    prob = x.softmax(-1)[:, y]
    return correct + cost_class * (prob - prob.log())  # −p replaced by −log p


def cost_without_weights(x, m, y, t, cost_class=1.0, cost_mask=20.0, cost_dice=1.0):
    return solutions.matching_cost(x, m, y, t, 1.0, 1.0, 1.0)


def cost_softmax_without_no_object(x, m, y, t, cost_class=1.0, cost_mask=20.0, cost_dice=1.0):
    correct = solutions.matching_cost(x, m, y, t, cost_class, cost_mask, cost_dice)
    return correct + cost_class * (x.softmax(-1)[:, y] - x[:, :-1].softmax(-1)[:, y])


def cost_transposed(x, m, y, t, cost_class=1.0, cost_mask=20.0, cost_dice=1.0):
    return solutions.matching_cost(x, m, y, t, cost_class, cost_mask, cost_dice).T


def masks_without_sigmoid(e, p):
    return torch.einsum("bnc,bchw->bnhw", e, p)


def masks_softmax_over_queries(e, p):
    return torch.einsum("bnc,bchw->bnhw", e, p).softmax(1)


def masks_wrong_einsum(e, p):
    return torch.einsum("bnc,bchw->bnhw", e, p.transpose(2, 3)).sigmoid()  # H and W swapped


def semantic_with_no_object(x, m):
    return torch.einsum("bnk,bnhw->bkhw", x.softmax(-1), m.sigmoid())


def semantic_softmax_after_dropping(x, m):
    return torch.einsum("bnk,bnhw->bkhw", x[..., :-1].softmax(-1), m.sigmoid())


def semantic_without_sigmoid(x, m):
    return torch.einsum("bnk,bnhw->bkhw", x.softmax(-1)[..., :-1], m)


def pq_non_strict(*args):
    return check._pq_variant(*args, strict=False)


def pq_without_halves(*args):
    return check._pq_variant(*args, half=False)


def pq_pooled(*args):
    return check._pq_variant(*args, per_category=False)


def pq_any_category(*args):
    return check._pq_variant(*args, same_category=False)


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


def shift_mask_wrapped_at_start(Hp, Wp, ws, s):
    rows, cols = (torch.arange(Hp) < s).long(), (torch.arange(Wp) < s).long()  # the first s rows/columns
    labels = (rows[:, None] * 2 + cols[None, :]).float()
    windows = solutions.window_partition(labels[None, :, :, None], ws).reshape(-1, ws * ws)
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape).masked_fill(differ, -100.0)


def shift_mask_two_bands(Hp, Wp, ws, s):
    """Not a mistake: bands [0, Hp − ws) and [Hp − ws, Hp − s) never share a window, so two bands
    per axis, split at Hp − s, give the same mask. The checker must accept it."""
    labels = (torch.arange(Hp) >= Hp - s).long()[:, None] * 2 + (torch.arange(Wp) >= Wp - s).long()[None, :]
    windows = solutions.window_partition(labels[None, :, :, None].float(), ws).reshape(-1, ws * ws)
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape).masked_fill(differ, -100.0)


WRONG = {
    "dice": [(dice_without_smoothing, "smoothing"), (dice_on_logits, "logits"),
             (dice_coefficient, "coefficient"), (dice_summed_over_masks, "one loss per mask"),
             (dice_with_means, "not means"), (dice_thresholded, "not differentiable"),
             (dice_in_place, "in place")],
    "focal": [(focal_alpha_everywhere, "α everywhere"), (focal_without_gamma, "(1 − p_t)^γ factor is missing"),
              (focal_summed, "mean over the pixels"), (focal_hard_coded, "ignored the alpha"),
              (focal_plain_bce, "plain binary cross-entropy")],
    "matching_cost": [(cost_with_log, "not −log p"), (cost_without_weights, "weights λ"),
                      (cost_softmax_without_no_object, "dropped ∅"), (cost_transposed, "rows are predictions")],
    "mask_embedding": [(masks_without_sigmoid, "sigmoid"), (masks_softmax_over_queries, "not a softmax across"),
                       (masks_wrong_einsum, "expected shape")],
    "semantic_inference": [(semantic_with_no_object, "∅ (the last class) takes no part"),
                           (semantic_softmax_after_dropping, "drop ∅'s column after it"),
                           (semantic_without_sigmoid, "sigmoid")],
    "panoptic_quality": [(pq_non_strict, "strictly"), (pq_without_halves, "½"), (pq_pooled, "pooled"),
                         (pq_any_category, "same class")],
    "window_partition": [(windows_by_reshape, "permute"), (windows_column_major, "column-major"),
                         (windows_not_flattened, "(B·nH·nW, ws, ws, C)")],
    "shifted_window_mask": [(shift_mask_bool, "not booleans"), (shift_mask_inf, "−inf"),
                            (shift_mask_inverted, "inverted"), (shift_mask_wrapped_at_start, "not the first")],
}


def test_every_exercise_has_wrong_answers_and_a_notebook():
    assert set(WRONG) == set(check.EXERCISES)
    notebooks = {p.name for p in EXERCISES_DIR.glob("*.ipynb")}
    assert notebooks == {exercise.notebook for exercise in check.EXERCISES.values()}
    assert 6 <= len(check.EXERCISES) <= 10


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_checker_accepts_the_reference_solution(name, capsys):
    exercise = check.EXERCISES[name]
    ok, message = exercise.check(getattr(solutions, exercise.function))
    assert ok, message
    assert "Correct" in capsys.readouterr().out  # the verdict is printed


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_checker_rejects_wrong_answers_with_a_hint(name):
    exercise = check.EXERCISES[name]
    for wrong, expected_text in WRONG[name]:
        ok, message = exercise.check(wrong, verbose=False)
        assert not ok, f"{name}: {wrong.__name__} was accepted"
        assert expected_text in message, f"{name}: {wrong.__name__} got {message!r}"


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_every_listed_mistake_is_caught_with_its_own_hint(name, monkeypatch):
    # a mistake equivalent to the right answer (or shadowed by an earlier one) would never show its hint
    exercise = check.EXERCISES[name]
    listed = {}
    run_checks = check.run_checks

    def capture(title, fn, cases, reference, mistakes=(), **kwargs):
        listed["mistakes"] = list(mistakes)
        return run_checks(title, fn, cases, reference, mistakes, **kwargs)

    monkeypatch.setattr(check, "run_checks", capture)
    exercise.check(getattr(solutions, exercise.function), verbose=False)
    assert len(listed["mistakes"]) >= 4
    for wrong, hint in listed["mistakes"]:
        ok, message = exercise.check(wrong, verbose=False)
        assert not ok and message.endswith(hint), f"{name}: the mistake hinting {hint!r} gave {message!r}"


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
    # a loop-free matching cost, two-band shift labels and einsum masks are as right as the references
    assert check.check_shifted_window_mask(shift_mask_two_bands, verbose=False)[0]
    assert check.check_mask_embedding(
        lambda e, p: torch.einsum("bnc,bchw->bnhw", e, p).sigmoid(), verbose=False)[0]
    assert check.check_window_partition(
        lambda x, ws: x.unfold(1, ws, ws).unfold(2, ws, ws).permute(0, 1, 2, 4, 5, 3).reshape(-1, ws, ws, x.shape[-1]),
        verbose=False)[0]


def test_generic_hints_name_offsets_and_factors():
    x = torch.tensor([1.0, 2.0, 4.0])
    assert "same constant 0.5" in check.generic_hint(x + 0.5, x)
    assert "3 × the reference" in check.generic_hint(3 * x, x)
    assert "transposed" in check.generic_hint(torch.zeros(3, 2), torch.zeros(2, 3))
    assert check.tensor_problem(x + 1e-7, x) is None
    assert "expected shape (3,)" in check.tensor_problem(torch.zeros(4), x)


def test_pq_mistake_generator_and_scenes():
    # the switchable PQ of check.py, with every switch on, is the project's PQ; the random scenes
    # exercise true positives, false positives and false negatives
    totals = torch.zeros(3)
    for seed in range(50, 56):
        scene = check._random_panoptic(seed)
        assert check.pq_problem(check._pq_variant(*scene), check._pq_reference(*scene)) is None
        pred, pred_segments, gt, gt_segments = scene
        pq = check.metrics.PanopticMetrics([True] * 4)
        pq.update(pred, [{"id": i, "category_id": c} for i, c in pred_segments.items()],
                  gt, [{"id": i, "category_id": c} for i, c in gt_segments.items()])
        totals += pq.stats[1:].sum(1)
    assert (totals > 0).all(), f"TP, FP, FN over the scenes: {totals.tolist()}"
    # the IoU = 0.5 scene: one segment of class 1 unmatched on both sides, background matched
    result = check._pq_reference(*check._half_iou_case())
    assert result["RQ"] == pytest.approx((1.0 + 0.0) / 2)


def test_teacher_command_line():
    done = subprocess.run([sys.executable, str(EXERCISES_DIR / "check.py"), "--all", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(check.EXERCISES)} of {len(check.EXERCISES)} reference solutions pass" in done.stdout


def test_teacher_command_line_fails_on_a_broken_solution(monkeypatch, capsys):
    broken = SimpleNamespace(**{e.function: getattr(solutions, e.function) for e in check.EXERCISES.values()})
    broken.dice_loss = dice_without_smoothing
    monkeypatch.setitem(sys.modules, "solutions", broken)
    assert check.main(["--all", "--quiet"]) == 1
    assert "FAILED: dice" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The exercise notebooks
# ---------------------------------------------------------------------------------------------


def read_notebook(path: Path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev requirement (requirements-dev.txt)")
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_notebook_stub_matches_the_checker(name):
    exercise = check.EXERCISES[name]
    nb = read_notebook(EXERCISES_DIR / exercise.notebook)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    stubs = [source for source in code if "raise NotImplementedError" in source]
    assert len(stubs) == 1, f"{exercise.notebook}: expected one stub cell"
    (stub,) = [node for node in ast.parse(stubs[0]).body if isinstance(node, ast.FunctionDef)]
    assert stub.name == exercise.function
    # same parameters and defaults as the reference solution, so the checker can call either
    reference = inspect.signature(getattr(solutions, exercise.function))
    assert [a.arg for a in stub.args.args] == list(reference.parameters)
    defaults = [ast.literal_eval(d) for d in stub.args.defaults]
    assert defaults == [p.default for p in reference.parameters.values() if p.default is not inspect.Parameter.empty]
    assert any(f"check.{exercise.check.__name__}({exercise.function})" in source for source in code)


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_unsolved_notebook_runs_and_says_not_implemented(name):
    pytest.importorskip("nbclient", reason="nbclient is a dev requirement (requirements-dev.txt)")
    pytest.importorskip("ipykernel", reason="ipykernel is a dev requirement (requirements-dev.txt)")
    from tests.test_notebooks import execute_notebook

    nb = execute_notebook(EXERCISES_DIR / check.EXERCISES[name].notebook)
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert check.NOT_IMPLEMENTED in text
