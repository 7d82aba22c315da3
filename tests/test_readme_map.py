"""Tests for the README's map of the code: every `file.py:name` of the "Paper-to-code map" exists, every
formula (3.1a)–(3.4b) of docs/paper.md and every box of Figure 2 has a row pointing at code, every
file the file table and the reading order name exists, and every top-level module is in the file table.

References are resolved as a reader would: import the module, then getattr through the dotted name
(`losses.py:MaskFormerLoss.forward` → losses.MaskFormerLoss.forward).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAPER = REPO / "docs" / "paper.md"
REFERENCE = re.compile(r"`([A-Za-z_][\w/]*)\.py:([A-Za-z_][\w.]*)`")
LABELS = ["3.1a", "3.1b", "3.2a", "3.2b", "3.2c", "3.2d", "3.2e", "3.2f", "3.2g", "3.3a", "3.3b", "3.4a", "3.4b"]
FIGURE_2_BOXES = ["backbone", "pixel decoder", "transformer decoder", "queries", "class head",
                  "mask embedding MLP", "mask dot product"]


def section(title: str) -> str:
    text = README.read_text()
    assert f"\n{title}\n" in text, f"README.md has no '{title}' section"
    start = text.index(f"\n{title}\n") + len(title) + 2
    end = text.find("\n## ", start)
    return text[start:] if end == -1 else text[start:end]


def map_rows() -> list[tuple[str, str]]:
    """(paper cell, code cell) of every row of the map's table."""
    rows = []
    for line in section("## Paper-to-code map").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and not set(cells[0]) <= set("-: ") and cells[0] != "paper":
            rows.append((cells[0], cells[2]))
    return rows


def resolve(module_name: str, dotted: str):
    assert (REPO / f"{module_name}.py").is_file(), f"{module_name}.py does not exist"
    obj = importlib.import_module(module_name.replace("/", "."))
    for part in dotted.split("."):
        assert hasattr(obj, part), f"{module_name}.py:{dotted}: {obj!r} has no attribute {part!r}"
        obj = getattr(obj, part)
    return obj


def test_every_named_function_exists():
    references = [ref for _, code in map_rows() for ref in REFERENCE.findall(code)]
    assert len(references) >= 20
    for module_name, dotted in references:
        assert callable(resolve(module_name, dotted)), f"{module_name}.py:{dotted} is not a function or class"


def test_the_resolver_rejects_wrong_names():
    with pytest.raises(AssertionError, match="has no attribute"):
        resolve("losses", "MaskFormerLoss.no_such_method")
    with pytest.raises(AssertionError, match="does not exist"):
        resolve("no_such_module", "anything")


@pytest.mark.parametrize("label", LABELS)
def test_every_formula_is_mapped(label):
    rows = [code for paper, code in map_rows() if f"Eq. ({label})" in paper]
    assert rows, f"no row for Eq. ({label})"
    assert all(REFERENCE.search(code) for code in rows), f"Eq. ({label}): a row names no `file.py:function`"


@pytest.mark.parametrize("box", FIGURE_2_BOXES)
def test_every_figure_2_box_is_mapped(box):
    rows = [code for paper, code in map_rows() if "Figure 2" in paper and paper.lower().endswith(box.lower())]
    assert len(rows) == 1, f"expected one row for the Figure 2 box {box!r}, found {len(rows)}"
    assert REFERENCE.search(rows[0])


def test_labels_are_those_of_paper_md():
    if not PAPER.is_file():
        pytest.skip("docs/paper.md is not in this checkout, so there are no labels to compare with")
    # each label's entry in docs/paper.md: an anchor line, then a heading "### (3.2d) ..."
    assert sorted(set(re.findall(r"^### \((3\.[1-4][a-z])\)", PAPER.read_text(), re.MULTILINE))) == LABELS


def layout_and_reading_order() -> str:
    text = README.read_text()
    start = text.index("**Reading order for the code**")
    return section("## Layout") + text[start:text.index("\n## ", start)]


def test_files_named_in_the_layout_and_reading_order_exist():
    names = set(re.findall(r"`([A-Za-z_][\w/]*\.py)`", layout_and_reading_order()))
    assert {"train.py", "data.py", "losses.py", "machinery/checkpoint.py"} <= names  # the parser finds the tables
    for name in sorted(names):
        assert (REPO / name).is_file(), f"README names {name}, which does not exist"


def test_every_module_is_in_the_layout():
    listed = set(re.findall(r"^\| `([A-Za-z_][\w/]*\.py)` \|", section("## Layout"), re.M))
    modules = {str(path.relative_to(REPO)) for folder in (REPO, REPO / "machinery", REPO / "tooling")
               for path in folder.glob("*.py") if path.name != "__init__.py"}
    assert {"evaluation.py", "machinery/runs.py", "tooling/benchmark.py"} <= modules  # the glob finds the modules
    assert not modules - listed, f"README's layout does not list {sorted(modules - listed)}"


def test_the_reading_order_names_real_functions_of_its_modules():
    # "`train.py`: `train` ..., then `train_step`; `machinery/adamw.py` (`lr_factor`)": every `name` is an
    # attribute of the last `file.py` named before it in the item
    start = README.read_text().index("**Reading order for the code**")
    items = re.split(r"\n\d+\. ", README.read_text()[start:].split("\n## ")[0])[1:]
    checked = set()
    for item in items:
        module = re.match(r"`([\w/]+)\.py`", item).group(1)
        for name in re.findall(r"`([A-Za-z_][\w./]*)`", item)[1:]:
            if name.endswith(".py"):
                module = name[:-3]
                continue
            resolve(module, name)
            checked.add(f"{module}.{name}")
    assert len(checked) >= 10
    assert {"train.train_step", "machinery/adamw.lr_factor", "evaluation.evaluate"} <= checked


def test_notebooks_and_exercises_are_listed():
    text = section("## Notebooks and exercises")
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert f"`{path.name}`" in text, f"README's notebook table does not list {path.name}"
    for path in sorted((REPO / "exercises").glob("*.ipynb")):
        assert f"`{path.stem}`" in text, f"README's exercise table does not list {path.stem}"


def test_modules_stay_readable_in_length():
    # one concept per module, short enough to read in a sitting
    limit = 700
    modules = [path for folder in (REPO, REPO / "machinery", REPO / "tooling") for path in folder.glob("*.py")]
    assert len(modules) > 20
    long = {str(path.relative_to(REPO)): path.read_text().count("\n") for path in modules}
    assert all(lines <= limit for lines in long.values()), {k: v for k, v in long.items() if v > limit}
