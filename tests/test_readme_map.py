"""Tests for the README's "Paper-to-code map": every `file.py:name` it names exists, and every formula
(3.1a)–(3.4b) of PAPER.md and every box of Figure 2 has a row pointing at code.

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
PAPER = REPO.parent / "shared" / "PAPER.md"
REFERENCE = re.compile(r"`([A-Za-z_]\w*)\.py:([A-Za-z_][\w.]*)`")
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
    obj = importlib.import_module(module_name)
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
        pytest.skip(f"{PAPER} not found (it lives next to the clone in ../shared)")
    assert sorted(set(re.findall(r"\((3\.[1-4][a-z])\)", PAPER.read_text()))) == LABELS


def test_notebooks_and_exercises_are_listed():
    text = section("## Notebooks and exercises")
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert f"`{path.name}`" in text, f"README's notebook table does not list {path.name}"
    for path in sorted((REPO / "exercises").glob("*.ipynb")):
        assert f"`{path.stem}`" in text, f"README's exercise table does not list {path.stem}"
