"""Tests for the repository's self-containment and its paper notes (docs/paper.md).

A fresh clone must stand on its own: no tracked file outside tests/ may point at material a user does
not have (a sibling `../shared` folder, the maintainers' PAPER.md / REFERENCE.md). Every equation label
`(3.xy)` cited in code, README, docs or notebooks must have its entry in docs/paper.md, written in the
anchor convention `<a id="eq-3.2d"></a>` + `### (3.2d) title`, and every relative link of the README and
of docs/*.md must reach an existing file (and anchor).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "docs" / "paper.md"
FORBIDDEN = re.compile(r"\.\./shared|shared/|PAPER\.md|REFERENCE\.md")
LABEL = re.compile(r"\((3\.[1-4][a-z])\)")
ANCHOR = re.compile(r'^<a id="([\w.-]+)"></a>$', re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
ALL_LABELS = ["3.1a", "3.1b", "3.2a", "3.2b", "3.2c", "3.2d", "3.2e", "3.2f", "3.2g", "3.3a", "3.3b", "3.4a", "3.4b"]
FIGURE_2 = ["backbone", "pixel-decoder", "transformer-decoder", "queries", "class-head", "mask-embedding-mlp",
            "mask-dot-product"]


def tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (git ls-files failed): cannot tell the tracked files")
    return [REPO / name for name in listing.splitlines()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary files (images, checkpoints) and files deleted in the work tree."""
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None


def forbidden_mentions(files: list[Path], root: Path = REPO) -> list[str]:
    """'path:line: text' (path relative to root) for every line that mentions material outside the repository."""
    found = []
    for path in files:
        text = text_of(path)
        for number, line in enumerate((text or "").splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()[:120]}")
    return found


def paper_entries() -> dict[str, str]:
    """anchor id -> the heading line right after it, from docs/paper.md."""
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    return {match.group(1): (lines[i + 1] if i + 1 < len(lines) else "")
            for i, line in enumerate(lines) if (match := ANCHOR.match(line))}


def cited_labels() -> dict[str, list[str]]:
    """label -> files citing it, over the tracked .py, .md and .ipynb files outside tests/."""
    cited: dict[str, list[str]] = {}
    for path in tracked_files():
        relative = path.relative_to(REPO)
        if relative.parts[0] == "tests" or path.suffix not in {".py", ".md", ".ipynb"}:
            continue
        for label in set(LABEL.findall(text_of(path) or "")):
            cited.setdefault(label, []).append(str(relative))
    return cited


def test_no_tracked_file_outside_tests_points_outside_the_repository():
    files = [path for path in tracked_files() if path.relative_to(REPO).parts[0] != "tests"]
    found = forbidden_mentions(files)
    assert not found, "files cite material a clone does not have:\n" + "\n".join(found)


def test_the_scan_finds_a_planted_mention(tmp_path):
    planted = tmp_path / "notes.md"
    planted.write_text("fine\nsee ../shared/data for the photo\nREFERENCE.md says so\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")  # binary: skipped, not an error
    found = forbidden_mentions([planted, tmp_path / "image.png"], root=tmp_path)
    assert found == ["notes.md:2: see ../shared/data for the photo", "notes.md:3: REFERENCE.md says so"]


@pytest.mark.parametrize("label", ALL_LABELS)
def test_every_label_has_its_entry_in_paper_md(label):
    heading = paper_entries().get(f"eq-{label}")
    assert heading is not None, f'docs/paper.md has no <a id="eq-{label}"></a>'
    assert heading.startswith(f"### ({label}) ") and len(heading) > len(f"### ({label}) "), \
        f"docs/paper.md: the anchor eq-{label} must be followed by '### ({label}) <title>', found {heading!r}"


@pytest.mark.parametrize("box", FIGURE_2)
def test_every_figure_2_box_has_its_entry(box):
    heading = paper_entries().get(f"fig2-{box}")
    assert heading is not None and heading.lower() == f"### figure 2: {box.replace('-', ' ')}", \
        f"docs/paper.md: fig2-{box} must be followed by '### Figure 2: {box.replace('-', ' ')}'"


def test_every_cited_label_resolves_to_paper_md():
    entries = paper_entries()
    cited = cited_labels()
    assert {"3.2d", "3.3b", "3.4b"} <= set(cited), "the scan found none of the labels the code certainly cites"
    missing = {label: files for label, files in cited.items() if f"eq-{label}" not in entries}
    assert not missing, f"labels cited but not defined in docs/paper.md: {missing}"


def test_every_relative_link_of_readme_and_docs_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            destination = (page.parent / file_part).resolve() if file_part else page
            if not destination.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and destination.suffix == ".md":
                text = destination.read_text(encoding="utf-8")
                headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                            for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}
                if anchor not in set(ANCHOR.findall(text)) | headings:
                    broken.append(f"{page.relative_to(REPO)}: {target} (no such anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# ----- The README's findings table is the results files' numbers, and its directions hold in them -----

RESULTS = REPO / "results"


def findings_rows() -> dict[str, str]:
    """study name (from `python -m tooling.experiments STUDY`) -> the README row that reports it."""
    text = (REPO / "README.md").read_text()
    start = text.index("**The paper's findings at classroom scale**")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("**"):
            break
        match = re.search(r"`python -m tooling\.experiments (\w+)`", line)
        if line.startswith("|") and match:
            rows[match.group(1)] = line
    return rows


def study(name: str) -> dict[str, dict[str, tuple[float, float]]]:
    """arm -> metric -> (mean, std) in %, as the README rounds them."""
    arms = json.loads((RESULTS / f"{name}.json").read_text())["arms"]
    return {arm: {metric: (100 * value["mean"][metric], 100 * value["std"][metric]) for metric in value["mean"]}
            for arm, value in arms.items()}


def test_every_number_of_the_findings_table_is_in_its_results_file():
    rows = findings_rows()
    assert set(rows) == {"table4", "table5", "classes", "table6_k7", "inference"}
    for name, row in rows.items():
        reported = re.findall(r"(\d+\.\d) ± (\d+\.\d)", row)
        assert reported, f"README's {name} row has no mean ± std"
        available = {f"{mean:.1f} ± {std:.1f}" for metrics in study(name).values() for mean, std in metrics.values()}
        for pair in reported:
            said = " ± ".join(pair)
            assert said in available, f"README's {name} row says {said}; results/{name}.json has {sorted(available)}"


def clearly_above(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a's mean exceeds b's by more than the two standard deviations together."""
    return a[0] - b[0] > a[1] + b[1]


def test_the_findings_table_directions_hold_in_the_results():
    table4 = {arm: metrics["mIoU"] for arm, metrics in study("table4").items()}
    for mask_arm in ("MaskFormer, fixed matching", "MaskFormer, bipartite matching"):
        for pixel_arm in ("PerPixelBaseline", "PerPixelBaseline+"):
            assert clearly_above(table4[mask_arm], table4[pixel_arm]), (mask_arm, pixel_arm)
    assert not clearly_above(table4["MaskFormer, bipartite matching"], table4["MaskFormer, fixed matching"])
    table5 = study("table5")
    assert table5["mask matching"]["PQ"][0] > table5["box matching"]["PQ"][0]
    assert table5["mask matching"]["PQ_st"][0] > table5["box matching"]["PQ_st"][0]
    classes = {arm: metrics["mIoU"] for arm, metrics in study("classes").items()}
    assert clearly_above(classes["mask classification, K = 7"], classes["per-pixel, K = 7"])
    assert max(classes["mask classification, K = 97"][0], classes["per-pixel, K = 97"][0]) < 5  # not learned
    queries = sorted(metrics["mIoU"] for metrics in study("table6_k7").values())
    assert not clearly_above(queries[-1], queries[0])
    inference = {arm: metrics["mIoU"] for arm, metrics in study("inference").items()}
    semantic, general = inference["semantic inference (3.4b)"], inference["general inference (3.4a)"]
    assert not clearly_above(semantic, general) and not clearly_above(general, semantic)


def classroom_runs() -> list[dict]:
    """Every run of the classroom record: results/classroom/torch-*.json, written by
    `python -m tooling.benchmark --time-to-accuracy --runs 1 --seeds 0 1 2 --json ...` under each torch."""
    runs = []
    for path in sorted((REPO / "results" / "classroom").glob("torch-*.json")):
        runs += json.loads(path.read_text())["time_to_accuracy"]["runs"]
    return runs


def test_the_readme_classroom_row_reads_the_classroom_record():
    """README's `python train.py` row: the mean, range, seeds, torch versions and wall times of the record,
    which holds three seeds under each of two torch versions of the current recipe, every run >= 0.81."""
    runs = classroom_runs()
    versions = sorted({run["torch"].split("+")[0] for run in runs})
    assert len(versions) == 2 and sorted((run["seed"], run["torch"].split("+")[0]) for run in runs) == \
        sorted((seed, version) for seed in (0, 1, 2) for version in versions)
    shapes = train.DATA_RECIPES["shapes"]
    assert all(run["validations"][-1]["step"] == shapes["max_iter"] for run in runs)  # the recipe of today
    finals = [run["final"] for run in runs]
    assert min(finals) >= 0.81
    lines = (REPO / "README.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith("| `python train.py` |"))
    assert f"**{sum(finals) / len(finals):.3f}**" in row and f"{min(finals):.3f}–{max(finals):.3f}" in row
    assert all(version in row for version in versions) and "seeds 0, 1, 2" in row
    walls = [run["wall_s"] / 60 for run in runs]
    assert f"{math.floor(min(walls))}–{math.ceil(max(walls))} min" in row
