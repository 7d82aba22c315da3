"""Checkers for the classroom exercises: a student's function against the project's own code.

Each exercise notebook (exercises/NN_*.ipynb) asks for one function of the paper and ends with a
checker cell, e.g. `ok, message = check.check_dice(dice_loss)`. A checker

1. calls the student's function on random inputs (fixed seeds, several shapes) and on a few edge
   cases, and compares every result with the project's implementation (losses.py, matcher.py,
   maskformer.py, infer.py, metrics.py, backbones.py): the same numbers the model trains with;
2. on a mismatch, runs the common mistakes written out with each checker (its `mistakes` list) on
   the same input and names the one that reproduces the student's numbers ("the +1 smoothing of
   Eq. (3.2g) is missing"), or says what kind of difference it sees (shape, constant offset, factor);
3. prints the verdict and returns (ok, message). An unsolved stub (NotImplementedError) gets
   "not implemented yet", so a notebook runs top to bottom before it is solved.

Teacher view: `python exercises/check.py --all` runs every checker on the reference solutions of
exercises/solutions.py and prints a table (exit code 1 if any fails); `--all --quiet` prints the
table only.

Reading order: `run_checks` (the comparison loop) → one `check_*` per exercise, each with its
reference call, its test cases and its list of mistakes → `EXERCISES` → `main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the project's flat modules: losses.py, matcher.py, ...

import backbones  # noqa: E402
import infer  # noqa: E402
import losses  # noqa: E402
import maskformer  # noqa: E402
import matcher  # noqa: E402
import metrics  # noqa: E402

Case = tuple[str, tuple, dict]  # (description shown to the student, positional args, keyword args)
Mistake = tuple[Callable, str]  # (a wrong implementation, the hint shown when it matches)
NOT_IMPLEMENTED = "not implemented yet"


# ---------------------------------------------------------------------------------------------
# The comparison loop shared by every exercise
# ---------------------------------------------------------------------------------------------


def tensor_problem(got, expected: Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """None when `got` equals `expected` (within tolerance), else what differs, in words."""
    if not isinstance(got, Tensor):
        try:
            got = torch.as_tensor(got)
        except (TypeError, ValueError, RuntimeError):
            return f"expected a tensor, got a {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if expected.dtype == torch.bool or got.dtype == torch.bool:
        if got.dtype != expected.dtype:
            return f"expected dtype {expected.dtype}, got {got.dtype}"
        wrong = int((got.cpu() != expected).sum())
        return f"{wrong} of {expected.numel()} entries differ" if wrong else None
    got, expected = got.detach().cpu().double(), expected.detach().double()
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        return "your result contains NaN (a division by zero, or log of 0?)"
    if torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        return None
    diff = (got - expected).abs().nan_to_num(float("inf"))
    k = int(diff.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), expected.shape)) if expected.dim() else ()
    return (f"largest difference {float(diff.flatten()[k]):.3g} at index {index}: expected "
            f"{float(expected.flatten()[k]):.6g}, got {float(got.flatten()[k]):.6g}")


def generic_hint(got, expected: Tensor) -> str | None:
    """Differences that have a name even when no listed mistake reproduces them."""
    if not isinstance(got, Tensor) or got.dtype == torch.bool or expected.dtype == torch.bool:
        return None
    if got.dim() == 2 and tuple(got.shape) == tuple(expected.shape[::-1]) and got.shape != expected.shape:
        return "your result looks transposed: check the order of the two axes."
    if got.shape != expected.shape or expected.numel() < 2:
        return None
    got, expected = got.detach().cpu().double(), expected.detach().double()
    offset = got - expected
    if offset.abs().max() > 1e-6 and (offset - offset.flatten()[0]).abs().max() < 1e-6:
        constant = float(offset.flatten()[0])
        return f"your values differ from the reference by the same constant {constant:.4g} everywhere."
    if expected.abs().min() > 1e-6:
        ratio = got / expected
        if (ratio - ratio.flatten()[0]).abs().max() < 1e-5 and abs(float(ratio.flatten()[0]) - 1) > 1e-4:
            return (f"your values are {float(ratio.flatten()[0]):.4g} × the reference everywhere: a missing or "
                    "extra factor (a mean instead of a sum, or the other way round?).")
    return None


def _clone(value):
    return value.clone() if isinstance(value, Tensor) else value


def _unchanged(before: tuple, after: tuple) -> bool:
    return all(not isinstance(b, Tensor) or (b.shape == a.shape and torch.equal(b, a)) for b, a in zip(before, after))


def run_checks(title: str, fn: Callable, cases: list[Case], reference: Callable, mistakes: list[Mistake] = (),
               differentiable: bool = False, problem: Callable = tensor_problem, verbose: bool = True,
               ) -> tuple[bool, str]:
    """Compare fn with reference on every case; (ok, message), printed when verbose.

    differentiable: the first argument of the first case is given requires_grad=True and the
    result must stay attached to the autograd graph (it is a training loss).
    """
    def finish(ok: bool, message: str) -> tuple[bool, str]:
        if verbose:
            print(("✅ Correct! " if ok else "❌ ") + message)
        return ok, message

    for n, (description, args, kwargs) in enumerate(cases):
        expected = reference(*args, **kwargs)
        student_args = tuple(_clone(a) for a in args)
        if differentiable and n == 0:
            student_args = (student_args[0].requires_grad_(True), *student_args[1:])
        try:
            got = fn(*student_args, **kwargs)
        except NotImplementedError:
            return finish(False, f"{title}: {NOT_IMPLEMENTED}. Fill in the function above (it still raises "
                                 "NotImplementedError), run its cell, then run this checker again.")
        except Exception as error:  # noqa: BLE001 - any error of the student's code becomes a verdict
            return finish(False, f"{title}: your function raised {type(error).__name__}: {error} "
                                 f"(on {description}).")
        if not _unchanged(args, tuple(a.detach() if isinstance(a, Tensor) else a for a in student_args)):
            return finish(False, f"{title}: your function changed one of its inputs in place (on {description}); "
                                 "compute new tensors instead (e.g. x = x * m, not x *= m).")
        if differentiable and n == 0 and not (isinstance(got, Tensor) and got.requires_grad):
            return finish(False, f"{title}: the result is not differentiable with respect to the logits, so it "
                                 "cannot train a model. Avoid .item(), .detach(), numpy, thresholds and argmax.")
        difference = problem(got, expected)
        if difference is None:
            continue
        hint = None
        for wrong, text in mistakes:
            try:
                if problem(got, wrong(*args, **kwargs)) is None:
                    hint = text
                    break
            except Exception:  # noqa: BLE001, S112 - a mistake that does not apply to this input
                continue
        if hint is None and isinstance(got, Tensor):
            hint = generic_hint(got, expected)
        return finish(False, f"{title}: not yet right on {description}: {difference}."
                             + (f"\n   Hint: {hint}" if hint else ""))
    return finish(True, f"{title}: matches the project's implementation on all {len(cases)} test cases.")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# 1. Dice loss, Eq. (3.2g)            reference: losses.dice_loss
# ---------------------------------------------------------------------------------------------


def _per_mask(loss: Callable) -> Callable:
    """losses.py's losses sum over masks / num_masks: called one mask at a time they give (M,)."""
    return lambda logits, targets, **kw: torch.stack([loss(logits[i:i + 1], targets[i:i + 1], 1, **kw)
                                                      for i in range(len(logits))])


def _mask_cases(seed: int) -> list[Case]:
    cases = []
    for k, (M, P, scale) in enumerate([(3, 50, 3.0), (5, 200, 1.0), (2, 7, 6.0)]):
        g = _generator(seed + k)
        logits = torch.randn(M, P, generator=g) * scale
        targets = (torch.rand(M, P, generator=g) < 0.3).float()
        cases.append((f"{M} random masks of {P} pixels", (logits, targets), {}))
    cases.append(("an empty target mask with a confident empty prediction",
                  (torch.full((2, 16), -9.0), torch.zeros(2, 16)), {}))
    cases.append(("a full target mask predicted perfectly", (torch.full((1, 9), 9.0), torch.ones(1, 9)), {}))
    return cases


def check_dice(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(mask_logits (M, P), target_masks (M, P) float 0/1) → (M,): Eq. (3.2g) for every mask."""
    def soft(x): return x.sigmoid()

    def dice(p, t, smooth=1.0, two=2.0, square=False, means=False):
        inter, sizes = (p * t).sum(1), (p * p + t * t).sum(1) if square else p.sum(1) + t.sum(1)
        if means:
            inter, sizes = inter / p.shape[1], sizes / p.shape[1]
        return 1 - (two * inter + smooth) / (sizes + smooth)

    mistakes = [
        (lambda x, t: dice(soft(x), t, smooth=0.0), "the +1 smoothing of Eq. (3.2g) is missing (in the numerator, "
                                                    "the denominator, or both?)."),
        (lambda x, t: 1 - 2 * (soft(x) * t).sum(1) / (soft(x).sum(1) + t.sum(1) + 1),
         "the +1 smoothing is missing in the numerator: (2 Σ m·m_gt + 1) / (Σ m + Σ m_gt + 1)."),
        (lambda x, t: 1 - (2 * (soft(x) * t).sum(1) + 1) / (soft(x).sum(1) + t.sum(1)),
         "the +1 smoothing is missing in the denominator: (2 Σ m·m_gt + 1) / (Σ m + Σ m_gt + 1)."),
        (lambda x, t: dice(x, t), "you used the logits; Eq. (3.2g) takes the probabilities m = sigmoid(logits)."),
        (lambda x, t: dice(soft(x), t, two=1.0), "the factor 2 in front of Σ m·m_gt is missing."),
        (lambda x, t: dice(soft(x), t, square=True), "you squared m and m_gt in the denominator (the V-Net "
                                                     "variant); Eq. (3.2g) sums them as they are."),
        (lambda x, t: dice(soft(x), t, means=True), "use sums over the pixels, not means (the +1 then weighs "
                                                    "differently)."),
        (lambda x, t: 1 - dice(soft(x), t), "you returned the dice coefficient; the loss is 1 − coefficient."),
        (lambda x, t: dice(soft(x), t).sum(), "return one loss per mask, shape (M,), not their sum."),
        (lambda x, t: dice(soft(x), t).mean(), "return one loss per mask, shape (M,), not their mean."),
    ]
    return run_checks("dice loss, Eq. (3.2g)", fn, _mask_cases(0), _per_mask(losses.dice_loss), mistakes,
                      differentiable=True, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 2. Focal loss, Eq. (3.2f)           reference: losses.sigmoid_focal_loss
# ---------------------------------------------------------------------------------------------


def check_focal(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(mask_logits (M, P), target_masks (M, P), alpha=0.25, gamma=2.0) → (M,): Eq. (3.2f) per mask."""
    def focal(x, t, alpha=0.25, gamma=2.0, alpha_t=None, p_t=None, mod=None, reduce="mean"):
        p = x.sigmoid()
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t) if p_t is None else p_t(p, t)
        alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha_t is None else alpha_t(alpha, t)
        out = alpha_t * ((1 - p_t) if mod is None else mod(p_t)) ** gamma * ce
        return out.mean(1) if reduce == "mean" else out.sum(1)

    def cases() -> list[Case]:
        base = _mask_cases(10)
        g = _generator(99)
        logits, targets = torch.randn(4, 60, generator=g) * 2, (torch.rand(4, 60, generator=g) < 0.5).float()
        return base + [("random masks with alpha=0.5, gamma=1.0", (logits, targets), {"alpha": 0.5, "gamma": 1.0})]

    mistakes = [
        (lambda x, t, **kw: focal(x, t, **kw, alpha_t=lambda a, t: a + 0 * t),
         "α_t is α where m_gt = 1 but 1 − α where m_gt = 0; you used α everywhere."),
        (lambda x, t, **kw: focal(x, t, **kw, alpha_t=lambda a, t: 1 + 0 * t),
         "the α_t weight is missing (α = 0.25 on foreground pixels, 1 − α on background ones)."),
        (lambda x, t, **kw: focal(x, t, **kw, alpha_t=lambda a, t: (1 - a) * t + a * (1 - t)),
         "α and 1 − α are swapped: α_t = α on foreground pixels (m_gt = 1)."),
        (lambda x, t, **kw: focal(x, t, **kw, mod=lambda p_t: p_t),
         "the modulating factor is (1 − p_t)^γ, which shrinks the loss of well-classified pixels; you used p_t^γ."),
        (lambda x, t, **kw: focal(x, t, **kw, p_t=lambda p, t: p),
         "p_t is p where m_gt = 1 but 1 − p where m_gt = 0; you used p everywhere."),
        (lambda x, t, alpha=0.25, gamma=2.0: focal(x, t, alpha, 0.0),
         "the (1 − p_t)^γ factor is missing (this is α-weighted cross-entropy)."),
        (lambda x, t, **kw: F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1),
         "this is plain binary cross-entropy: the α_t and (1 − p_t)^γ factors are missing."),
        (lambda x, t, **kw: focal(x, t, **kw, reduce="sum"),
         "Eq. (3.2f) takes the mean over the pixels of each mask, not the sum."),
        (lambda x, t, **kw: focal(x, t, **kw).sum(), "return one loss per mask, shape (M,), not their sum."),
        (lambda x, t, **kw: focal(x, t, **kw).mean(), "return one loss per mask, shape (M,), not their mean."),
        (lambda x, t, **kw: focal(x, t), "you ignored the alpha / gamma arguments (hard-coded 0.25 and 2?)."),
    ]
    return run_checks("focal loss, Eq. (3.2f)", fn, cases(), _per_mask(losses.sigmoid_focal_loss), mistakes,
                      differentiable=True, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 3. Matching cost, Eq. (3.2c)        reference: matcher.HungarianMatcher.cost_matrix
# ---------------------------------------------------------------------------------------------


def _cost_reference(class_logits, mask_logits, labels, target_masks, cost_class=1.0, cost_mask=20.0, cost_dice=1.0):
    # the matcher takes (N, h, w) masks and resizes the targets to (h, w): (N, 1, P) keeps them as they are
    N, P = mask_logits.shape
    m = matcher.HungarianMatcher(cost_class, cost_mask, cost_dice)
    target = {"labels": labels, "masks": target_masks.view(-1, 1, P)}
    return m.cost_matrix(class_logits, mask_logits.view(N, 1, P), target)


def check_matching_cost(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(class_logits (N, K+1), mask_logits (N, P), labels (n,), target_masks (n, P)) → C (N, n), Eq. (3.2c)."""
    def cases() -> list[Case]:
        out = []
        for k, (N, K, n, P) in enumerate([(6, 4, 3, 40), (10, 7, 5, 100), (3, 2, 2, 25)]):
            g = _generator(20 + k)
            class_logits = torch.randn(N, K + 1, generator=g) * 2
            mask_logits = torch.randn(N, P, generator=g) * 3
            labels = torch.randint(0, K, (n,), generator=g)
            target_masks = (torch.rand(n, P, generator=g) < 0.4).float()
            out.append((f"N={N} predictions, n={n} segments, K={K} classes, P={P} pixels",
                        (class_logits, mask_logits, labels, target_masks), {}))
        args = out[0][1]
        out.append(("the first input with cost_class=2, cost_mask=5, cost_dice=0.5", args,
                    {"cost_class": 2.0, "cost_mask": 5.0, "cost_dice": 0.5}))
        return out

    def parts(x, m, y, t):
        prob = x.softmax(-1)
        return (-prob[:, y], matcher.focal_cost(m, t), matcher.dice_cost(m, t), prob)

    def cost(x, m, y, t, cost_class=1.0, cost_mask=20.0, cost_dice=1.0, cls=None, focal=None, dice=None):
        c, f, d, prob = parts(x, m, y, t)
        c = c if cls is None else cls(x, y)
        f = f if focal is None else focal(m, t)
        d = d if dice is None else dice(m, t)
        return cost_class * c + cost_mask * f + cost_dice * d

    def dice_no_smoothing(m, t):
        p = m.sigmoid()
        return 1 - 2 * (p @ t.T) / (p.sum(1)[:, None] + t.sum(1)[None])

    mistakes = [
        (lambda *a, **kw: cost(*a, **kw, cls=lambda x, y: -x.log_softmax(-1)[:, y]),
         "the class term of Eq. (3.2c) is −p_i(c_j), a probability, not −log p_i(c_j) (see DETR §3.1: "
         "−log p is unbounded and would swamp the mask terms)."),
        (lambda *a, **kw: cost(*a, **kw, cls=lambda x, y: 1 - x.softmax(-1)[:, y]),
         "you wrote 1 − p_i(c_j): a constant shift gives the same assignment, but Eq. (3.2c) writes −p_i(c_j)."),
        (lambda *a, **kw: cost(*a, **kw, cls=lambda x, y: -x[:, :-1].softmax(-1)[:, y]),
         "the softmax runs over all K + 1 classes, "
         "∅ included (Eq. (3.3a)); you dropped ∅ before the softmax."),
        (lambda *a, **kw: cost(*a, **kw, cls=lambda x, y: -x.sigmoid()[:, y]),
         "class probabilities come from a softmax over the K + 1 classes, not a sigmoid."),
        (lambda *a, **kw: cost(*a, **kw, cls=lambda x, y: -x[:, y]), "the class term needs probabilities: "
                                                                     "softmax the class logits first."),
        (lambda x, m, y, t, **kw: cost(x, m, y, t),
         "you ignored the cost_class / cost_mask / cost_dice arguments (hard-coded 1, 20, 1?)."),
        (lambda x, m, y, t, **kw: cost(x, m, y, t, 1.0, 1.0, 1.0), "the weights λ are missing: "
                                                                   "C = 1·(−p) + 20·focal + 1·dice."),
        (lambda *a, **kw: cost(*a, **kw, focal=lambda m, t: matcher.focal_cost(m, t) * m.shape[1]),
         "the focal term is the mean over pixels (÷ P), not the sum."),
        (lambda *a, **kw: cost(*a, **kw, dice=dice_no_smoothing), "the dice term needs the +1 smoothing of "
                                                                   "Eq. (3.2g)."),
        (lambda *a, **kw: cost(*a, **kw, focal=lambda m, t: matcher.focal_cost(m, t) * 0),
         "the focal term is missing: L_mask = 20·focal + 1·dice, Eq. (3.2e)."),
        (lambda *a, **kw: cost(*a, **kw, dice=lambda m, t: matcher.dice_cost(m, t) * 0),
         "the dice term is missing: L_mask = 20·focal + 1·dice, Eq. (3.2e)."),
        (lambda *a, **kw: cost(*a, **kw).T, "rows are predictions, columns are ground-truth segments: C is (N, n)."),
    ]
    return run_checks("matching cost, Eq. (3.2c)", fn, cases(), _cost_reference, mistakes, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 4. Mask prediction, Eq. (3.3b)      reference: maskformer.MaskFormer.segment
# ---------------------------------------------------------------------------------------------


def _masks_reference(mask_embeddings: Tensor, pixel_embeddings: Tensor) -> Tensor:
    """MaskFormer.segment itself, on a stand-in model whose mask-embedding MLP is the identity (so its
    input *is* E_mask) and whose head returns the dot products (the per_pixel_plus branch)."""
    stand_in = SimpleNamespace(mask_embed=nn.Identity(), config=SimpleNamespace(head="per_pixel_plus"))
    logits = maskformer.MaskFormer.segment(stand_in, mask_embeddings, pixel_embeddings)["sem_seg_logits"]
    return logits.sigmoid()  # Eq. (3.3b): the sigmoid, which the model leaves to the loss and inference


def check_mask_embedding(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(mask_embeddings (B, N, C), pixel_embeddings (B, C, H, W)) → mask probabilities (B, N, H, W)."""
    def cases() -> list[Case]:
        out = []
        for k, (B, N, C, H, W) in enumerate([(2, 5, 8, 6, 7), (1, 3, 16, 4, 4), (3, 4, 2, 5, 9)]):
            g = _generator(30 + k)
            out.append((f"B={B}, N={N}, C={C}, H={H}, W={W}",
                        (torch.randn(B, N, C, generator=g), torch.randn(B, C, H, W, generator=g)), {}))
        return out

    def dots(e, p): return torch.einsum("bnc,bchw->bnhw", e, p)

    mistakes = [
        (lambda e, p: dots(e, p), "Eq. (3.3b) ends with a sigmoid: return probabilities, not logits."),
        (lambda e, p: dots(e, p).softmax(1), "the paper uses an independent sigmoid per mask, not a softmax "
                                             "across the N queries (§3.3: sigmoids work better)."),
        (lambda e, p: dots(e, p).flatten(2).softmax(-1).view_as(dots(e, p)),
         "no softmax over the pixels: every pixel gets its own sigmoid."),
        (lambda e, p: dots(e.sigmoid(), p.sigmoid()), "the sigmoid goes after the dot product, not on the "
                                                      "embeddings."),
        (lambda e, p: dots(F.normalize(e, dim=-1), F.normalize(p, dim=1)).sigmoid(),
         "a plain dot product: do not normalise the embeddings (that would be a cosine similarity)."),
    ]
    return run_checks("mask prediction, Eq. (3.3b)", fn, cases(), _masks_reference, mistakes, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 5. Semantic inference, Eq. (3.4b)   reference: infer.semantic_inference
# ---------------------------------------------------------------------------------------------


def check_semantic_inference(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(class_logits (B, N, K+1), mask_logits (B, N, H, W)) → class scores (B, K, H, W), Eq. (3.4b)."""
    def cases() -> list[Case]:
        out = []
        for k, (B, N, K, H, W) in enumerate([(2, 6, 4, 5, 7), (1, 10, 3, 8, 8), (3, 2, 5, 3, 4)]):
            g = _generator(40 + k)
            out.append((f"B={B}, N={N}, K={K}, H={H}, W={W}",
                        (torch.randn(B, N, K + 1, generator=g) * 2, torch.randn(B, N, H, W, generator=g) * 3), {}))
        return out

    def scores(x, m, probs=None, masks=None):
        p = x.softmax(-1)[..., :-1] if probs is None else probs(x)
        return torch.einsum("bnk,bnhw->bkhw", p, m.sigmoid() if masks is None else masks(m))

    mistakes = [
        (lambda x, m: scores(x, m, probs=lambda x: x.softmax(-1)),
         "∅ (the last class) takes no part in Eq. (3.4b): drop its column after the softmax, c ∈ {1…K}."),
        (lambda x, m: scores(x, m, probs=lambda x: x[..., :-1].softmax(-1)),
         "the softmax runs over all K + 1 classes first (Eq. (3.3a)); drop ∅'s column after it, not before."),
        (lambda x, m: scores(x, m, masks=lambda m: m), "the masks are m_i = sigmoid(mask logits), Eq. (3.3b)."),
        (lambda x, m: scores(x, m, masks=lambda m: m.softmax(1)), "each mask gets its own sigmoid, not a "
                                                                  "softmax over the queries."),
        (lambda x, m: scores(x, m, probs=lambda x: x[..., :-1]), "the class probabilities are the softmax of "
                                                                 "the class logits."),
        (lambda x, m: scores(x, m).argmax(1), "return the scores (B, K, H, W); the semantic map is their argmax."),
        (lambda x, m: scores(x, m) / x.shape[1], "Eq. (3.4b) sums over the queries; no division by N."),
    ]
    return run_checks("semantic inference, Eq. (3.4b)", fn, cases(), infer.semantic_inference, mistakes,
                      verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 6. Panoptic quality (§4)            reference: metrics.PanopticMetrics
# ---------------------------------------------------------------------------------------------


def _pq_reference(pred: Tensor, pred_segments: dict, gt: Tensor, gt_segments: dict) -> dict[str, float]:
    num_classes = max([*pred_segments.values(), *gt_segments.values()]) + 1
    pq = metrics.PanopticMetrics(is_thing=[True] * num_classes)  # things vs stuff only splits the averages
    pq.update(pred, [{"id": i, "category_id": c} for i, c in pred_segments.items()],
              gt, [{"id": i, "category_id": c, "iscrowd": 0} for i, c in gt_segments.items()])
    results = pq.compute()
    return {key: results[key] for key in ("PQ", "SQ", "RQ")}


def _pq_variant(pred, pred_segments, gt, gt_segments, strict=True, same_category=True, half=True,
                per_category=True) -> dict[str, float]:
    """PQ written out with switches for the usual mistakes (all True: the correct definition)."""
    stats: dict[int, list[float]] = {}  # category -> [IoU sum, TP, FP, FN]
    matched_pred, matched_gt = set(), set()
    for g_id, g_cat in gt_segments.items():
        for p_id, p_cat in pred_segments.items():
            if same_category and g_cat != p_cat:
                continue
            inter = int(((gt == g_id) & (pred == p_id)).sum())
            union = int(((gt == g_id) | (pred == p_id)).sum())
            iou = inter / union
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
        per = [scores(*s) for s in stats.values()]
        return {k: sum(p[i] for p in per) / len(per) for i, k in enumerate(("PQ", "SQ", "RQ"))}
    total = [sum(s[i] for s in stats.values()) for i in range(4)]
    return dict(zip(("PQ", "SQ", "RQ"), scores(*total)))


def pq_problem(got, expected: dict[str, float]) -> str | None:
    if not isinstance(got, dict) or not {"PQ", "SQ", "RQ"} <= set(got):
        return f"expected a dict with keys 'PQ', 'SQ', 'RQ', got {type(got).__name__}"
    for key in ("PQ", "SQ", "RQ"):
        value = float(got[key])
        if not abs(value - expected[key]) <= 1e-6:
            return f"{key} is {value:.6g}, expected {expected[key]:.6g}"
    return None


def _random_panoptic(seed: int, size: int = 24, num_classes: int = 4) -> tuple[Tensor, dict, Tensor, dict]:
    """A ground-truth scene of rectangles on a background segment, and a prediction made from it by
    jittering, relabelling, dropping and adding rectangles. Every pixel has a segment (no void)."""
    g = _generator(seed)

    def paint(rects):
        pan = torch.ones(size, size, dtype=torch.long)  # segment 1: the background, class 0
        classes = {1: 0}
        for k, (y, x, h, w, c) in enumerate(rects):
            pan[y:y + h, x:x + w] = k + 2
            classes[k + 2] = c
        present = set(pan.unique().tolist())
        return pan, {i: c for i, c in classes.items() if i in present}

    def randint(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    gt_rects = [(randint(0, size - 6), randint(0, size - 6), randint(3, 10), randint(3, 10), randint(1, num_classes))
                for _ in range(randint(2, 6))]
    pred_rects = []
    for y, x, h, w, c in gt_rects:
        roll = float(torch.rand(1, generator=g))
        if roll < 0.15:
            continue  # missed: a false negative
        if roll < 0.35:
            c = c % (num_classes - 1) + 1  # the wrong class (another of 1..num_classes-1)
        j = [randint(-2, 3) for _ in range(4)]
        pred_rects.append((max(y + j[0], 0), max(x + j[1], 0), max(h + j[2], 1), max(w + j[3], 1), c))
    pred_rects += [(randint(0, size - 4), randint(0, size - 4), randint(2, 6), randint(2, 6), randint(1, num_classes))
                   for _ in range(randint(0, 3))]  # hallucinated segments: false positives
    pred, pred_segments = paint(pred_rects)
    gt, gt_segments = paint(gt_rects)
    return pred, pred_segments, gt, gt_segments


def _half_iou_case() -> tuple[Tensor, dict, Tensor, dict]:
    """A 2 × 2 ground-truth square of which the prediction covers 2 pixels: IoU exactly 0.5, no match."""
    gt = torch.ones(6, 6, dtype=torch.long)
    gt[2:4, 2:4] = 2
    pred = torch.ones(6, 6, dtype=torch.long)
    pred[2, 2:4] = 2
    return pred, {1: 0, 2: 1}, gt, {1: 0, 2: 1}


def _wrong_class_case() -> tuple[Tensor, dict, Tensor, dict]:
    """A segment found with the right outline but the wrong class: a FP and a FN, no TP."""
    gt = torch.ones(8, 8, dtype=torch.long)
    gt[1:5, 2:7] = 2
    pred = gt.clone()
    return pred, {1: 0, 2: 2}, gt, {1: 0, 2: 1}


def check_panoptic_quality(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(pred_pan_seg (H, W), pred_segments {id: class}, gt_pan_seg (H, W), gt_segments {id: class})
    → {"PQ", "SQ", "RQ"} of one image, each the mean over the classes that occur (TP + FP + FN > 0)."""
    cases = [(f"random scene #{seed}", _random_panoptic(seed), {}) for seed in range(50, 56)]
    cases.append(("a segment whose IoU with the ground truth is exactly 0.5", _half_iou_case(), {}))
    cases.append(("a segment found with the right outline but the wrong class", _wrong_class_case(), {}))
    mistakes = [
        (lambda *a: _pq_variant(*a, strict=False), "a match needs IoU > 0.5 strictly (that is what makes "
                                                   "matches unique); you accepted IoU = 0.5."),
        (lambda *a: _pq_variant(*a, same_category=False), "a predicted and a ground-truth segment can only "
                                                          "match if they have the same class."),
        (lambda *a: _pq_variant(*a, half=False), "RQ = TP / (TP + ½ FP + ½ FN): the ½ factors are missing."),
        (lambda *a: _pq_variant(*a, per_category=False), "PQ, SQ and RQ are computed per class, then averaged "
                                                          "over classes; you pooled all segments together."),
    ]
    return run_checks("panoptic quality (PQ)", fn, cases, _pq_reference, mistakes, problem=pq_problem,
                      verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 7. Window partition (Swin)          reference: backbones.window_partition
# ---------------------------------------------------------------------------------------------


def check_window_partition(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(x (B, H, W, C), window_size) → windows (B·nH·nW, ws, ws, C), batch-major then row-major."""
    def cases() -> list[Case]:
        out = []
        for k, (B, H, W, C, ws) in enumerate([(2, 8, 12, 3, 4), (1, 14, 7, 5, 7), (3, 6, 6, 2, 2)]):
            x = torch.randn(B, H, W, C, generator=_generator(60 + k))
            out.append((f"x of shape {(B, H, W, C)} with window_size={ws}", (x, ws), {}))
        return out

    def split(x, ws):
        B, H, W, C = x.shape
        return x.reshape(B, H // ws, ws, W // ws, ws, C)

    mistakes = [
        (lambda x, ws: x.reshape(-1, ws, ws, x.shape[-1]), "a reshape alone cuts the rows of the image into "
         "pieces, not square windows: split H and W into (nH, ws) and (nW, ws), then bring the window axes "
         "together with a permute."),
        (lambda x, ws: split(x, ws).permute(0, 3, 1, 2, 4, 5).reshape(-1, ws, ws, x.shape[-1]),
         "the windows are there but in column-major order; list them row by row (nH before nW)."),
        (lambda x, ws: split(x, ws).permute(0, 1, 3, 4, 2, 5).reshape(-1, ws, ws, x.shape[-1]),
         "each window is transposed: keep the axes (row-in-window, column-in-window) in that order."),
        (lambda x, ws: split(x, ws).permute(0, 1, 3, 2, 4, 5), "merge the batch and window-grid axes into one: "
                                                               "the result is (B·nH·nW, ws, ws, C)."),
    ]
    return run_checks("window partition (Swin)", fn, cases(), backbones.window_partition, mistakes, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 8. Shifted-window attention mask (Swin)   reference: backbones.shifted_window_mask
# ---------------------------------------------------------------------------------------------


def check_shifted_window_mask(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(Hp, Wp, window_size, shift_size) → (nW, ws², ws²) float: 0 = may attend, −100 = masked."""
    cases = [(f"Hp={Hp}, Wp={Wp}, window_size={ws}, shift_size={s}", (Hp, Wp, ws, s), {})
             for Hp, Wp, ws, s in [(8, 8, 4, 2), (14, 21, 7, 3), (12, 8, 4, 1), (6, 6, 3, 1)]]

    def labels_of(Hp, Wp, ws, s, at_start=False, partition=True):
        rows, cols = torch.arange(Hp), torch.arange(Wp)
        if at_start:  # the wrapped tokens put at the start of each axis instead of the end
            rb, cb = (rows >= s).long(), (cols >= s).long()
        else:
            rb = (rows >= Hp - ws).long() + (rows >= Hp - s).long()
            cb = (cols >= Wp - ws).long() + (cols >= Wp - s).long()
        labels = (rb[:, None] * 3 + cb[None, :]).float()
        if partition:
            return backbones.window_partition(labels[None, :, :, None], ws).reshape(-1, ws * ws)
        return labels.reshape(-1, ws * ws)

    def mask(*a, value=-100.0, invert=False, **kw):
        labels = labels_of(*a, **kw)
        differ = labels[:, None, :] != labels[:, :, None]
        return torch.zeros(differ.shape).masked_fill(~differ if invert else differ, value)

    mistakes = [
        (lambda *a: mask(*a) != 0, "return floats: 0.0 where two tokens may attend, −100.0 where they may "
                                   "not (added to the attention scores), not booleans."),
        (lambda *a: mask(*a) == 0, "return floats: 0.0 where two tokens may attend, −100.0 where they may "
                                   "not, not booleans (and True meant 'allowed' here)."),
        (lambda *a: mask(*a, value=float("-inf")), "the right pairs are masked, but with −inf; use −100.0 as the "
                                                   "official code does."),
        (lambda *a: mask(*a, invert=True), "inverted: pairs from the same region get 0 (may attend), pairs from "
                                           "different regions −100."),
        (lambda *a: mask(*a, at_start=True), "after the roll by −shift the wrapped-around tokens are the "
                                             "last `shift` rows and columns, [Hp − shift, Hp), not the first."),
        (lambda *a: mask(*a, partition=False), "group the region labels by window (window_partition) before "
                                               "comparing them; a plain reshape mixes rows of different windows."),
    ]
    return run_checks("shifted-window attention mask (Swin)", fn, cases, backbones.shifted_window_mask, mistakes,
                      verbose=verbose)


# ---------------------------------------------------------------------------------------------
# The list of exercises and the teacher's command line
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    notebook: str  # exercises/<notebook>
    function: str  # the function the student writes (same name in solutions.py)
    check: Callable[..., tuple[bool, str]]
    project: str  # where the project implements it


EXERCISES = {
    "dice": Exercise("01_dice_loss.ipynb", "dice_loss", check_dice, "losses.py:dice_loss"),
    "focal": Exercise("02_focal_loss.ipynb", "sigmoid_focal_loss", check_focal, "losses.py:sigmoid_focal_loss"),
    "matching_cost": Exercise("03_matching_cost.ipynb", "matching_cost", check_matching_cost,
                              "matcher.py:HungarianMatcher.cost_matrix"),
    "mask_embedding": Exercise("04_mask_embedding.ipynb", "mask_probabilities", check_mask_embedding,
                               "maskformer.py:MaskFormer.segment"),
    "semantic_inference": Exercise("05_semantic_inference.ipynb", "semantic_inference", check_semantic_inference,
                                   "infer.py:semantic_inference"),
    "panoptic_quality": Exercise("06_panoptic_quality.ipynb", "panoptic_quality", check_panoptic_quality,
                                 "metrics.py:PanopticMetrics"),
    "window_partition": Exercise("07_window_partition.ipynb", "window_partition", check_window_partition,
                                 "backbones.py:window_partition"),
    "shifted_window_mask": Exercise("08_shifted_window_mask.ipynb", "shifted_window_mask",
                                    check_shifted_window_mask, "backbones.py:shifted_window_mask"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the exercise checkers on the reference solutions "
                                                 "(exercises/solutions.py).")
    parser.add_argument("names", nargs="*", help=f"exercises to check: {', '.join(EXERCISES)}")
    parser.add_argument("--all", action="store_true", help="check every exercise")
    parser.add_argument("--quiet", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in EXERCISES]
    if unknown or not (args.all or args.names):
        parser.error(f"unknown exercise(s) {unknown}" if unknown else "name exercises or pass --all")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import solutions

    names = list(EXERCISES) if args.all else args.names
    rows = []
    for name in names:
        exercise = EXERCISES[name]
        ok, message = exercise.check(getattr(solutions, exercise.function), verbose=not args.quiet)
        rows.append((name, exercise.notebook, exercise.project, "ok" if ok else "FAILED"))
    widths = [max(len(str(r[i])) for r in rows + [("exercise", "notebook", "project code", "result")])
              for i in range(4)]
    print()
    for row in [("exercise", "notebook", "project code", "result"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    failed = [r[0] for r in rows if r[3] != "ok"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} reference solutions pass"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
