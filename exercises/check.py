"""Checkers for the classroom exercises: a student's function against the project's own code.

Each exercise notebook (exercises/NN_*.ipynb) asks for one function of the paper and ends with a
checker cell, e.g. `ok, message = check.check_dice(dice_loss)`. Equation labels such as (3.2g)
are those of `docs/paper.md`. A checker

1. looks at the submitted function before running it (`project_code_used`): a function that is,
   calls or imports the project's implementation (`semantic_inference = inference.semantic_inference`,
   `losses.dice_loss(...)` inside it, `import losses` inside it) is rejected: the exercise is to
   write it; so is one that calls anything of this file (its mistakes, its reference calls). This
   file holds no right answer of its own: the right numbers come from the project's modules at
   check time, and every mistake function takes a required `mistake=` naming the one wrong version
   it computes;
2. calls the student's function on random inputs (fixed seeds, several shapes) and on edge cases
   (empty masks, logits of ±50, a batch without segments), and compares every result with the
   project's implementation (losses.py, matcher.py, maskformer.py, inference.py, metrics.py,
   backbones.py): the same numbers the model trains with;
3. on a mismatch, runs the common mistakes written out with each checker (its `mistakes` list) on
   the same input and names the one that reproduces the student's numbers, e.g.
   "Hint [no_smoothing]: the +1 smoothing of Eq. (3.2g) is missing"; else the hint of the case
   that failed (the logits of ±50 point at an unstable log), else the kind of difference it sees
   (shape, NaN/inf, constant offset, factor);
4. prints the verdict and returns (ok, message). An unsolved stub (NotImplementedError) gets
   "not implemented yet", so a notebook runs top to bottom before it is solved.

Every hint has a name in square brackets; instructor/GUIDE.md lists them all, exercise by exercise.

Teacher view: `python exercises/check.py --all` runs every checker on the reference solutions
(instructor/solutions.py, absent from a student bundle) and prints a table (exit code 1 if any
fails, 2 if the reference solutions are not there); `--all --quiet` prints the table only.

Reading order: `project_code_used` (the guard) → `run_checks` (the comparison loop) → one
`check_*` per exercise, each with its reference call, its test cases and its list of mistakes →
`EXERCISES` → `main`.
"""

from __future__ import annotations

import argparse
import dis
import functools
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHECKER = Path(__file__).resolve()  # this file: no code of it may be called by a solution
REPO = CHECKER.parents[1]
INSTRUCTOR = REPO / "instructor"  # reference solutions and guide; not part of a student bundle
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the project's modules: losses.py, matcher.py, ...

import backbones  # noqa: E402
import inference  # noqa: E402
import losses  # noqa: E402
import maskformer  # noqa: E402
import matcher  # noqa: E402
import metrics  # noqa: E402

NOT_IMPLEMENTED = "not implemented yet"
PROJECT_MODULES = frozenset(path.stem for path in REPO.glob("*.py"))  # the repository root's modules


class Case(NamedTuple):
    description: str  # shown to the student: "3 random masks of 50 pixels"
    args: tuple
    kwargs: dict = {}
    hint: tuple[str, str] | None = None  # (name, text): the likely cause when only this case fails


class Mistake(NamedTuple):
    name: str  # short id shown in brackets, listed in instructor/GUIDE.md
    wrong: Callable  # the mistake written out: same arguments as the exercise's function
    text: str  # the hint shown when the student's numbers equal the mistake's


def hint_line(name: str, text: str) -> str:
    return f"\n   Hint [{name}]: {text}"


# ---------------------------------------------------------------------------------------------
# The guard: the submitted function must not be, call or import the project's implementation
# ---------------------------------------------------------------------------------------------


def _in_project(path: str | None) -> bool:
    """True for a file of the project's own code: a module at the top of the repository or in machinery/ or tooling/."""
    return path is not None and Path(path).resolve().parent in (REPO, REPO / "machinery", REPO / "tooling")


def _in_repository(path: str | None) -> bool:
    """True for any file of this repository (the project's code, this checker, a test)."""
    return path is not None and REPO in Path(path).resolve().parents


def _project_name(value) -> str | None:
    """'infer' or 'inference.semantic_inference' when value is a module, function, class or object of
    the project's code, else None."""
    if isinstance(value, types.ModuleType):
        return value.__name__ if _in_project(getattr(value, "__file__", None)) else None
    module_name = getattr(value, "__module__", None)
    module = sys.modules.get(module_name) if isinstance(module_name, str) else None
    if module is None or not _in_project(getattr(module, "__file__", None)):
        return None
    return f"{module_name}.{getattr(value, '__qualname__', type(value).__name__)}"


def _checker_name(value) -> str | None:
    """'check.<name>' when value is a function, lambda, class or object defined in this file (also
    when check.py runs as __main__, or a function was rebuilt from one of its code objects), else None."""
    code = getattr(getattr(value, "__func__", value), "__code__", None)
    defined_here = isinstance(code, types.CodeType) and Path(code.co_filename).resolve() == CHECKER
    if not defined_here and not isinstance(value, types.ModuleType):
        module_name = getattr(value, "__module__", None)
        module = sys.modules.get(module_name) if isinstance(module_name, str) else None
        file = getattr(module, "__file__", None)
        defined_here = file is not None and Path(file).resolve() == CHECKER
    if not defined_here:
        return None
    return f"{CHECKER.stem}.{getattr(value, '__qualname__', type(value).__name__)}"


def _code_objects(code: types.CodeType):
    """code and every code object nested in it (inner functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def project_code_used(fn, _seen: set[int] | None = None) -> str | None:
    """The project's module or function that `fn` is, calls or imports (e.g. 'losses.dice_loss'),
    or the function of this checker it is or calls (e.g. 'check._dice_mistake'), else None.

    Reads the function's compiled code rather than its source text: the source of a function
    typed in a console is not always available, and a lambda's source line does not parse on
    its own. Followed: names the code loads from its module's globals, its closure and its
    default values, `import` statements inside it, `importlib.import_module("losses")`, and the
    student's own helper functions (those defined in the same module or in this repository),
    recursively. Library code (torch, numpy, ...) is not followed. This checker's own functions,
    lambdas and classes count as used code too: its mistakes and its calls of the references are
    not a solution either (`checker_name` tells the two kinds apart).
    """
    seen = set() if _seen is None else _seen
    if id(fn) in seen:
        return None
    seen.add(id(fn))
    name = _checker_name(fn) or _project_name(fn)
    if name is not None:
        return name
    if isinstance(fn, functools.partial):
        return next(filter(None, (project_code_used(v, seen) for v in (fn.func, *fn.args, *fn.keywords.values()))),
                    None)
    fn = getattr(fn, "__func__", fn)  # a bound method: its function
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    namespace = getattr(fn, "__globals__", {})
    closure = [cell.cell_contents for cell in fn.__closure__ or () if _filled(cell)]
    defaults = [*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()]
    for value in [*closure, *defaults]:
        found = _follow(value, fn, seen)
        if found:
            return found
    for co in _code_objects(code):
        dynamic_import = {"import_module", "__import__", "modules"} & set(co.co_names)
        instructions = list(dis.get_instructions(co))
        for k, ins in enumerate(instructions):
            if ins.opname == "IMPORT_NAME" and str(ins.argval).split(".")[0] == CHECKER.stem:
                return f"{CHECKER.stem} (import {ins.argval})"
            if ins.opname == "IMPORT_NAME" and str(ins.argval).split(".")[0] in PROJECT_MODULES:
                return f"import {ins.argval}"
            if dynamic_import and ins.opname == "LOAD_CONST" and ins.argval == CHECKER.stem:
                return f"{CHECKER.stem} (the module {ins.argval!r})"
            if dynamic_import and ins.opname == "LOAD_CONST" and isinstance(ins.argval, str) \
                    and ins.argval in PROJECT_MODULES:
                return f"the module {ins.argval!r}"
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval in namespace:
                found = _follow(namespace[ins.argval], fn, seen, co.co_names)
                if found:
                    following = instructions[k + 1] if k + 1 < len(instructions) else None
                    if isinstance(namespace[ins.argval], types.ModuleType) and found == namespace[ins.argval].__name__ \
                            and following is not None and following.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                        return f"{found}.{following.argval}"
                    return found
    return None


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell (a name assigned later) raises ValueError
    except ValueError:
        return False
    return True


def _follow(value, fn, seen: set[int], attributes: tuple[str, ...] = ()) -> str | None:
    """Is `value`, which fn's code loads, the project's or this checker's code, or a helper that uses it?"""
    name = _checker_name(value) or _project_name(value)
    if name is not None:
        return name
    if isinstance(value, types.ModuleType):
        # a module of this repository that is not project code (this checker): look at the
        # attributes fn reads from it, e.g. check.losses
        if not _in_repository(getattr(value, "__file__", None)):
            return None
        found = (_follow(getattr(value, a), fn, seen) for a in attributes if hasattr(value, a))
        return next(filter(None, found), None)
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
        inner = getattr(value, "__func__", getattr(value, "func", value))
        module = sys.modules.get(getattr(inner, "__module__", None) or "")
        same_module = getattr(inner, "__module__", None) == getattr(fn, "__module__", None)
        if same_module or _in_repository(getattr(module, "__file__", None)):
            return project_code_used(value, seen)
    return None


def checker_name(used: str) -> bool:
    """True when a name returned by `project_code_used` is this checker's code ('check._dice_mistake',
    'check (import check)'), not the project's."""
    return re.match(rf"{re.escape(CHECKER.stem)}\b", used) is not None


def _guard(title: str, fn: Callable) -> str | None:
    """The verdict for a function that uses the project's implementation or this checker's code, else None."""
    used = project_code_used(fn)
    if used is None:
        return None
    if checker_name(used):
        return (f"{title}: your function uses the checker's own code ({used})."
                + hint_line("uses_checker_code", "write it yourself from the formula, with torch only: the "
                            "checker's mistakes are wrong on purpose and its references call the project's "
                            "implementation, so calling them is not a solution."))
    return (f"{title}: your function uses the project's own code ({used})."
            + hint_line("uses_project_code", "write it yourself from the formula, with torch only: calling, "
                        "importing or assigning the project's implementation is not a solution (read it once "
                        "your own version passes)."))


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
    if torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        return None
    bad = ~torch.isfinite(got) & torch.isfinite(expected)
    if bad.any():
        k = int(bad.flatten().nonzero()[0])
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), expected.shape)) if expected.dim() else ()
        return (f"your result is {float(got.flatten()[k])} at index {index}, where the reference is "
                f"{float(expected.flatten()[k]):.6g}")
    diff = (got - expected).abs().nan_to_num(float("inf"))
    k = int(diff.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), expected.shape)) if expected.dim() else ()
    return (f"largest difference {float(diff.flatten()[k]):.3g} at index {index}: expected "
            f"{float(expected.flatten()[k]):.6g}, got {float(got.flatten()[k]):.6g}")


def generic_hint(got, expected: Tensor) -> tuple[str, str] | None:
    """(name, text) of a difference that has a name even when no listed mistake reproduces it."""
    if not isinstance(got, Tensor) or got.dtype == torch.bool or expected.dtype == torch.bool:
        return None
    if got.dim() == 2 and tuple(got.shape) == tuple(expected.shape[::-1]) and got.shape != expected.shape:
        return "transposed", "your result looks transposed: check the order of the two axes."
    if got.shape != expected.shape:
        return None
    got, expected = got.detach().cpu().double(), expected.detach().double()
    if (~torch.isfinite(got) & torch.isfinite(expected)).any():
        return "not_finite", ("your result has NaN or inf where the reference is finite: a division by zero, or "
                              "the log of a probability that rounded to exactly 0 or 1?")
    if expected.numel() < 2:
        return None
    offset = got - expected
    if offset.abs().max() > 1e-6 and (offset - offset.flatten()[0]).abs().max() < 1e-6:
        constant = float(offset.flatten()[0])
        return "constant_offset", f"your values differ from the reference by the same constant {constant:.4g} " \
                                  "everywhere."
    if expected.abs().min() > 1e-6:
        ratio = got / expected
        if (ratio - ratio.flatten()[0]).abs().max() < 1e-5 and abs(float(ratio.flatten()[0]) - 1) > 1e-4:
            return "constant_factor", (f"your values are {float(ratio.flatten()[0]):.4g} × the reference everywhere: "
                                       "a missing or extra factor (a mean instead of a sum, or the other way round?).")
    return None


def _clone(value):
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _same(before, after) -> bool:
    """Nothing changed in place: the tensors in before and after (nested lists/dicts) are equal."""
    if isinstance(before, Tensor):
        return isinstance(after, Tensor) and before.shape == after.shape and torch.equal(before, after.detach())
    if isinstance(before, (list, tuple)):
        return len(before) == len(after) and all(_same(b, a) for b, a in zip(before, after))
    if isinstance(before, dict):
        return before.keys() == after.keys() and all(_same(before[k], after[k]) for k in before)
    return True


def _attached(result) -> bool:
    """The result (a tensor, or a dict of tensors) is attached to the autograd graph."""
    values = list(result.values()) if isinstance(result, dict) else [result]
    return bool(values) and all(isinstance(v, Tensor) and v.requires_grad for v in values)


def run_checks(title: str, fn: Callable, cases: list[Case], reference: Callable, mistakes: list[Mistake] = (),
               grad_args: tuple[int, ...] = (), problem: Callable = tensor_problem, verbose: bool = True,
               ) -> tuple[bool, str]:
    """Compare fn with reference on every case; (ok, message), printed when verbose.

    grad_args: positions of the arguments given requires_grad=True in the first case; the result
    must then stay attached to the autograd graph (it is a training loss).
    """
    def finish(ok: bool, message: str) -> tuple[bool, str]:
        if verbose:
            print(("✅ Correct! " if ok else "❌ ") + message)
        return ok, message

    guarded = _guard(title, fn)
    if guarded:
        return finish(False, guarded)
    for n, (description, args, kwargs, case_hint) in enumerate(cases):
        expected = reference(*args, **kwargs)
        student_args = tuple(_clone(a) for a in args)
        if n == 0 and grad_args:
            student_args = tuple(a.requires_grad_(True) if k in grad_args else a for k, a in enumerate(student_args))
        try:
            got = fn(*student_args, **kwargs)
        except NotImplementedError:
            return finish(False, f"{title}: {NOT_IMPLEMENTED}. Fill in the function above (it still raises "
                                 "NotImplementedError), run its cell, then run this checker again.")
        except Exception as error:  # noqa: BLE001 - any error of the student's code becomes a verdict
            return finish(False, f"{title}: your function raised {type(error).__name__}: {error} "
                                 f"(on {description}).")
        if not _same(args, student_args):
            return finish(False, f"{title}: your function changed one of its inputs in place (on {description})."
                          + hint_line("in_place", "compute new tensors instead (e.g. x = x * m, not x *= m)."))
        if n == 0 and grad_args and not _attached(got):
            return finish(False, f"{title}: the result is not differentiable with respect to the logits, so it "
                                 "cannot train a model."
                          + hint_line("not_differentiable", "avoid .item(), .detach(), numpy, thresholds and "
                                                            "argmax, and build the result from the logits."))
        difference = problem(got, expected)
        if difference is None:
            continue
        hint = None
        for name, wrong, text in mistakes:
            try:
                if problem(got, wrong(*args, **kwargs)) is None:
                    hint = name, text
                    break
            except Exception:  # noqa: BLE001, S112 - a mistake that does not apply to this input
                continue
        if hint is None:
            hint = case_hint or (generic_hint(got, expected) if isinstance(got, Tensor) else None)
        return finish(False, f"{title}: not yet right on {description}: {difference}."
                             + (hint_line(*hint) if hint else ""))
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
    for k, (M, P, scale) in enumerate([(3, 50, 3.0), (5, 200, 1.0), (2, 7, 4.0)]):
        g = _generator(seed + k)
        logits = torch.randn(M, P, generator=g) * scale
        targets = (torch.rand(M, P, generator=g) < 0.3).float()
        cases.append(Case(f"{M} random masks of {P} pixels", (logits, targets)))
    cases.append(Case("an empty target mask with a confident empty prediction",
                      (torch.full((2, 16), -9.0), torch.zeros(2, 16))))
    cases.append(Case("a full target mask predicted perfectly", (torch.full((1, 9), 9.0), torch.ones(1, 9))))
    return cases


DICE_MISTAKES = ("no_smoothing", "smoothing_numerator", "smoothing_denominator", "logits_not_probabilities",
                 "factor_two", "squared_denominator", "means_not_sums")


def _dice_mistake(x: Tensor, t: Tensor, *, mistake: str) -> Tensor:
    """Eq. (3.2g) per mask on logits x with the one named mistake (one of DICE_MISTAKES): always a
    wrong version, never the loss itself (the right numbers come from losses.dice_loss)."""
    if mistake not in DICE_MISTAKES:
        raise ValueError(f"unknown dice mistake {mistake!r}")
    p = x if mistake == "logits_not_probabilities" else x.sigmoid()
    inter, sizes = (p * t).sum(1), (p * p + t * t).sum(1) if mistake == "squared_denominator" else p.sum(1) + t.sum(1)
    if mistake == "means_not_sums":
        inter, sizes = inter / p.shape[1], sizes / p.shape[1]
    two = 1.0 if mistake == "factor_two" else 2.0
    top = 0.0 if mistake in ("no_smoothing", "smoothing_numerator") else 1.0
    bottom = 0.0 if mistake in ("no_smoothing", "smoothing_denominator") else 1.0
    return 1 - (two * inter + top) / (sizes + bottom)


def check_dice(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(mask_logits (M, P), target_masks (M, P) float 0/1) → (M,): Eq. (3.2g) for every mask."""
    reference = _per_mask(losses.dice_loss)

    def wrong(mistake): return lambda x, t: _dice_mistake(x, t, mistake=mistake)

    mistakes = [
        Mistake("no_smoothing", wrong("no_smoothing"),
                "the +1 smoothing of Eq. (3.2g) is missing (in the numerator, the denominator, or both?)."),
        Mistake("smoothing_numerator", wrong("smoothing_numerator"),
                "the +1 smoothing is missing in the numerator: (2 Σ m·m_gt + 1) / (Σ m + Σ m_gt + 1)."),
        Mistake("smoothing_denominator", wrong("smoothing_denominator"),
                "the +1 smoothing is missing in the denominator: (2 Σ m·m_gt + 1) / (Σ m + Σ m_gt + 1)."),
        Mistake("logits_not_probabilities", wrong("logits_not_probabilities"),
                "you used the logits; Eq. (3.2g) takes the probabilities m = sigmoid(logits)."),
        Mistake("factor_two", wrong("factor_two"), "the factor 2 in front of Σ m·m_gt is missing."),
        Mistake("squared_denominator", wrong("squared_denominator"),
                "you squared m and m_gt in the denominator (the V-Net variant); Eq. (3.2g) sums them as they are."),
        Mistake("means_not_sums", wrong("means_not_sums"),
                "use sums over the pixels, not means (the +1 then weighs differently)."),
        Mistake("coefficient_not_loss", lambda x, t: 1 - reference(x, t),
                "you returned the dice coefficient; the loss is 1 − coefficient."),
        Mistake("summed_over_masks", lambda x, t: reference(x, t).sum(),
                "return one loss per mask, shape (M,), not their sum."),
        Mistake("averaged_over_masks", lambda x, t: reference(x, t).mean(),
                "return one loss per mask, shape (M,), not their mean."),
    ]
    return run_checks("dice loss, Eq. (3.2g)", fn, _mask_cases(0), reference, mistakes,
                      grad_args=(0,), verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 2. Focal loss, Eq. (3.2f)           reference: losses.sigmoid_focal_loss
# ---------------------------------------------------------------------------------------------

UNSTABLE_LOG = ("at a logit of 50, sigmoid(x) is exactly 1.0 in float32, so log(1 − p) is −inf (or clamped to "
                "−100 by F.binary_cross_entropy): compute −log p_t from the logits, e.g. "
                "F.binary_cross_entropy_with_logits(x, m_gt, reduction='none'), or −F.logsigmoid(x_t) with "
                "x_t = x where m_gt = 1 and −x where m_gt = 0 (numerical stability).")


FOCAL_MISTAKES = ("alpha_everywhere", "alpha_missing", "alpha_swapped", "modulating_p_t", "p_t_is_p", "unstable_log")


def _focal_mistake(x: Tensor, t: Tensor, alpha: float = 0.25, gamma: float = 2.0, *, mistake: str) -> Tensor:
    """Eq. (3.2f) per mask with the one named mistake (one of FOCAL_MISTAKES): always a wrong version,
    never the loss itself (the right numbers come from losses.sigmoid_focal_loss)."""
    if mistake not in FOCAL_MISTAKES:
        raise ValueError(f"unknown focal mistake {mistake!r}")
    p = x.sigmoid()
    ce = _naive_log(x, t) if mistake == "unstable_log" else F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p if mistake == "p_t_is_p" else p * t + (1 - p) * (1 - t)
    alpha_t = {"alpha_everywhere": alpha + 0 * t, "alpha_missing": 1 + 0 * t,
               "alpha_swapped": (1 - alpha) * t + alpha * (1 - t)}.get(mistake, alpha * t + (1 - alpha) * (1 - t))
    modulating = p_t if mistake == "modulating_p_t" else 1 - p_t
    return (alpha_t * modulating ** gamma * ce).mean(1)


def _naive_log(x: Tensor, t: Tensor) -> Tensor:
    """−log p_t computed from the probabilities: inf once sigmoid rounds to 0 or 1."""
    p = x.sigmoid()
    return -torch.log(p * t + (1 - p) * (1 - t))


def check_focal(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(mask_logits (M, P), target_masks (M, P), alpha=0.25, gamma=2.0) → (M,): Eq. (3.2f) per mask."""
    def cases() -> list[Case]:
        g = _generator(99)
        logits, targets = torch.randn(4, 60, generator=g) * 2, (torch.rand(4, 60, generator=g) < 0.5).float()
        extreme = torch.tensor([[50.0, -50.0, 50.0, -50.0, 3.0, -2.0], [-50.0, 50.0, 0.5, 50.0, -50.0, 1.0]])
        extreme_targets = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 1.0, 1.0]])
        return _mask_cases(10) + [
            Case("random masks with alpha=0.5, gamma=1.0", (logits, targets), {"alpha": 0.5, "gamma": 1.0}),
            Case("extreme logits of ±50 (confidently right and confidently wrong pixels)",
                 (extreme, extreme_targets), {}, ("unstable_log", UNSTABLE_LOG)),
        ]

    reference = _per_mask(losses.sigmoid_focal_loss)

    def wrong(mistake): return lambda x, t, **kw: _focal_mistake(x, t, **kw, mistake=mistake)

    mistakes = [
        Mistake("alpha_everywhere", wrong("alpha_everywhere"),
                "α_t is α where m_gt = 1 but 1 − α where m_gt = 0; you used α everywhere."),
        Mistake("alpha_missing", wrong("alpha_missing"),
                "the α_t weight is missing (α = 0.25 on foreground pixels, 1 − α on background ones)."),
        Mistake("alpha_swapped", wrong("alpha_swapped"),
                "α and 1 − α are swapped: α_t = α on foreground pixels (m_gt = 1)."),
        Mistake("modulating_p_t", wrong("modulating_p_t"),
                "the modulating factor is (1 − p_t)^γ, which shrinks the loss of well-classified pixels; "
                "you used p_t^γ."),
        Mistake("p_t_is_p", wrong("p_t_is_p"),
                "p_t is p where m_gt = 1 but 1 − p where m_gt = 0; you used p everywhere."),
        Mistake("gamma_missing", lambda x, t, alpha=0.25, gamma=2.0: reference(x, t, alpha=alpha, gamma=0.0),
                "the (1 − p_t)^γ factor is missing (this is α-weighted cross-entropy)."),
        Mistake("plain_bce", lambda x, t, **kw: F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1),
                "this is plain binary cross-entropy: the α_t and (1 − p_t)^γ factors are missing."),
        Mistake("sum_over_pixels", lambda x, t, **kw: reference(x, t, **kw) * x.shape[1],
                "Eq. (3.2f) takes the mean over the pixels of each mask, not the sum."),
        Mistake("summed_over_masks", lambda x, t, **kw: reference(x, t, **kw).sum(),
                "return one loss per mask, shape (M,), not their sum."),
        Mistake("averaged_over_masks", lambda x, t, **kw: reference(x, t, **kw).mean(),
                "return one loss per mask, shape (M,), not their mean."),
        Mistake("arguments_ignored", lambda x, t, **kw: reference(x, t),
                "you ignored the alpha / gamma arguments (hard-coded 0.25 and 2?)."),
        Mistake("unstable_log", wrong("unstable_log"), UNSTABLE_LOG),
    ]
    return run_checks("focal loss, Eq. (3.2f)", fn, cases(), reference, mistakes,
                      grad_args=(0,), verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 3. Matching cost, Eq. (3.2c)        reference: matcher.HungarianMatcher.cost_matrix
# ---------------------------------------------------------------------------------------------


def _cost_reference(class_logits, mask_logits, labels, target_masks, cost_class=1.0, cost_focal=20.0,
                    cost_dice=1.0):
    # the matcher takes (N, h, w) masks and resizes the targets to (h, w): (N, 1, P) keeps them as they are
    N, P = mask_logits.shape
    m = matcher.HungarianMatcher(cost_class, cost_focal, cost_dice)
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
            out.append(Case(f"N={N} predictions, n={n} segments, K={K} classes, P={P} pixels",
                            (class_logits, mask_logits, labels, target_masks)))
        out.append(Case("the first input with cost_class=2, cost_focal=5, cost_dice=0.5", out[0].args,
                        {"cost_class": 2.0, "cost_focal": 5.0, "cost_dice": 0.5}))
        return out

    def wrong_class_term(term: Callable) -> Callable:
        """The right C (the project's matcher) with its class term −λ_cls·p_i(c_j) replaced by λ_cls·term(x, y)."""
        def cost(x, m, y, t, cost_class=1.0, cost_focal=20.0, cost_dice=1.0):
            right = _cost_reference(x, m, y, t, cost_class, cost_focal, cost_dice)
            return right + cost_class * (x.softmax(-1)[:, y] + term(x, y))
        return cost

    def focal_term(x, m, y, t, cost_focal=20.0, **kw): return _cost_reference(x, m, y, t, 0.0, cost_focal, 0.0)

    def dice_term(x, m, y, t, cost_dice=1.0, **kw): return _cost_reference(x, m, y, t, 0.0, 0.0, cost_dice)

    def dice_without_smoothing(m, t):
        """The dice loss of Eq. (3.2g) for every (prediction, segment) pair with its +1 left out (a mistake)."""
        p = m.sigmoid()
        return 1 - 2 * p @ t.T / (p.sum(1)[:, None] + t.sum(1)[None, :])

    mistakes = [
        Mistake("class_term_sign", wrong_class_term(lambda x, y: x.softmax(-1)[:, y]),
                "wrong sign of the class term: Eq. (3.2c) has −λ_cls·p_i(c_j). With +p, a prediction that is "
                "*sure* of class c_j costs more, and the matching prefers the wrong predictions."),
        Mistake("cost_negated", lambda *a, **kw: -_cost_reference(*a, **kw),
                "the whole cost has the wrong sign: C is minimised, so the class term is −p_i(c_j) and the "
                "focal and dice losses enter with +."),
        Mistake("minus_log_p", wrong_class_term(lambda x, y: -x.log_softmax(-1)[:, y]),
                "the class term of Eq. (3.2c) is −p_i(c_j), a probability, not −log p_i(c_j) (see DETR §3.1: "
                "−log p is unbounded and would swamp the mask terms)."),
        Mistake("one_minus_p", wrong_class_term(lambda x, y: 1 - x.softmax(-1)[:, y]),
                "you wrote 1 − p_i(c_j): a constant shift gives the same assignment, but Eq. (3.2c) writes "
                "−p_i(c_j)."),
        Mistake("softmax_without_no_object", wrong_class_term(lambda x, y: -x[:, :-1].softmax(-1)[:, y]),
                "the softmax runs over all K + 1 classes, ∅ included (Eq. (3.3a)); you dropped ∅ before the "
                "softmax."),
        Mistake("sigmoid_not_softmax", wrong_class_term(lambda x, y: -x.sigmoid()[:, y]),
                "class probabilities come from a softmax over the K + 1 classes, not a sigmoid."),
        Mistake("logits_not_probabilities", wrong_class_term(lambda x, y: -x[:, y]),
                "the class term needs probabilities: softmax the class logits first."),
        Mistake("arguments_ignored", lambda x, m, y, t, **kw: _cost_reference(x, m, y, t),
                "you ignored the cost_class / cost_focal / cost_dice arguments (hard-coded 1, 20, 1?)."),
        Mistake("weights_missing", lambda x, m, y, t, **kw: _cost_reference(x, m, y, t, 1.0, 1.0, 1.0),
                "the weights λ are missing: C = 1·(−p) + 20·focal + 1·dice."),
        Mistake("focal_sum_over_pixels",
                lambda *a, **kw: _cost_reference(*a, **kw) + focal_term(*a, **kw) * (a[1].shape[1] - 1),
                "the focal term is the mean over pixels (÷ P), not the sum."),
        Mistake("no_smoothing", lambda x, m, y, t, **kw: _cost_reference(x, m, y, t, **kw) - dice_term(x, m, y, t, **kw)
                + kw.get("cost_dice", 1.0) * dice_without_smoothing(m, t),
                "the dice term needs the +1 smoothing of Eq. (3.2g)."),
        Mistake("focal_missing", lambda *a, **kw: _cost_reference(*a, **kw) - focal_term(*a, **kw),
                "the focal term is missing: L_mask = 20·focal + 1·dice, Eq. (3.2e)."),
        Mistake("dice_missing", lambda *a, **kw: _cost_reference(*a, **kw) - dice_term(*a, **kw),
                "the dice term is missing: L_mask = 20·focal + 1·dice, Eq. (3.2e)."),
        Mistake("transposed", lambda *a, **kw: _cost_reference(*a, **kw).T,
                "rows are predictions, columns are ground-truth segments: C is (N, n)."),
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
            out.append(Case(f"B={B}, N={N}, C={C}, H={H}, W={W}",
                            (torch.randn(B, N, C, generator=g), torch.randn(B, C, H, W, generator=g))))
        return out

    def dots(e, p): return torch.einsum("bnc,bchw->bnhw", e, p)

    mistakes = [
        Mistake("sigmoid_missing", lambda e, p: dots(e, p),
                "Eq. (3.3b) ends with a sigmoid: return probabilities, not logits."),
        Mistake("softmax_over_queries", lambda e, p: dots(e, p).softmax(1),
                "the paper uses an independent sigmoid per mask, not a softmax across the N queries "
                "(§3.3: sigmoids work better)."),
        Mistake("softmax_over_pixels", lambda e, p: dots(e, p).flatten(2).softmax(-1).view_as(dots(e, p)),
                "no softmax over the pixels: every pixel gets its own sigmoid."),
        Mistake("sigmoid_on_embeddings", lambda e, p: dots(e.sigmoid(), p.sigmoid()),
                "the sigmoid goes after the dot product, not on the embeddings."),
        Mistake("normalised_embeddings", lambda e, p: dots(F.normalize(e, dim=-1), F.normalize(p, dim=1)).sigmoid(),
                "a plain dot product: do not normalise the embeddings (that would be a cosine similarity)."),
        Mistake("height_width_swapped", lambda e, p: dots(e, p.transpose(2, 3)).sigmoid(),
                "H and W are swapped: keep the pixel embeddings' (H, W) order in the result."),
    ]
    return run_checks("mask prediction, Eq. (3.3b)", fn, cases(), _masks_reference, mistakes, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 5. Semantic inference, Eq. (3.4b)   reference: inference.semantic_inference
# ---------------------------------------------------------------------------------------------


def _inference_logits(seed: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Random (class logits (..., N, K+1), mask logits (..., N, H, W)) for shape (..., N, K, H, W)."""
    *batch, N, K, H, W = shape
    g = _generator(seed)
    return torch.randn(*batch, N, K + 1, generator=g) * 2, torch.randn(*batch, N, H, W, generator=g) * 3


def check_semantic_inference(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(class_logits (B, N, K+1), mask_logits (B, N, H, W)) → class scores (B, K, H, W), Eq. (3.4b)."""
    cases = [Case(f"B={B}, N={N}, K={K}, H={H}, W={W}", _inference_logits(40 + k, (B, N, K, H, W)))
             for k, (B, N, K, H, W) in enumerate([(2, 6, 4, 5, 7), (1, 10, 3, 8, 8), (3, 2, 5, 3, 4)])]

    def scores(x, m, *, probs, masks):
        """Σ_i probs(x)_i(c) · masks(m)_i[h, w]: a mistake names both (no default to fall back on)."""
        return torch.einsum("bnk,bnhw->bkhw", probs(x), masks(m))

    def p(x): return x.softmax(-1)[..., :-1]

    reference = inference.semantic_inference
    mistakes = [
        Mistake("no_object_kept", lambda x, m: scores(x, m, probs=lambda x: x.softmax(-1), masks=torch.sigmoid),
                "∅ (the last class) takes no part in Eq. (3.4b): drop its column after the softmax, c ∈ {1…K}."),
        Mistake("no_object_dropped_before_softmax",
                lambda x, m: scores(x, m, probs=lambda x: x[..., :-1].softmax(-1), masks=torch.sigmoid),
                "the softmax runs over all K + 1 classes first (Eq. (3.3a)); drop ∅'s column after it, not before."),
        Mistake("sigmoid_missing", lambda x, m: scores(x, m, probs=p, masks=lambda m: m),
                "the masks are m_i = sigmoid(mask logits), Eq. (3.3b)."),
        Mistake("softmax_over_queries", lambda x, m: scores(x, m, probs=p, masks=lambda m: m.softmax(1)),
                "each mask gets its own sigmoid, not a softmax over the queries."),
        Mistake("logits_not_probabilities", lambda x, m: scores(x, m, probs=lambda x: x[..., :-1], masks=torch.sigmoid),
                "the class probabilities are the softmax of the class logits."),
        Mistake("argmax_returned", lambda x, m: reference(x, m).argmax(1),
                "return the scores (B, K, H, W); the semantic map is their argmax."),
        Mistake("divided_by_queries", lambda x, m: reference(x, m) / x.shape[1],
                "Eq. (3.4b) sums over the queries; no division by N."),
    ]
    return run_checks("semantic inference, Eq. (3.4b)", fn, cases, reference, mistakes,
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


PQ_MISTAKES = ("iou_not_strict", "any_category", "halves_missing", "pooled_over_classes")


def _pq_mistake(pred, pred_segments, gt, gt_segments, *, mistake: str) -> dict[str, float]:
    """PQ written out with the one named mistake (one of PQ_MISTAKES): always a wrong version, never the
    metric itself (the right numbers come from metrics.PanopticMetrics)."""
    if mistake not in PQ_MISTAKES:
        raise ValueError(f"unknown PQ mistake {mistake!r}")
    strict, same_category = mistake != "iou_not_strict", mistake != "any_category"
    half, per_category = mistake != "halves_missing", mistake != "pooled_over_classes"
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
    cases = [Case(f"random scene #{seed}", _random_panoptic(seed)) for seed in range(50, 56)]
    cases.append(Case("a segment whose IoU with the ground truth is exactly 0.5", _half_iou_case()))
    cases.append(Case("a segment found with the right outline but the wrong class", _wrong_class_case()))
    mistakes = [
        Mistake("iou_not_strict", functools.partial(_pq_mistake, mistake="iou_not_strict"),
                "a match needs IoU > 0.5 strictly (that is what makes matches unique); you accepted IoU = 0.5."),
        Mistake("any_category", functools.partial(_pq_mistake, mistake="any_category"),
                "a predicted and a ground-truth segment can only match if they have the same class."),
        Mistake("halves_missing", functools.partial(_pq_mistake, mistake="halves_missing"),
                "RQ = TP / (TP + ½ FP + ½ FN): the ½ factors are missing."),
        Mistake("pooled_over_classes", functools.partial(_pq_mistake, mistake="pooled_over_classes"),
                "PQ, SQ and RQ are computed per class, then averaged over classes; you pooled all segments "
                "together."),
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
            out.append(Case(f"x of shape {(B, H, W, C)} with window_size={ws}", (x, ws)))
        return out

    def split(x, ws):
        B, H, W, C = x.shape
        return x.reshape(B, H // ws, ws, W // ws, ws, C)

    mistakes = [
        Mistake("reshape_without_permute", lambda x, ws: x.reshape(-1, ws, ws, x.shape[-1]),
                "a reshape alone cuts the rows of the image into pieces, not square windows: split H and W into "
                "(nH, ws) and (nW, ws), then bring the window axes together with a permute."),
        Mistake("column_major", lambda x, ws: split(x, ws).permute(0, 3, 1, 2, 4, 5).reshape(-1, ws, ws, x.shape[-1]),
                "the windows are there but in column-major order; list them row by row (nH before nW)."),
        Mistake("window_transposed",
                lambda x, ws: split(x, ws).permute(0, 1, 3, 4, 2, 5).reshape(-1, ws, ws, x.shape[-1]),
                "each window is transposed: keep the axes (row-in-window, column-in-window) in that order."),
        Mistake("not_flattened", lambda x, ws: split(x, ws).permute(0, 1, 3, 2, 4, 5),
                "merge the batch and window-grid axes into one: the result is (B·nH·nW, ws, ws, C)."),
    ]
    return run_checks("window partition (Swin)", fn, cases(), backbones.window_partition, mistakes, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 8. Shifted-window attention mask (Swin)   reference: backbones.shifted_window_mask
# ---------------------------------------------------------------------------------------------


def check_shifted_window_mask(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(Hp, Wp, window_size, shift_size) → (nW, ws², ws²) float: 0 = may attend, −100 = masked."""
    cases = [Case(f"Hp={Hp}, Wp={Wp}, window_size={ws}, shift_size={s}", (Hp, Wp, ws, s))
             for Hp, Wp, ws, s in [(8, 8, 4, 2), (14, 21, 7, 3), (12, 8, 4, 1), (6, 6, 3, 1)]]

    def labels_of(Hp, Wp, ws, s, *, mistake):
        """The region labels of each window's tokens, (nW, ws²), built with the one named mistake:
        wrapped_at_start, band_late / band_early (the last band's first row and column one too late /
        early), window_band_off_by_one or reshape_not_partition. Never the right labels."""
        if mistake not in ("wrapped_at_start", "band_late", "band_early", "window_band_off_by_one",
                           "reshape_not_partition"):
            raise ValueError(f"unknown window-mask mistake {mistake!r}")
        shift_edge, window_edge = {"band_late": (1, 0), "band_early": (-1, 0), "window_band_off_by_one": (0, 1)}.get(
            mistake, (0, 0))
        rows, cols = torch.arange(Hp), torch.arange(Wp)
        if mistake == "wrapped_at_start":  # the wrapped tokens put at the start of each axis instead of the end
            rb, cb = (rows >= s).long(), (cols >= s).long()
        else:
            rb = (rows >= Hp - ws + window_edge).long() + (rows >= Hp - s + shift_edge).long()
            cb = (cols >= Wp - ws + window_edge).long() + (cols >= Wp - s + shift_edge).long()
        labels = (rb[:, None] * 3 + cb[None, :]).float()
        if mistake == "reshape_not_partition":
            return labels.reshape(-1, ws * ws)
        return labels.reshape(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)

    def mask(*a, mistake):
        """−100 between tokens of different regions, 0 elsewhere, from labels with the named mistake."""
        labels = labels_of(*a, mistake=mistake)
        differ = labels[:, None, :] != labels[:, :, None]
        return torch.zeros(differ.shape).masked_fill(differ, -100.0)

    reference = backbones.shifted_window_mask
    band_text = ("the last band is off by one: the tokens that wrapped around are the last `shift` rows and columns, "
                 "indices Hp − shift … Hp − 1 (`rows >= Hp - shift_size`, `slice(Hp - shift_size, Hp)`); check "
                 "`>` against `>=` and where your slices end.")
    mistakes = [
        Mistake("booleans", lambda *a: reference(*a) != 0,
                "return floats: 0.0 where two tokens may attend, −100.0 where they may not (added to the "
                "attention scores), not booleans."),
        Mistake("booleans_allowed", lambda *a: reference(*a) == 0,
                "return floats: 0.0 where two tokens may attend, −100.0 where they may not, not booleans (and "
                "True meant 'allowed' here)."),
        Mistake("minus_inf", lambda *a: reference(*a).masked_fill(reference(*a) != 0, float("-inf")),
                "the right pairs are masked, but with −inf; use −100.0 as the official code does."),
        Mistake("inverted", lambda *a: -100.0 - reference(*a),
                "inverted: pairs from the same region get 0 (may attend), pairs from different regions −100."),
        Mistake("wrapped_at_start", lambda *a: mask(*a, mistake="wrapped_at_start"),
                "after the roll by −shift the wrapped-around tokens are the last `shift` rows and columns, "
                "[Hp − shift, Hp), not the first."),
        Mistake("band_off_by_one", lambda *a: mask(*a, mistake="band_late"), band_text),
        Mistake("band_off_by_one", lambda *a: mask(*a, mistake="band_early"), band_text),
        Mistake("window_band_off_by_one", lambda *a: mask(*a, mistake="window_band_off_by_one"),
                "the middle band is off by one: it starts at Hp − window_size, the first row (column) of the last "
                "window, and ends at Hp − shift_size."),
        Mistake("reshape_not_partition", lambda *a: mask(*a, mistake="reshape_not_partition"),
                "group the region labels by window (window_partition) before comparing them; a plain reshape "
                "mixes rows of different windows."),
    ]
    return run_checks("shifted-window attention mask (Swin)", fn, cases, reference, mistakes,
                      verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 9. The loss of Eq. (3.2d)           reference: losses.MaskFormerLoss (loss_labels, loss_masks)
# ---------------------------------------------------------------------------------------------


def _loss_reference(class_logits: Tensor, mask_logits: Tensor, targets: list[dict], indices: list,
                    no_object_weight: float = 0.1) -> dict[str, Tensor]:
    """MaskFormerLoss's terms for the given matching; each (P,) mask is passed as a 1 × P image."""
    B, N, K1 = class_logits.shape
    criterion = losses.MaskFormerLoss(K1 - 1, matcher=nn.Identity(), no_object_weight=no_object_weight,
                                      num_aux_layers=0)  # the matcher is not used: the matching is given
    outputs = {"pred_logits": class_logits, "pred_masks": mask_logits[:, :, None, :]}  # (B, N, 1, P)
    image_targets = [{"labels": t["labels"], "masks": t["masks"][:, None, :]} for t in targets]  # (n, 1, P)
    num_masks, class_weight_sum = losses.loss_normalisers(image_targets, N, no_object_weight, class_logits.device)
    mask_terms = criterion.loss_masks(outputs, image_targets, indices, num_masks)
    return {"loss_ce": criterion.loss_labels(outputs, image_targets, indices, class_weight_sum)["loss_ce"],
            "loss_focal": mask_terms["loss_focal"], "loss_dice": mask_terms["loss_dice"]}


CLASS_TERM_MISTAKES = ("no_object_weight_swapped", "mean_not_weighted_mean", "unmatched_not_trained")


def _class_term_mistake(class_logits: Tensor, targets: list[dict], indices: list, no_object_weight: float = 0.1,
                        *, mistake: str) -> Tensor:
    """The cross-entropy term of Eq. (3.2d) with the one named mistake (one of CLASS_TERM_MISTAKES):
    always a wrong version, never the term itself (the right numbers come from losses.MaskFormerLoss)."""
    if mistake not in CLASS_TERM_MISTAKES:
        raise ValueError(f"unknown class-term mistake {mistake!r}")
    B, N, K1 = class_logits.shape
    target_classes = torch.full((B, N), K1 - 1)  # ∅ unless matched
    matched = torch.zeros(B, N, dtype=torch.bool)
    for b, (query, segment) in enumerate(indices):
        target_classes[b, query] = targets[b]["labels"][segment]
        matched[b, query] = True
    w = torch.ones(K1)
    w[-1] = no_object_weight
    if mistake == "no_object_weight_swapped":
        w = torch.full((K1,), no_object_weight)
        w[-1] = 1.0
    ce = F.cross_entropy(class_logits.transpose(1, 2), target_classes, reduction="none")  # (B, N)
    w_q = w[target_classes]
    keep = matched if mistake == "unmatched_not_trained" else torch.ones(B, N, dtype=torch.bool)
    return (w_q * ce)[keep].sum() / (keep.sum() if mistake == "mean_not_weighted_mean" else w_q[keep].sum())


def _rescaled_mask_terms(terms: dict[str, Tensor], factor) -> dict[str, Tensor]:
    """The loss dict with its two mask terms multiplied by factor (a mistaken normaliser)."""
    return {**terms, "loss_focal": terms["loss_focal"] * factor, "loss_dice": terms["loss_dice"] * factor}


def _loss_mistakes() -> list[Mistake]:
    """The common mistakes of exercise 9, each built from the project's loss (`_loss_reference`) and,
    for the class term, `_class_term_mistake`."""
    def class_term(mistake):
        def loss(c, m, t, i, no_object_weight=0.1):
            right = _loss_reference(c, m, t, i, no_object_weight)
            return {**right, "loss_ce": _class_term_mistake(c, t, i, no_object_weight, mistake=mistake)}
        return loss

    def masks(n): return sum(len(s) for _, s in n)

    def per_image(c, m, t, i, no_object_weight=0.1):
        images = [_loss_reference(c[b:b + 1], m[b:b + 1], [t[b]], [i[b]], no_object_weight) for b in range(len(t))]
        return {"loss_ce": _loss_reference(c, m, t, i, no_object_weight)["loss_ce"],
                **{key: torch.stack([x[key] for x in images]).mean() for key in ("loss_focal", "loss_dice")}}

    def focal_summed_over_pixels(c, m, t, i, no_object_weight=0.1):
        right = _loss_reference(c, m, t, i, no_object_weight)
        return {**right, "loss_focal": right["loss_focal"] * m.shape[-1]}  # × P: the sum over the pixels

    return [
        Mistake("no_object_weight_missing", lambda c, m, t, i, no_object_weight=0.1: _loss_reference(c, m, t, i, 1.0),
                "in the cross-entropy, queries whose target is ∅ weigh no_object_weight = 0.1 (most queries "
                "are ∅); you weighted every query 1."),
        Mistake("no_object_weight_swapped", class_term("no_object_weight_swapped"),
                "the weight no_object_weight belongs to ∅ (the last class); the K real classes weigh 1."),
        Mistake("argument_ignored", lambda c, m, t, i, no_object_weight=0.1: _loss_reference(c, m, t, i),
                "you ignored the no_object_weight argument (hard-coded 0.1?)."),
        Mistake("mean_not_weighted_mean", class_term("mean_not_weighted_mean"),
                "the class term is a weighted mean, Σ w·(−log p) / Σ w (what F.cross_entropy(..., weight=w) "
                "computes), not Σ w·(−log p) / (number of queries)."),
        Mistake("unmatched_not_trained", class_term("unmatched_not_trained"),
                "every query is in the class term: an unmatched query has the target ∅ (class index K); you "
                "left the unmatched queries out."),
        Mistake("matching_ignored", lambda c, m, t, i, **kw: _loss_reference(
                    c, m, t, [(torch.arange(len(q)), torch.arange(len(s))) for q, s in i], **kw),
                "use the matching: prediction query_idx[k] goes with segment segment_idx[k]; you paired "
                "prediction k with segment k."),
        Mistake("segment_order_ignored", lambda c, m, t, i, **kw: _loss_reference(
                    c, m, t, [(q, torch.arange(len(s))) for q, s in i], **kw),
                "prediction query_idx[k] goes with segment segment_idx[k], not with segment k."),
        Mistake("num_masks_per_image", per_image,
                "divide the mask terms, summed over the whole batch, by the number of ground-truth masks of the "
                "whole batch, not image by image."),
        Mistake("divided_by_queries", lambda c, m, t, i, **kw: _rescaled_mask_terms(
                    _loss_reference(c, m, t, i, **kw), max(masks(i), 1) / (c.shape[0] * c.shape[1])),
                "divide the mask terms by the number of ground-truth masks, not by the number of queries B·N."),
        Mistake("not_divided", lambda c, m, t, i, **kw: _rescaled_mask_terms(
                    _loss_reference(c, m, t, i, **kw), max(masks(i), 1)),
                "the summed mask terms are divided by the number of ground-truth masks in the batch."),
        Mistake("no_masks_in_batch", lambda c, m, t, i, **kw: _rescaled_mask_terms(
                    _loss_reference(c, m, t, i, **kw), max(masks(i), 1) / masks(i) if masks(i) else float("nan")),
                "a batch without any segment: divide by max(number of masks, 1), so the mask terms are 0, "
                "not NaN."),
        Mistake("focal_sum_over_pixels", focal_summed_over_pixels,
                "the focal loss of one mask is the mean over its pixels, Eq. (3.2f), not the sum."),
    ]


def _loss_inputs(seed: int, sizes: tuple[int, ...], N: int, K: int, P: int) -> tuple:
    """Random outputs for len(sizes) images, targets with sizes[b] segments, and a random matching."""
    g = _generator(seed)
    B = len(sizes)
    class_logits = torch.randn(B, N, K + 1, generator=g) * 2
    mask_logits = torch.randn(B, N, P, generator=g) * 3
    targets, indices = [], []
    for n in sizes:
        targets.append({"labels": torch.randint(0, K, (n,), generator=g),
                        "masks": (torch.rand(n, P, generator=g) < 0.4).float()})
        query = torch.randperm(N, generator=g)[:n].sort().values  # matched predictions, in order
        indices.append((query, torch.randperm(n, generator=g)))  # ... and the segment of each
    return class_logits, mask_logits, targets, indices


def dict_problem(got, expected: dict[str, Tensor]) -> str | None:
    if not isinstance(got, dict) or set(got) != set(expected):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        return f"expected a dict with keys {sorted(expected)}, got {keys}"
    for key in expected:
        problem = tensor_problem(got[key], expected[key])
        if problem is not None:
            return f"{key}: {problem}"
    return None


def check_mask_classification_loss(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(class_logits (B, N, K+1), mask_logits (B, N, P), targets [{"labels" (n,), "masks" (n, P)}],
    indices [(query_idx, segment_idx)], no_object_weight=0.1) → {"loss_ce", "loss_focal", "loss_dice"}."""
    cases = [
        Case("2 images with 2 and 3 segments, N=6 queries, K=4 classes, P=30 pixels",
             _loss_inputs(70, (2, 3), N=6, K=4, P=30)),
        Case("3 images with 0, 1 and 4 segments, N=7, K=3, P=20", _loss_inputs(71, (0, 1, 4), N=7, K=3, P=20)),
        Case("the first input with no_object_weight=0.5", _loss_inputs(70, (2, 3), N=6, K=4, P=30),
             {"no_object_weight": 0.5}),
        Case("1 image whose 5 segments take all N=5 queries", _loss_inputs(72, (5,), N=5, K=6, P=25)),
        Case("a batch of 2 images without any segment", _loss_inputs(73, (0, 0), N=4, K=3, P=10)),
    ]
    mistakes = _loss_mistakes()
    return run_checks("mask-classification loss, Eq. (3.2d)", fn, cases, _loss_reference, mistakes,
                      grad_args=(0, 1), problem=dict_problem, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 10. General inference and panoptic fusion, Eq. (3.4a)   reference: inference.panoptic_inference
# ---------------------------------------------------------------------------------------------


def _panoptic_scene(seed: int, N: int = 10, K: int = 5, size: int = 16) -> tuple[Tensor, Tensor, list[bool]]:
    """N queries, each a rectangle mask with a confident class, a confident ∅, an unsure class, or
    torn between ∅ and a class; classes 0, 2, 4 are things, 1 and 3 stuff."""
    g = _generator(seed)

    def randint(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    class_logits = torch.randn(N, K + 1, generator=g)
    mask_logits = torch.randn(N, size, size, generator=g) - 4  # (N, H, W): off everywhere ...
    for i in range(N):
        kind, c = randint(0, 7), randint(0, K)
        class_logits[i, c] += {0: 7.0, 1: 7.0, 2: 7.0, 3: 0.0, 4: 0.0, 5: 1.5, 6: 2.5}[kind]  # 4: unsure
        class_logits[i, K] += {3: 7.0, 6: 2.8}.get(kind, 0.0)  # 3: ∅, 6: torn between ∅ and c
        y, x, h, w = randint(0, size - 4), randint(0, size - 4), randint(3, 11), randint(3, 11)
        mask_logits[i, y:y + h, x:x + w] += 8  # ... but in its rectangle
    return class_logits, mask_logits, [c % 2 == 0 for c in range(K)]


PANOPTIC_MISTAKES = ("rank_by_mask_only", "no_object_kept", "confidence_filter_missing", "argmax_without_no_object",
                     "overlap_filter_missing", "void_reassigned", "stuff_not_merged", "things_merged")


def _panoptic_mistake(class_logits: Tensor, mask_logits: Tensor, is_thing: list[bool],
                      object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8, *,
                      mistake: str) -> tuple[Tensor, list[dict]]:
    """Panoptic inference written as a loop with the one named mistake (one of PANOPTIC_MISTAKES): always
    a wrong version, never the inference itself (the right result comes from inference.panoptic_inference)."""
    if mistake not in PANOPTIC_MISTAKES:
        raise ValueError(f"unknown panoptic mistake {mistake!r}")
    rank_by_score, drop_no_object = mistake != "rank_by_mask_only", mistake != "no_object_kept"
    confidence, argmax_over_all = mistake != "confidence_filter_missing", mistake != "argmax_without_no_object"
    overlap, reassign = mistake != "overlap_filter_missing", mistake == "void_reassigned"
    merge_stuff, merge_things = mistake != "stuff_not_merged", mistake == "things_merged"
    K = class_logits.shape[-1] - 1
    probs = class_logits.softmax(-1)
    scores, classes = probs.max(-1) if argmax_over_all else probs[:, :-1].max(-1)
    masks = mask_logits.sigmoid()
    kept = [i for i in range(len(scores)) if (not drop_no_object or classes[i] != K)
            and (not confidence or scores[i] > object_mask_threshold)]
    pan_seg = torch.zeros(masks.shape[1:], dtype=torch.long)

    def winners(queries: list[int]) -> Tensor:
        ranked = masks[queries] * (scores[queries, None, None] if rank_by_score else 1)
        return torch.tensor(queries)[ranked.argmax(0)]  # (H, W) query index

    if not kept:
        return pan_seg, []
    winner = winners(kept)
    survivors = [i for i in kept if (winner == i).any() and (not overlap or (
        (masks[i] >= 0.5).sum() > 0 and (winner == i).sum() / (masks[i] >= 0.5).sum() >= overlap_threshold))]
    if reassign and survivors:
        winner = winners(survivors)
    segments, merged = [], {}
    for i in survivors:
        c = int(classes[i])
        thing = c == K or is_thing[c]
        if (merge_things if thing else merge_stuff) and c in merged:
            segment_id = merged[c]
        else:
            segment_id = len(segments) + 1
            segments.append({"id": segment_id, "category_id": c, "isthing": thing})
            merged[c] = segment_id
        pan_seg[winner == i] = segment_id
    return pan_seg, segments


def panoptic_problem(got, expected: tuple[Tensor, list[dict]]) -> str | None:
    """Compares the segments as (class, pixel set) pairs: the ids may be numbered in any order."""
    try:
        pan_seg, segments = got
        pan_seg = torch.as_tensor(pan_seg)
        ids = [int(s["id"]) for s in segments]
        got_segments = {(int(s["category_id"]), tuple((pan_seg == s["id"]).flatten().nonzero().flatten().tolist()))
                        for s in segments}
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        return (f"expected (pan_seg (H, W), segments_info [{{'id': ..., 'category_id': ...}}, ...]), got something "
                f"else ({type(error).__name__}: {error})")
    expected_pan, expected_info = expected
    if pan_seg.shape != expected_pan.shape:
        return f"expected pan_seg of shape {tuple(expected_pan.shape)}, got {tuple(pan_seg.shape)}"
    if 0 in ids or len(set(ids)) != len(ids):
        return f"segment ids must be distinct and ≥ 1 (0 is void), got {ids}"
    void, expected_void = ~torch.isin(pan_seg, torch.tensor(ids, dtype=pan_seg.dtype)), expected_pan == 0
    if not torch.equal(void, expected_void):
        return (f"{int(expected_void.sum())} pixels should be void (0 or no listed segment), yours has "
                f"{int(void.sum())}")
    want = {(int(s["category_id"]), tuple((expected_pan == s["id"]).flatten().nonzero().flatten().tolist()))
            for s in expected_info}
    if got_segments == want:
        return None
    missing, extra = sorted(want - got_segments), sorted(got_segments - want)
    words = [f"a segment of class {c} with {len(p)} pixels is missing" for c, p in missing[:2]]
    words += [f"your segment of class {c} with {len(p)} pixels is not in the reference" for c, p in extra[:2]]
    return "; ".join(words)


def check_panoptic_inference(fn: Callable, verbose: bool = True) -> tuple[bool, str]:
    """fn(class_logits (N, K+1), mask_logits (N, H, W), is_thing (K,), object_mask_threshold=0.8,
    overlap_threshold=0.8) → (pan_seg (H, W) long, 0 = void, segments_info [{"id", "category_id"}])."""
    cases = [Case(f"random scene #{seed}: N=10 queries, K=5 classes, 16 × 16 pixels", _panoptic_scene(seed))
             for seed in range(80, 86)]
    cases.append(Case("random scene #86 with object_mask_threshold=0.3, overlap_threshold=0.5",
                      _panoptic_scene(86), {"object_mask_threshold": 0.3, "overlap_threshold": 0.5}))
    mistakes = [
        Mistake("rank_by_mask_only", functools.partial(_panoptic_mistake, mistake="rank_by_mask_only"),
                "Eq. (3.4a) gives a pixel to the query with the largest p_i(c_i)·m_i[h, w]; you compared the "
                "masks m_i alone."),
        Mistake("no_object_kept", functools.partial(_panoptic_mistake, mistake="no_object_kept"),
                "a query whose most likely class c_i is ∅ gives no segment: drop it before the pixels are "
                "assigned."),
        Mistake("confidence_filter_missing", functools.partial(_panoptic_mistake, mistake="confidence_filter_missing"),
                "keep only the queries with p_i(c_i) > object_mask_threshold before the pixels are assigned."),
        Mistake("argmax_without_no_object", functools.partial(_panoptic_mistake, mistake="argmax_without_no_object"),
                "c_i is the argmax over all K + 1 classes, ∅ included (a query whose argmax is ∅ gives no "
                "segment); you took the argmax over the K real classes."),
        Mistake("overlap_filter_missing", functools.partial(_panoptic_mistake, mistake="overlap_filter_missing"),
                "a query that wins fewer than overlap_threshold × its own mask's pixels (m_i ≥ 0.5), a mask "
                "mostly hidden by others, gives no segment."),
        Mistake("void_reassigned", functools.partial(_panoptic_mistake, mistake="void_reassigned"),
                "the pixels of a query dropped by the overlap filter stay void (0); they do not go to the next "
                "query."),
        Mistake("stuff_not_merged", functools.partial(_panoptic_mistake, mistake="stuff_not_merged"),
                "the queries of one stuff class make one segment together (stuff has no instances)."),
        Mistake("things_merged", functools.partial(_panoptic_mistake, mistake="things_merged"),
                "every query of a thing class is its own instance: do not merge things of one class."),
        Mistake("thresholds_ignored", lambda c, m, t, **kw: inference.panoptic_inference(c, m, t),
                "you ignored the object_mask_threshold / overlap_threshold arguments (hard-coded 0.8?)."),
    ]
    return run_checks("panoptic inference, Eq. (3.4a)", fn, cases, inference.panoptic_inference, mistakes,
                      problem=panoptic_problem, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# The list of exercises and the teacher's command line
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    notebook: str  # exercises/<notebook>
    function: str  # the function the student writes (same name in instructor/solutions.py)
    check: Callable[..., tuple[bool, str]]
    project: str  # where the project implements it
    difficulty: str  # "easy", "medium" or "hard", stated in the notebook
    minutes: int  # expected time for a student who has read the paper section, stated in the notebook


EXERCISES = {
    "dice": Exercise("01_dice_loss.ipynb", "dice_loss", check_dice, "losses.py:dice_loss", "easy", 15),
    "focal": Exercise("02_focal_loss.ipynb", "sigmoid_focal_loss", check_focal, "losses.py:sigmoid_focal_loss",
                      "medium", 25),
    "matching_cost": Exercise("03_matching_cost.ipynb", "matching_cost", check_matching_cost,
                              "matcher.py:HungarianMatcher.cost_matrix", "medium", 30),
    "mask_embedding": Exercise("04_mask_embedding.ipynb", "mask_probabilities", check_mask_embedding,
                               "maskformer.py:MaskFormer.segment", "easy", 15),
    "semantic_inference": Exercise("05_semantic_inference.ipynb", "semantic_inference", check_semantic_inference,
                                   "inference.py:semantic_inference", "easy", 15),
    "panoptic_quality": Exercise("06_panoptic_quality.ipynb", "panoptic_quality", check_panoptic_quality,
                                 "metrics.py:PanopticMetrics", "medium", 40),
    "window_partition": Exercise("07_window_partition.ipynb", "window_partition", check_window_partition,
                                 "backbones.py:window_partition", "medium", 20),
    "shifted_window_mask": Exercise("08_shifted_window_mask.ipynb", "shifted_window_mask",
                                    check_shifted_window_mask, "backbones.py:shifted_window_mask", "hard", 40),
    "mask_classification_loss": Exercise("09_mask_classification_loss.ipynb", "mask_classification_loss",
                                         check_mask_classification_loss, "losses.py:MaskFormerLoss", "hard", 45),
    "panoptic_inference": Exercise("10_panoptic_inference.ipynb", "panoptic_inference", check_panoptic_inference,
                                   "inference.py:panoptic_inference", "hard", 45),
}

NO_SOLUTIONS = ("the reference solutions are not in this bundle ({path} is absent): `--all` checks them, so it "
                "runs in the instructor's copy of the repository. Students: run the checker cell at the end of "
                "each notebook.")


def load_solutions() -> types.ModuleType | None:
    """instructor/solutions.py as a module, or None where it is absent (a student bundle)."""
    if not (INSTRUCTOR / "solutions.py").is_file():
        return None
    if str(INSTRUCTOR) not in sys.path:
        sys.path.insert(0, str(INSTRUCTOR))
    import solutions

    return solutions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the exercise checkers on the reference solutions "
                                                 "(instructor/solutions.py).")
    parser.add_argument("names", nargs="*", help=f"exercises to check: {', '.join(EXERCISES)}")
    parser.add_argument("--all", action="store_true", help="check every exercise")
    parser.add_argument("--quiet", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in EXERCISES]
    if unknown or not (args.all or args.names):
        parser.error(f"unknown exercise(s) {unknown}" if unknown else "name exercises or pass --all")
    solutions = load_solutions()
    if solutions is None:
        print("check.py: " + NO_SOLUTIONS.format(path=(INSTRUCTOR / "solutions.py").relative_to(REPO)))
        return 2

    names = list(EXERCISES) if args.all else args.names
    rows = []
    for name in names:
        exercise = EXERCISES[name]
        ok, message = exercise.check(getattr(solutions, exercise.function), verbose=not args.quiet)
        rows.append((name, exercise.notebook, f"{exercise.difficulty}, {exercise.minutes} min", exercise.project,
                     "ok" if ok else "FAILED"))
    header = ("exercise", "notebook", "difficulty", "project code", "result")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    failed = [r[0] for r in rows if r[-1] != "ok"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} reference solutions pass"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
