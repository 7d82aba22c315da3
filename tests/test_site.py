"""Tests for the reading edition (docs/build.py).

Without a browser: every equation label cited in the code and the README is a link to its entry
in docs/paper.md, and every entry links back to exactly the code lines that cite it (both counted
here straight from the sources); every code row shows its source line; no page loads anything
from the network; the reading order, the notes/code split, LaTeX as Unicode, notebooks with their
stored outputs and the results page on small hand-made inputs.

In a real browser: headless Chromium (the Debian package `chromium`; the test skips when it is not
installed) opens every page; the test fails on a console error, a failed or external request, an
empty page, an image not shown, a broken internal link or anchor, or a one-click round trip
code → paper entry → citing code line that does not land in view; it saves screenshots of the
maskformer.py page and of the paper notes into $ARTIFACTS_DIR (default artifacts/).
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "docs" / "paper.md"
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", REPO / "artifacts"))
CITED = re.compile(r"\((\d\.\d[a-z])\)|Eq\. (\d\.\d[a-z])\b")  # as the sources write it: "(3.2d)", "Eq. 3.2d"
PAPER_LINK = re.compile(r'<a [^>]*href="paper\.html#eq-(\d\.\d[a-z])"')


def load_builder():
    spec = importlib.util.spec_from_file_location("docs_build", REPO / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


builder = load_builder()


SOURCES: dict[str, str] = {}  # what the site was built from: stem (or "README") → text


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    assert PAPER.is_file(), "docs/paper.md is missing: the site links every equation label to it"
    out = tmp_path_factory.mktemp("site") / "site"
    SOURCES.update({p.stem: p.read_text(encoding="utf-8") for p in REPO.glob("*.py")})
    SOURCES["README"] = (REPO / "README.md").read_text(encoding="utf-8")
    builder.build(out, PAPER)
    return out


def modules() -> list[str]:
    """The modules the site was built from (tests that call this take the `site` fixture)."""
    return sorted(stem for stem in SOURCES if stem != "README")


def source_lines(stem: str) -> list[str]:
    return SOURCES[stem].splitlines()


def paper_entries() -> list[str]:
    return re.findall(r'^<a id="((?:eq|fig2)-[^"]+)"></a>$', PAPER.read_text(encoding="utf-8"), flags=re.M)


def back_links(paper_html: str) -> dict[str, list[tuple[str, str]]]:
    """Entry id → the (page, fragment) of every link in the "Cited in" line under its heading."""
    found = {}
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<a id="((?:eq|fig2)-[^"]+)"></a>', paper_html)]
    for (start, entry), (end, _) in zip(starts, starts[1:] + [(len(paper_html), "")]):
        cited = re.search(r'<p class="cited-by">(.*?)</p>', paper_html[start:end], flags=re.S)
        links = re.findall(r'href="([^"#]+)#([^"]+)"', cited.group(1)) if cited else []
        found[entry] = links
    return found


# --- without a browser ------------------------------------------------------------------------------


def test_every_label_in_the_code_and_readme_links_to_its_paper_entry(site):
    entries = set(paper_entries())
    sources = {f"{stem}.py.html": f"{stem}.py" for stem in modules()} | {"index.html": "README"}
    total = 0
    for page, source in sources.items():
        cited = Counter(a or b for a, b in CITED.findall(SOURCES[source.removesuffix(".py")]))
        missing = sorted(label for label in cited if f"eq-{label}" not in entries)
        assert not missing, f"{source} cites {missing}, which docs/paper.md has no entry for"
        linked = Counter(PAPER_LINK.findall((site / page).read_text(encoding="utf-8")))
        assert linked == cited, f"{page}: labels linked {dict(linked)} != labels cited in {source} {dict(cited)}"
        total += sum(cited.values())
    assert total >= 50  # the code cites the paper throughout; a scan that finds nothing is broken


def test_every_paper_entry_links_back_to_each_line_that_cites_it(site):
    links = back_links((site / "paper.html").read_text(encoding="utf-8"))
    code_lines = {stem: source_lines(stem) for stem in modules()}
    for entry in paper_entries():
        assert links.get(entry), (f"docs/paper.md entry {entry} has no back-link (labels: cited in code or docs; "
                                  "Figure 2 boxes: a resolvable `file.py:name` in the README's paper-to-code map row)")
        if not entry.startswith("eq-"):
            continue
        label = entry[len("eq-"):]
        expected = {(f"{stem}.py.html", f"L{n}") for stem, lines in code_lines.items()
                    for n, line in enumerate(lines, start=1) if f"({label})" in line or f"Eq. {label}" in line}
        got = {(page, fragment) for page, fragment in links[entry] if page.endswith(".py.html")}
        assert got == expected, f"{entry}: back-links {sorted(got - expected)} extra, {sorted(expected - got)} missing"
    for entry in (e for e in paper_entries() if e.startswith("fig2-")):  # Figure 2 boxes: to a class or def
        for page, fragment in links[entry]:
            if page.endswith(".py.html"):
                line = code_lines[page[: -len(".py.html")]][int(fragment[1:]) - 1]
                assert re.match(r"\s*(class|def) ", line), f"{entry} links to {page}#{fragment}: {line!r}"


def test_every_line_anchor_that_a_back_link_names_exists(site):
    for entry, links in back_links((site / "paper.html").read_text(encoding="utf-8")).items():
        for page, fragment in links:
            assert f'id="{fragment}"' in (site / page).read_text(encoding="utf-8"), f"{entry}: {page}#{fragment}"


def test_no_page_loads_anything_from_the_network(site):
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        external = re.findall(r'<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]*)"', text)
        assert not external, f"{page.name} loads {external[:3]}"
        assert "@import" not in text and "cdn" not in text.lower().split("</head>")[0], page.name


def test_every_code_row_shows_its_source_line_and_every_line_is_on_the_page(site):
    for stem in modules():
        source = source_lines(stem)
        page = (site / f"{stem}.py.html").read_text(encoding="utf-8")
        rows = re.findall(r'<span class="line" id="L(\d+)">(.*?)</span>\n?(?=<span class="line"|</pre>)', page)
        assert len(rows) > len(source) / 3, stem
        for number, row in rows:
            text = html.unescape(re.sub(r"<[^>]+>", "", row))
            assert text == number + source[int(number) - 1], f"{stem}.py line {number}: {text!r}"
        # every non-blank source line has its anchor, in the code column or beside it in the notes
        anchors = set(re.findall(r'id="L(\d+)"', page))
        missing = [n for n, line in enumerate(source, 1) if line.strip() and str(n) not in anchors
                   and not re.fullmatch(r"\s*(#\s*[-=#*~]*|[rR]?\"\"\"|\'\'\')\s*", line)]  # rules, closing quotes
        assert not missing, f"{stem}.py lines without an anchor: {missing[:10]}"


def test_reading_order_follows_the_readme_then_adds_unlisted_modules():
    readme = ("intro mentions `zzz.py`\n\n**Reading order for the code**:\n\n"
              "1. `data.py`: targets; `old.py` is gone\n2. `maskformer.py`: then\n   `backbones.py`\n"
              "3. `losses.py`\n\n## Next section mentions `train.py`\n")
    available = ["backbones", "data", "extra", "losses", "maskformer", "train"]
    assert builder.reading_order(readme, available) == ["data", "maskformer", "backbones", "losses", "extra", "train"]
    fallback = [s for s in builder.FALLBACK_ORDER if s in available]
    assert builder.reading_order("no list here", available) == fallback + sorted(set(available) - set(fallback))


def test_docstrings_and_comments_sit_beside_their_code_shapes_stay_in_the_code():
    source = ('"""Module notes."""\n\nimport torch\n\n\n# Eq. (3.2d): the loss\n@decorator\n'
              'def loss(x):\n    """Docstring of loss."""\n    # (B, Q, H, W)\n    y = x  # (B, Q)\n'
              '    return y\n')
    sections = builder.split_sections(source)
    # hand-worked: lines 1 | 3 ; 6, 9 | 7, 8, 10, 11, 12
    assert [([n for block in s.doc for n, _ in block], s.code) for s in sections] == [
        ([1], [3]), ([6, 9], [7, 8, 10, 11, 12])]
    assert sections[1].doc[1] == [(9, "Docstring of loss.")]


def test_labels_in_notes_become_links_with_line_anchors():
    site = builder.Site(Path("/nonexistent"), anchors={"eq-3.2d"})
    html = builder.prose_html([(7, "Eq. (3.2d), not (3.9z)."), (8, ""), (9, "    L = Σ_j x_j")], site, "a.py.html")
    assert html.count('href="paper.html#eq-3.2d"') == 1 and "(3.9z)" in html
    assert 'id="L7"' in html and '<pre class="formula"><span class="anchor" id="L9"></span>L = Σ_j x_j</pre>' in html
    assert [(c.page, c.anchor) for c in site.citations["eq-3.2d"]] == [("a.py.html", "L7")]
    assert site.unresolved == ["a.py.html: (3.9z)"]


def test_notebooks_keep_their_stored_outputs_and_their_maths_is_unicode(tmp_path):
    import base64
    import io

    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (4, 3), "blue").save(png, "PNG")
    png = base64.b64encode(png.getvalue()).decode()
    cells = [new_markdown_cell("See Eq. (3.2d): $m_i \\in \\{0, 1\\}^{H \\times W}$."),
             new_code_cell("print(1)", outputs=[new_output("stream", name="stdout", text="loss 0.25\n"),
                                                new_output("display_data", data={"image/png": png})])]
    nbformat.write(new_notebook(cells=cells), tmp_path / "n.ipynb")
    site = builder.Site(tmp_path / "site", anchors={"eq-3.2d"})
    page = site.link_html(builder.notebook_html(tmp_path / "n.ipynb"), "notebook-n.html", "notebooks", math=True)
    assert "loss 0.25" in page and f'src="data:image/png;base64,{png}' in page.replace("\n", "")
    assert 'href="paper.html#eq-3.2d">Eq. (3.2d)</a>' in page
    assert ">m_i ∈ {0, 1}^{H × W}</span>" in page and "<script" not in page


@pytest.mark.parametrize("tex, text", [
    (r"\mathcal{E}_\text{pixel} \in \mathbb{R}^{C_\mathcal{E} \times H/4}", "E_pixel ∈ ℝ^{C_E × H/4}"),
    (r"\frac{1}{HW} \sum_{h,w} -\alpha_t", "1 / (HW) Σ_{h,w} -α_t"),
    (r"p_t = \begin{cases} m & m^\text{gt} = 1 \\ 1 - m & \text{otherwise} \end{cases}",
     "p_t = { m if m^gt = 1; 1 - m otherwise }"),
    (r"\operatorname*{arg\,max}_{c} \big(E[:, i]^\top \cdot x\big)", "arg max_c (E[:, i]ᵀ · x)"),
])
def test_latex_becomes_the_plain_unicode_of_the_docstrings(tex, text):
    assert builder.latex_to_unicode(tex) == text


def test_results_folder_tables_plots_and_json_are_shown(tmp_path):
    from PIL import Image

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "table4.md").write_text("| arm | mIoU |\n|---|---|\n| bipartite, Eq. (3.2d) | 0.81 ± 0.01 |\n")
    Image.new("RGB", (4, 3), "red").save(folder / "table4.png")
    (folder / "runs.csv").write_text("seed,miou\n0,0.8\n")
    (folder / "table4.json").write_text('{"seeds": [0, 1, 2]}')
    site = builder.Site(tmp_path / "site", anchors={"eq-3.2d"})
    page = builder.results_html(folder, site)
    assert "<td>bipartite, " in page and '<a id="cite-1" class="eq" href="paper.html#eq-3.2d">Eq. (3.2d)</a>' in page
    assert "<td>0.81 ± 0.01</td>" in page and "<td>seed</td><td>miou</td>" in page and "<td>0.8</td>" in page
    assert '<img src="assets/results/table4.png"' in page
    assert Image.open(tmp_path / "site" / "assets" / "results" / "table4.png").size == (4, 3)
    assert '"seeds": [\n  0,' in page.replace("&quot;", '"')
    assert builder.results_html(tmp_path / "empty", site) == "<p>No result files yet.</p>"


# --- in a real browser ------------------------------------------------------------------------------


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(chromium() is None, reason="no chromium binary (apt-get install chromium; "
                                    ".ci/run installs it)")
PAGE_FACTS = """() => ({
    text: (document.querySelector('main') || document.body).innerText.trim().length,
    ids: Array.from(document.querySelectorAll('[id], a[name]'), e => e.id || e.name),
    links: Array.from(document.querySelectorAll('a[href]'), a => a.href),
    broken_images: Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)})"""


def open_browser(playwright):
    """Headless Chromium that may only load local files: any other request is recorded and refused."""
    # --disable-dev-shm-usage: CI containers often have a small /dev/shm
    browser = playwright.chromium.launch(executable_path=chromium(), args=["--disable-dev-shm-usage"])
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []

    def only_local(route):
        if route.request.url.startswith(("file://", "data:")):
            route.continue_()
        else:
            problems.append(f"external request {route.request.url}")
            route.abort()

    context.route("**/*", only_local)
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    return browser, tab, problems


def visit_all(tab, pages: list[Path], problems: list[str], screenshots: dict[str, Path]) -> list[str]:
    """Opens every page; returns the problems: console errors, failed requests, empty pages, images
    not shown, links to missing files, fragments no element on the target page has."""
    current = {"page": ""}
    tab.on("console", lambda m: m.type == "error" and problems.append(f"{current['page']}: console: {m.text}"))
    tab.on("pageerror", lambda e: problems.append(f"{current['page']}: {e}"))
    tab.on("requestfailed", lambda r: problems.append(f"{current['page']}: failed {r.url}"))
    ids, links = {}, []
    for page in pages:
        current["page"] = page.name
        tab.goto(page.as_uri())
        facts = tab.evaluate(PAGE_FACTS)
        if facts["text"] < 200:
            problems.append(f"{page.name}: nearly empty ({facts['text']} characters)")
        problems += [f"{page.name}: image not shown {src[:80]}" for src in facts["broken_images"]]
        ids[page.resolve()] = set(facts["ids"])
        links += [(page.name, href) for href in facts["links"]]
        if page.name in screenshots:
            screenshots[page.name].parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(screenshots[page.name]))
    for source, href in links:
        url = urlparse(href)
        if url.scheme != "file":
            continue  # external links are navigations a reader may follow, not loads
        target = Path(unquote(url.path))
        if not target.exists():
            problems.append(f"{source}: broken link {href}")
        elif url.fragment and target.suffix == ".html":
            # as a browser does (HTML's "indicated part"): the fragment as written, then decoded
            if not {url.fragment, unquote(url.fragment)} & ids.get(target.resolve(), set()):
                problems.append(f"{source}: broken anchor {href}")
    return problems


@needs_chromium
def test_the_browser_check_reports_each_kind_of_broken_page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
    text = "<main>" + "words " * 50 + "</main>"
    (tmp_path / "a.html").write_text(
        f'<html><body id="top">{text}<a href="b.html#top">ok</a><a href="b.html#nowhere">anchor</a>'
        '<a href="missing.html">link</a><img src="https://example.com/x.png">'
        '<script>console.error("boom")</script></body></html>')
    (tmp_path / "b.html").write_text('<html><body id="top"><main>tiny</main><a href="a.html#top">ok</a></body></html>')
    with sync_api.sync_playwright() as playwright:
        browser, tab, problems = open_browser(playwright)
        problems = visit_all(tab, [tmp_path / "a.html", tmp_path / "b.html"], problems, {})
        browser.close()
    expected = ["a.html: console: boom", "b.html: nearly empty", "a.html: broken anchor", "a.html: broken link",
                "external request https://example.com/x.png"]
    for kind in expected:
        assert any(kind in problem for problem in problems), f"not reported: {kind} (got {problems})"
    assert not any("#top" in problem for problem in problems), problems


@needs_chromium
def test_every_page_opens_cleanly_in_headless_chromium(site):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
    pages = sorted(site.glob("*.html"))
    assert len(pages) >= len(modules()) + 2
    shots = {"maskformer.py.html": ARTIFACTS / "site-maskformer.py.png", "paper.html": ARTIFACTS / "site-paper.png"}
    with sync_api.sync_playwright() as playwright:
        browser, tab, problems = open_browser(playwright)
        problems = visit_all(tab, pages, problems, shots)

        # one click from an equation in the notes of maskformer.py to its paper entry, one back
        tab.goto((site / "maskformer.py.html").as_uri())
        tab.click("section.pair a.eq >> nth=0")
        entry = urlparse(tab.url).fragment
        assert tab.url.split("#")[0].endswith("/paper.html") and entry.startswith("eq-"), tab.url
        top = tab.evaluate(f"() => document.getElementById('{entry}').getBoundingClientRect().top")
        assert 0 <= top < 1000, f"paper.html#{entry} is not scrolled into view ({top})"
        tab.screenshot(path=str(ARTIFACTS / "site-paper-entry.png"))
        cited_by = f'//a[@id="{entry}"]/following::p[@class="cited-by"][1]//a[contains(@href, "maskformer.py.html")]'
        tab.locator(f"xpath={cited_by}").first.click()
        line = urlparse(tab.url).fragment
        assert tab.url.split("#")[0].endswith("/maskformer.py.html") and line.startswith("L"), tab.url
        top = tab.evaluate(f"() => document.getElementById('{line}').getBoundingClientRect().top")
        assert 0 < top < 1000, f"maskformer.py.html#{line} is not scrolled into view ({top})"
        browser.close()
    assert all(path.is_file() for path in shots.values())
    assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:25])
