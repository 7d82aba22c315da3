"""Build the reading edition: every module with its notes beside the code, the paper notes, the
notebooks, in one static site that needs no network to build or to read.

    python docs/build.py                 # writes docs/site/; open docs/site/index.html
    python docs/build.py --out DIR       # somewhere else

Pages (all in one folder, so that every link is a plain relative file name):
- index.html: README.md, with a table of contents of the whole site;
- <module>.py.html: one per top-level module, in the README's reading order, then any module the
  README does not list. Docstrings and full-line comments sit in the left column beside the code
  they describe (docco style); trailing comments such as the tensor shapes `# (B, Q, H, W)` stay
  in the code. Every source line has the anchor `#L<n>`, every class and function `#<qualname>`;
- paper.html: docs/paper.md. Each entry (`<a id="eq-3.2d"></a>` then `### (3.2d) title`) is
  followed by links back to every code line that cites it, and to the other pages that do;
- the other docs/*.md, the notebooks and exercises (with their stored outputs, nbconvert), and
  results.html when a results/ folder exists;
- everywhere, an equation label such as "(3.2d)" or "Eq. (3.2d)" links to its entry in the paper
  notes, and `file.py` or `file.py:Name.method` links to that module's page and line.

No page loads a script, a font or a stylesheet from elsewhere. Formulas are plain Unicode text:
as written in the docstrings, and $…$ / $$…$$ LaTeX (paper notes, notebooks) turned into the same
kind of text, its source in a tooltip; ```latex fences are shown as their source.
"""

from __future__ import annotations

import argparse
import ast
import csv
import html
import io
import json
import re
import shutil
import sys
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import markdown
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES, Comment, String

REPO = Path(__file__).resolve().parents[1]
# Used when the README has no machine-readable reading order (a numbered list after a line that
# says "Reading order"); modules missing from the repository are skipped, new ones appended.
FALLBACK_ORDER = ["data", "maskformer", "backbones", "matcher", "losses", "train", "inference", "evaluation",
                  "metrics", "infer"]
# "(3.2d)", "Eq. (3.2d)", "Eq. 3.2d": the labels docs/paper.md defines as anchors "eq-3.2d".
LABEL = re.compile(r"(?:\bEqs?\.\s*)?\((\d\.\d[a-z])\)|\bEqs?\.\s*(\d\.\d[a-z])\b")
# `losses.py`, `losses.py:dice_loss`, `losses.py:MaskFormerLoss.forward`
MODULE_REF = re.compile(r"(?<![\w/.])([A-Za-z_]\w*)\.py(?::([A-Za-z_][\w.]*[A-Za-z_0-9]))?\b")
# docs/paper.md, notebooks/01_data.ipynb, README.md: the other files the site has a page for
FILE_REF = re.compile(r"(?<![\w/.])(?:README\.md|(?:docs|notebooks|exercises)/[\w.-]+\.(?:md|ipynb))\b")
# A full-line comment that is only a shape, e.g. "# (B, Q, H, W)", stays in the code column.
SHAPE_ONLY = re.compile(r"^\(\s*[\w'*/+\- ]*(,\s*[\w'*/+\- ]*)+\)[\s.;:,]*$")
BANNER = re.compile(r"^[-=#*~]{3,}|[-=#*~]{3,}$")  # a comment rule: "# --- Pixel decoder ---"
# $…$ maths: no space inside the dollars, no blank line, no digit or word right after ("$5")
INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?=\S)((?:[^$\n]|\n(?!\s*\n))+?)(?<=\S)\$(?![\w$])")
LIST_ITEM = re.compile(r"^([-*•]|\d+[.)])\s+")
FIGURE_2_ROW = re.compile(r"Figure 2\b.*?:\s*([A-Za-z][\w -]*?)\s*$")


def paper_anchors(paper_md: str) -> list[str]:
    """The anchor ids of docs/paper.md's entries, in order ("eq-3.2d", "fig2-backbone", ...)."""
    return re.findall(r'^<a id="((?:eq|fig2)-[^"]+)"></a>\s*$', paper_md, flags=re.M)


def github_slug(text: str) -> str:
    """A heading's anchor as GitHub makes it, so that README links like (#datasets) keep working."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def page_name(rel: str) -> str:
    """Site file name of a repository file: maskformer.py → maskformer.py.html, docs/recipe.md →
    recipe.html, notebooks/01_data.ipynb → notebook-01_data.html."""
    path = Path(rel)
    if rel == "README.md":
        return "index.html"
    if rel == "docs/paper.md":
        return "paper.html"
    if path.suffix == ".py":
        return f"{path.name}.html"
    if path.suffix == ".ipynb":
        return f"{path.parent.name.rstrip('s')}-{path.stem}.html"
    return f"{path.stem}.html"


# --- the site: which pages exist, and the links between them ----------------------------------


@dataclass
class Citation:
    page: str  # file name of the citing page
    anchor: str  # id of the citing place on that page ("L205", "cite-3")
    where: str  # what a back-link shows ("L205")


@dataclass
class Site:
    out: Path
    pages: dict[str, str] = field(default_factory=dict)  # repository path → site file name
    titles: dict[str, str] = field(default_factory=dict)  # site file name → title
    modules: list[str] = field(default_factory=list)  # module stems, reading order
    definitions: dict[str, dict[str, int]] = field(default_factory=dict)  # stem → qualname → line
    spans: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)  # stem → (first, last, qualname)
    anchors: set[str] = field(default_factory=set)  # ids defined in paper.md
    citations: dict[str, list[Citation]] = field(default_factory=dict)  # anchor id → citations
    unresolved: list[str] = field(default_factory=list)  # "file: (3.9z)" labels with no anchor

    def cite(self, anchor: str, citation: Citation) -> None:
        self.citations.setdefault(anchor, []).append(citation)

    def label_link(self, match: re.Match, page: str, anchor: str | None) -> str:
        """The link of one equation label; `anchor` is the citing place's id (None: not recorded)."""
        label, text = match.group(1) or match.group(2), match.group(0)
        target = f"eq-{label}"
        if target not in self.anchors:
            self.unresolved.append(f"{page}: ({label})")
            return text
        href = f"#{target}" if page == "paper.html" else f"paper.html#{target}"
        if anchor is not None:
            self.cite(target, Citation(page, anchor, anchor))
        return f'<a class="eq" href="{href}">{text}</a>'

    def module_link(self, match: re.Match) -> str:
        stem, name = match.group(1), match.group(2)
        if stem not in self.definitions:
            return match.group(0)
        href = f"{stem}.py.html"
        if name and name in self.definitions[stem]:
            href += f"#{name}"
        return f'<a class="mod" href="{href}">{match.group(0)}</a>'

    def link_text(self, escaped: str, page: str, anchor: str | None = None, counter: list | None = None) -> str:
        """Links labels and module references in HTML-escaped text (no tags inside).

        Each label cited on a code page is recorded under `anchor` (the line's id); elsewhere
        (`counter` given) the link gets its own id "cite-<n>" and is recorded under it."""

        def label(match: re.Match) -> str:
            if page == "paper.html":  # the entries citing each other are not back-links
                return self.label_link(match, page, None)
            if counter is None:
                return self.label_link(match, page, anchor)
            counter[0] += 1
            link = self.label_link(match, page, f"cite-{counter[0]}")
            return link.replace("<a ", f'<a id="cite-{counter[0]}" ', 1)

        def other_files(text: str) -> str:
            return FILE_REF.sub(lambda m: f'<a href="{self.pages[m.group(0)]}">{m.group(0)}</a>'
                                if m.group(0) in self.pages else m.group(0), text)

        linked = _outside_tags(escaped, lambda text: MODULE_REF.sub(self.module_link, LABEL.sub(label, text)))
        return _outside_tags(linked, other_files)

    def link_html(self, fragment: str, page: str, base: str, math: bool = False) -> str:
        """Links labels and module names in the text of an HTML fragment (never inside a tag or an
        existing link), and rewrites its relative links to repository files (`base`: the folder
        the fragment's source lives in) to their pages or copied assets. `math`: the fragment's
        text still holds $…$ and $$…$$ LaTeX (nbconvert leaves it for MathJax), shown as Unicode."""
        counter, in_code = [0], 0
        pieces = re.split(r"(<[^>]+>)", fragment)
        skip = ("a", "script", "style") + (("h1", "h2", "h3", "h4", "h5", "h6") if page == "paper.html" else ())
        depth = 0  # inside <a>, <script>, <style> (or, in the paper notes, a heading: the entry itself)
        for i, piece in enumerate(pieces):
            if piece.startswith("<"):
                tag = re.match(r"</?\s*([a-zA-Z0-9]+)", piece)
                name = tag.group(1).lower() if tag else ""
                if name in skip:
                    depth += -1 if piece.startswith("</") else 1
                if name in ("code", "pre"):
                    in_code += -1 if piece.startswith("</") else 1
                pieces[i] = self.rewrite_links(piece, base)
            elif depth == 0 and piece:
                if math and not in_code:
                    piece = escaped_math(piece)
                pieces[i] = self.link_text(piece, page, counter=counter)
        return "".join(pieces)

    def rewrite_links(self, tag: str, base: str) -> str:
        def rewrite(match: re.Match) -> str:
            attr, quote, url = match.group(1), match.group(2), match.group(3)
            new = self.local_url(url, base)
            return f"{attr}={quote}{new}{quote}" if new is not None else f"data-repo-path={quote}{url}{quote}"

        return re.sub(r'\b(href|src)=(["\'])([^"\']*)\2', rewrite, tag)

    def local_url(self, url: str, base: str) -> str | None:
        """Where a link in a repository file points on the site; None for a repository file the
        site does not contain (the link is then dropped, its text kept)."""
        if not url or re.match(r"^([a-z]+:|#|//)", url):
            return url  # external, data: or same-page link: unchanged
        path, _, fragment = url.partition("#")
        resolved = (REPO / base / path).resolve()
        if not resolved.is_relative_to(REPO):
            return None
        rel = resolved.relative_to(REPO).as_posix()
        suffix = f"#{fragment}" if fragment else ""
        if rel in self.pages:
            return self.pages[rel] + suffix
        if resolved.is_file() and resolved.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".svg"):
            return self.asset(resolved, rel)
        return None

    def asset(self, path: Path, name: str) -> str:
        """Copies an image into the site as assets/<name>; returns its site-relative URL."""
        url = f"assets/{name}"
        (self.out / url).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self.out / url)
        return url


def _outside_tags(fragment: str, function) -> str:
    """Applies `function` to the text between tags, not inside an <a> it or the caller made."""
    pieces = re.split(r"(<a\b[^>]*>.*?</a>|<[^>]+>)", fragment)
    return "".join(piece if piece.startswith("<") else function(piece) for piece in pieces)


# --- module pages: notes beside the code ---------------------------------------------------------


@dataclass
class Section:
    doc: list[list[tuple[int, str]]] = field(default_factory=list)  # blocks of (line number, text)
    code: list[int] = field(default_factory=list)  # line numbers


def docstring_lines(tree: ast.Module, lines: list[str]) -> dict[int, int]:
    """Docstring line → the first line of its class/def (decorators included; 0 for the module),
    for docstrings that stand on lines of their own."""
    found = {}
    for node in [tree, *ast.walk(tree)]:
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            continue
        doc = body[0]
        if lines[doc.lineno - 1][: doc.col_offset].strip() or lines[doc.end_lineno - 1][doc.end_col_offset:].strip():
            continue
        start = 0 if isinstance(node, ast.Module) else min([node.lineno] + [d.lineno for d in node.decorator_list])
        for number in range(doc.lineno, doc.end_lineno + 1):
            found[number] = start
    return found


def comment_lines(source: str) -> dict[int, str]:
    """Full-line comments between statements (bracket depth 0): line number → text after '#'."""
    found, depth = {}, 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
        elif token.type == tokenize.COMMENT and depth == 0 and not token.line[: token.start[1]].strip():
            text = token.string[1:]
            text = text[1:] if text.startswith(" ") else text
            if not SHAPE_ONLY.match(text.strip()) and not token.string.startswith("#!"):
                found[token.start[0]] = text
    return found


def docstring_text(numbers: list[int], lines: list[str]) -> list[tuple[int, str]]:
    """The docstring's text, quotes removed, indentation as inspect.cleandoc leaves it."""
    text = [lines[n - 1] for n in numbers]
    text[0] = re.sub(r'^\s*[rRuU]?("""|\'\'\'|"|\')', "", text[0])
    text[-1] = re.sub(r'("""|\'\'\'|"|\')\s*$', "", text[-1])
    indents = [len(t) - len(t.lstrip()) for t in text[1:] if t.strip()]
    cut = min(indents, default=0)
    return [(numbers[0], text[0].strip())] + [(n, t[cut:].rstrip()) for n, t in zip(numbers[1:], text[1:])]


def split_sections(source: str) -> list[Section]:
    """Cuts a module into (notes, code) sections: a new section starts where notes follow code,
    and a class or def with a docstring opens its own section so that the docstring sits beside
    its signature."""
    lines = source.splitlines()
    tree = ast.parse(source)
    docs, comments = docstring_lines(tree, lines), comment_lines(source)
    headers = {start for start in docs.values() if start}
    sections, current = [], Section()
    pending_doc: list[tuple[int, str]] = []  # docstring lines being collected
    block: list[tuple[int, str]] = []  # comment lines being collected

    def flush(collected: list[tuple[int, str]]) -> None:
        if collected:
            current.doc.append(list(collected))
            collected.clear()

    for number, line in enumerate(lines, start=1):
        if number in docs:
            flush(block)
            pending_doc.append((number, lines[number - 1]))
            if number + 1 not in docs or docs[number + 1] != docs[number]:  # docstring ends here
                current.doc.append(docstring_text([n for n, _ in pending_doc], lines))
                pending_doc.clear()
            continue
        if number in comments:
            if current.code and any(lines[n - 1].strip() for n in current.code):
                sections.append(current)
                current = Section()
            block.append((number, comments[number]))
            continue
        flush(block)
        if number in headers and any(lines[n - 1].strip() for n in current.code):
            sections.append(current)
            current = Section()
        if line.strip() or current.code:
            current.code.append(number)
    flush(block)
    sections.append(current)
    for section in sections:
        while section.code and not lines[section.code[-1] - 1].strip():
            section.code.pop()
    return [s for s in sections if s.doc or s.code]


def prose_html(block: list[tuple[int, str]], site: Site, page: str) -> str:
    """Plain-text notes as HTML: paragraphs reflowed, list items kept, lines indented by 4 or more
    (formulas, argument lists) preformatted; every source line keeps its anchor "L<n>"."""
    out, paragraph, pre = [], [], []
    kind = "p"

    def inline(number: int, text: str) -> str:
        parts = re.split(r"(`[^`]+`)", text)
        rendered = []
        for part in parts:
            if part.startswith("`") and part.endswith("`") and len(part) > 1:
                code = html.escape(part[1:-1], quote=False)
                rendered.append(f"<code>{site.link_text(code, page, f'L{number}')}</code>")
            else:
                rendered.append(site.link_text(html.escape(part, quote=False), page, f"L{number}"))
        return f'<span class="anchor" id="L{number}"></span>' + "".join(rendered)

    def end_paragraph() -> None:
        nonlocal kind
        if paragraph:
            css = ' class="item"' if kind == "li" else ""
            out.append(f"<p{css}>" + " ".join(paragraph) + "</p>")
            paragraph.clear()
        if pre:
            out.append('<pre class="formula">' + "\n".join(pre) + "</pre>")
            pre.clear()
        kind = "p"

    item_indent, in_banner = 0, False
    for number, text in block:
        stripped = text.strip()
        indent = len(text) - len(text.lstrip())
        title = stripped.strip("-=#*~ ")
        if BANNER.search(stripped) or (in_banner and title):  # "# --- Pixel decoder ---" is a heading
            end_paragraph()
            if title:
                out.append(f'<p class="banner">{inline(number, title)}</p>')
            else:  # a rule alone: opens or closes a heading written between two rules
                in_banner = not in_banner
            continue
        if not stripped:
            end_paragraph()
            continue
        marker = LIST_ITEM.match(stripped)
        if marker and indent < 4:
            end_paragraph()
            kind, item_indent = "li", indent + marker.end()
            paragraph.append(inline(number, stripped))
        elif indent >= 4 and not (kind == "li" and indent <= item_indent):
            if paragraph:
                end_paragraph()
            pre.append(inline(number, text[4:]))
        else:
            if pre:
                end_paragraph()
            paragraph.append(inline(number, stripped))
    end_paragraph()
    return "\n".join(out)


def highlighted_lines(source: str, site: Site, page: str) -> list[str]:
    """Pygments tokens, split at newlines, as one HTML string per source line; labels and module
    names in comments and strings become links."""
    lines, current = [], []
    for token_type, value in PythonLexer(stripnl=False).get_tokens(source):
        css = STANDARD_TYPES.get(token_type) or STANDARD_TYPES.get(token_type.parent, "")
        linkable = token_type in Comment or token_type in String
        for i, piece in enumerate(value.split("\n")):
            if i:
                lines.append("".join(current))
                current = []
            if piece:
                number = len(lines) + 1
                text = html.escape(piece, quote=False)
                if linkable:
                    text = site.link_text(text, page, f"L{number}")
                current.append(f'<span class="{css}">{text}</span>' if css else text)
    lines.append("".join(current))
    return lines


def definition_nodes(tree: ast.Module) -> list[tuple[str, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every class and function, outer before inner."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child))
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return found


def module_page(stem: str, site: Site) -> str:
    source = (REPO / f"{stem}.py").read_text(encoding="utf-8")
    page = f"{stem}.py.html"
    code = highlighted_lines(source, site, page)
    def_at = {line: name for name, line in site.definitions[stem].items()}
    top_level = [name for line, name in sorted(def_at.items()) if "." not in name]
    contents = '<p class="toc">' + " · ".join(f'<a href="#{name}">{name}</a>' for name in top_level) + "</p>"
    parts = []
    for i, section in enumerate(split_sections(source)):
        doc = "\n".join(prose_html(block, site, page) for block in section.doc)
        doc = f'<h1 class="module">{stem}.py</h1>{contents}{doc}' if i == 0 else doc
        rows = []
        for number in section.code:
            target = f'<span class="anchor" id="{def_at[number]}"></span>' if number in def_at else ""
            rows.append(f'<span class="line" id="L{number}">{target}<a class="ln" href="#L{number}">{number}</a>'
                        f"{code[number - 1]}</span>")
        code_html = f'<div class="highlight"><pre>{"".join(rows)}</pre></div>' if rows else ""
        parts.append(f'<section class="pair"><div class="doc">{doc}</div><div class="code">{code_html}</div></section>')
    return "\n".join(parts)


# --- markdown pages, notebooks, results -------------------------------------------------------------


LATEX_WORDS = {
    "in": "∈", "notin": "∉", "times": "×", "cdot": "·", "sum": "Σ", "prod": "Π", "varnothing": "∅",
    "emptyset": "∅", "neq": "≠", "ne": "≠", "leq": "≤", "le": "≤", "geq": "≥", "ge": "≥", "mid": "|",
    "to": "→", "rightarrow": "→", "leftarrow": "←", "mapsto": "↦", "infty": "∞", "approx": "≈",
    "dots": "…", "ldots": "…", "cdots": "⋯", "top": "ᵀ", "partial": "∂", "nabla": "∇", "pm": "±",
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "lambda": "λ", "mu": "μ",
    "sigma": "σ", "tau": "τ", "theta": "θ", "pi": "π", "Delta": "Δ", "Sigma": "Σ", "Omega": "Ω",
    "quad": "  ", "qquad": "    ", ",": " ", ";": " ", ":": " ", "!": "", "{": "{", "}": "}", "|": "‖",
    "\\": "\n", "%": "%", "&": "&", "_": "_", "#": "#",
}


BLACKBOARD = {"R": "ℝ", "N": "ℕ", "Z": "ℤ"}


FONT_COMMAND = r"\\(?:text|mathrm|operatorname|mathbf|boldsymbol|mathcal|mathit|textbf|mathsf)"
BRACED = r"\{((?:[^{}]|\{[^{}]*\})*)\}"  # a {group}, which may hold {groups} of its own


def latex_to_unicode(tex: str) -> str:
    """LaTeX maths as the plain Unicode the docstrings use: \\mathcal{E}_\\text{pixel} \\in
    \\mathbb{R}^{C \\times N} → E_pixel ∈ ℝ^{C × N}. Readable, not typeset; the source stays in a tooltip."""
    text = re.sub(r"\\begin\{cases\}(.*?)\\end\{cases\}", lambda m: cases(m.group(1)), tex, flags=re.S)
    text = re.sub(r"\\(?:big|Big|bigg|Bigg|left|right)\b\s*", "", text)
    text = re.sub(r"\\(?:begin|end)\{[^}]*\}", "", text)
    for _ in range(3):  # nested groups, innermost first
        text = re.sub(FONT_COMMAND + r"\*?\s*\{([^{}]*)\}", r"\1", text)
        text = re.sub(r"\\mathbb\s*\{([^{}]*)\}", lambda m: BLACKBOARD.get(m.group(1), m.group(1)), text)
        text = re.sub(r"([_^])\{([\w.]+)\}", r"\1\2", text)  # x_{gt} → x_gt
        text = re.sub(r"\\frac\s*" + BRACED + r"\s*" + BRACED,
                      lambda m: f"{group(m.group(1))} / {group(m.group(2))}", text)
    text = re.sub(r"\^\s*ᵀ|\^\\top\b", "ᵀ", text)
    text = re.sub(r"\\([A-Za-z]+|.)", lambda m: LATEX_WORDS.get(m.group(1), m.group(1)), text)
    text = re.sub(r"\^\s*ᵀ", "ᵀ", text)
    text = text.replace("&", " ")
    return re.sub(r"[ \t]+", " ", text).strip()


def group(term: str) -> str:
    """A fraction's numerator or denominator, in parentheses unless it is one symbol or number."""
    return term.strip() if re.fullmatch(r"\s*(\w|\d+(\.\d+)?)\s*", term) else f"({term.strip()})"


def cases(body: str) -> str:
    """\\begin{cases} a & c \\\\ b & \\text{otherwise} \\end{cases} → { a if c; b otherwise }"""
    rows = []
    for row in re.split(r"\\\\", body):
        value, _, condition = row.partition("&")
        condition = latex_to_unicode(condition)
        rows.append(latex_to_unicode(value) + (f" if {condition}" if condition and condition != "otherwise"
                                                 else f" {condition}" if condition else ""))
    return "{ " + "; ".join(rows) + " }"


def math_html(tex: str, display: bool) -> str:
    source = html.escape(" ".join(tex.split()))
    body = html.escape(latex_to_unicode(tex), quote=False)
    return f'<span class="math{" display" if display else ""}" title="{source}">{body}</span>'


def escaped_math(escaped: str) -> str:
    """$$…$$ and $…$ in HTML-escaped text as math_html."""
    text = re.sub(r"\$\$(.+?)\$\$", lambda m: math_html(html.unescape(m.group(1)), True), escaped, flags=re.S)
    return re.sub(INLINE_MATH, lambda m: math_html(html.unescape(m.group(1)), False), text)


def protect_math(text: str) -> tuple[str, dict[str, str]]:
    """Takes the maths out of markdown before rendering, so that `_`, `*` and `\\{` in it are not
    read as markdown: $$ … $$ and $ … $ come back as Unicode text (math_html), ```latex fences as
    their LaTeX source, preformatted. Code fences and `code spans` are left alone."""
    kept: dict[str, str] = {}

    def keep(rendered: str, block: bool) -> str:
        key = f"MATHKEEP{len(kept)}X"
        kept[key] = rendered
        return f"\n\n{key}\n\n" if block else key

    def latex_block(body: str) -> str:
        return keep(f'<pre class="latex">{html.escape(body.strip(), quote=False)}</pre>', True)

    fence = r"^```(?:latex|math|tex)\s*\n(.*?)^```\s*$"
    text = re.sub(fence, lambda m: latex_block(m.group(1)), text, flags=re.M | re.S)
    pieces = re.split(r"(^```.*?^```\s*$|`[^`\n]+`)", text, flags=re.M | re.S)  # never touch code
    for i in range(0, len(pieces), 2):
        piece = re.sub(r"\$\$(.+?)\$\$", lambda m: keep(math_html(m.group(1), True), True), pieces[i], flags=re.S)
        pieces[i] = re.sub(INLINE_MATH, lambda m: keep(math_html(m.group(1), False), False), piece)
    return "".join(pieces), kept


def markdown_html(text: str) -> str:
    text, kept = protect_math(text)
    rendered = markdown.markdown(
        text, extensions=["tables", "fenced_code", "sane_lists", "toc"],
        extension_configs={"toc": {"slugify": lambda value, separator: github_slug(value)}})
    for key, block in kept.items():
        rendered = rendered.replace(f"<p>{key}</p>", block).replace(key, block)
    return rendered


def add_back_links(rendered: str, site: Site) -> str:
    """After each entry's heading in the rendered paper notes: the places that cite it, code lines
    grouped by file and by the class or function they sit in, other pages once each."""

    def add(match: re.Match) -> str:
        anchor = match.group(2)
        places: dict[str, list[str]] = {}  # citing page → its anchors, in order, once each
        for citation in site.citations.get(anchor, []):
            if citation.anchor not in places.setdefault(citation.page, []):
                places[citation.page].append(citation.anchor)
        if not places:
            return match.group(0)
        items = []
        for page_file in sorted(places, key=site_order(site)):
            if page_file.endswith(".py.html"):
                items.append(code_back_links(site, page_file, places[page_file]))
            else:
                items.append(f'<a href="{page_file}#{places[page_file][0]}">{site.titles[page_file]}</a>')
        heading = "Cited in" if anchor.startswith("eq-") else "Implemented in"
        return match.group(0) + f'<p class="cited-by">{heading}: {" · ".join(items)}</p>'

    return re.sub(r'(<a id="((?:eq|fig2)-[^"]+)"></a>.*?</h[1-6]>)', add, rendered, flags=re.S)


def code_back_links(site: Site, page_file: str, anchors: list[str]) -> str:
    """"losses.py: sigmoid_focal_loss L60 L69, dice_loss L78": line links after the name of the
    innermost class or function around them ("top level" for the module's own lines)."""
    stem = page_file[: -len(".py.html")]
    groups: dict[str, list[str]] = {}
    for anchor in anchors:
        line = int(anchor[1:])
        around = [(start, name) for start, end, name in site.spans[stem] if start <= line <= end]
        name = max(around)[1] if around else "top level"
        groups.setdefault(name, []).append(f'<a href="{page_file}#{anchor}">{anchor}</a>')
    listed = ", ".join(f'<span class="def">{name}</span> {" ".join(links)}' for name, links in groups.items())
    return f'<span class="file">{site.titles[page_file]}:</span> {listed}'


def site_order(site: Site):
    order = {name: i for i, name in enumerate(site.titles)}
    return lambda page_file: order.get(page_file, len(order))


def figure_2_citations(readme: str, site: Site) -> None:
    """The README's paper-to-code map rows for Figure 2's boxes become back-links of the paper
    notes' "fig2-…" entries (a box has no label for the code to cite)."""
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2:
            continue
        box = FIGURE_2_ROW.search(cells[0])
        if not box:
            continue
        anchor = "fig2-" + re.sub(r"[^a-z0-9]+", "-", box.group(1).lower()).strip("-")
        if anchor not in site.anchors:
            continue
        for match in MODULE_REF.finditer(cells[-1]):
            stem, name = match.group(1), match.group(2)
            line_number = site.definitions.get(stem, {}).get(name or "")
            if line_number:
                site.cite(anchor, Citation(f"{stem}.py.html", f"L{line_number}", f"{name}"))
            else:
                print(f"warning: README map row '{cells[0]}': {match.group(0)} names no class or function",
                      file=sys.stderr)


def notebook_html(path: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic")  # the cells only: no require.js, no MathJax CDN
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    return body


def results_html(folder: Path, site: Site) -> str:
    """Every study's files: markdown tables rendered, images shown, CSV as tables, JSON as text."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        suffix = path.suffix.lower()
        if suffix == ".md":
            body = markdown_html(path.read_text(encoding="utf-8"))
            base = path.parent.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else "results"
            parts.append(f"<h2>{html.escape(rel)}</h2>" + site.link_html(body, "results.html", base))
        elif suffix in (".png", ".jpg", ".jpeg", ".gif", ".svg"):
            parts.append(f'<figure><img src="{site.asset(path, f"results/{rel}")}" alt="{html.escape(rel)}">'
                         f"<figcaption>{html.escape(rel)}</figcaption></figure>")
        elif suffix in (".csv", ".tsv"):
            delimiter = "," if suffix == ".csv" else "\t"
            rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter=delimiter))
            table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            parts.append(f"<h2>{html.escape(rel)}</h2><table>{table}</table>")
        elif suffix in (".json", ".txt", ".log", ".jsonl"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if suffix == ".json":
                try:
                    text = json.dumps(json.loads(text), indent=1)
                except json.JSONDecodeError:
                    pass
            parts.append(f"<details><summary>{html.escape(rel)}</summary><pre>{html.escape(text[:200_000])}</pre></details>")
    return "\n".join(parts) or "<p>No result files yet.</p>"


# --- discovery and the whole build -----------------------------------------------------------------


def reading_order(readme: str, available: list[str]) -> list[str]:
    """Module stems in the README's reading order (the first numbered or bulleted list after a line
    mentioning "reading order"), else FALLBACK_ORDER; then every other module, sorted."""
    listed: list[str] = []
    lines = readme.splitlines()
    for start, line in enumerate(lines):
        if "reading order" not in line.lower():
            continue
        items, started = [], False
        for following in lines[start + 1:]:
            if LIST_ITEM.match(following.strip()):
                started = True
            elif started and (not following.strip() or following.startswith("#")):
                break
            elif not started and following.strip():
                break
            if started:
                items.append(following)
        listed = [stem for stem in re.findall(r"([A-Za-z_]\w*)\.py\b", "\n".join(items)) if stem in available]
        if len(set(listed)) >= 2:
            break
        listed = []
    order = list(dict.fromkeys(listed or [s for s in FALLBACK_ORDER if s in available]))
    return order + sorted(set(available) - set(order))


def template(site: Site, page: str, title: str, body: str, kind: str) -> str:
    links = [("index.html", "README"), ("paper.html", "Paper"), ("results.html", "Results")]
    links += [(f"{stem}.py.html", f"{stem}.py") for stem in site.modules]
    nav = " ".join(f'<span class="{"here" if href == page else ""}"><a href="{href}">{text}</a></span>'
                   for href, text in links if href in site.titles)
    footer = ""
    if kind == "module":
        stems = site.modules
        i = stems.index(title[:-3])
        prev_link = f'<a href="{stems[i - 1]}.py.html">← {stems[i - 1]}.py</a>' if i else ""
        next_link = f'<a href="{stems[i + 1]}.py.html">{stems[i + 1]}.py →</a>' if i + 1 < len(stems) else ""
        footer = f'<footer class="pager">{prev_link}<span></span>{next_link}</footer>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)} · MaskFormer reading edition</title>'
            f'<link rel="stylesheet" href="style.css"></head>\n<body class="{kind}"><nav class="top">{nav}</nav>\n'
            f'<main class="{kind}">\n{body}\n</main>{footer}</body></html>\n')


def contents_html(site: Site) -> str:
    groups: dict[str, list[str]] = {}
    for rel, page in site.pages.items():
        group = ("Code, in reading order" if rel.endswith(".py") else "Notebooks" if rel.startswith("notebooks/")
                 else "Exercises" if rel.startswith("exercises/") else "Paper, docs and results")
        if page != "index.html":
            groups.setdefault(group, []).append(f'<a href="{page}">{html.escape(site.titles[page])}</a>')
    order = ["Paper, docs and results", "Code, in reading order", "Notebooks", "Exercises"]
    rows = "".join(f"<li><b>{g}:</b> {' · '.join(groups[g])}</li>" for g in order if g in groups)
    return f'<div class="contents"><p>The reading edition of this repository:</p><ul>{rows}</ul></div>'


def build(out: Path, paper: Path) -> dict[str, float]:
    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    site = Site(out)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    available = sorted(p.stem for p in REPO.glob("*.py"))
    site.modules = reading_order(readme, available)
    paper_md = paper.read_text(encoding="utf-8") if paper.is_file() else ""
    site.anchors = set(paper_anchors(paper_md))

    site.pages["README.md"] = "index.html"
    site.titles["index.html"] = "README"
    if paper_md:
        site.pages["docs/paper.md"] = "paper.html"
        site.titles["paper.html"] = "Paper notes"
    for doc in sorted((REPO / "docs").glob("*.md")):
        if doc.name != "paper.md":
            site.pages[f"docs/{doc.name}"] = page_name(f"docs/{doc.name}")
            site.titles[page_name(f"docs/{doc.name}")] = doc.name
    for stem in list(site.modules):
        try:
            tree = ast.parse((REPO / f"{stem}.py").read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError) as error:  # a module half-way through an edit
            print(f"warning: {stem}.py left out of the site: {error}", file=sys.stderr)
            site.modules.remove(stem)
            continue
        nodes = definition_nodes(tree)
        site.definitions[stem] = {}
        for name, node in nodes:  # the first definition when a name is defined twice
            site.definitions[stem].setdefault(name, node.lineno)
        site.spans[stem] = [(min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno, name)
                            for name, node in nodes]
        site.pages[f"{stem}.py"] = f"{stem}.py.html"
        site.titles[f"{stem}.py.html"] = f"{stem}.py"
    notebooks = sorted(REPO.glob("notebooks/*.ipynb")) + sorted(REPO.glob("exercises/*.ipynb"))
    for notebook in notebooks:
        rel = notebook.relative_to(REPO).as_posix()
        site.pages[rel] = page_name(rel)
        site.titles[page_name(rel)] = rel
    results = REPO / "results"
    if results.is_dir():
        site.pages["results"] = "results.html"
        site.titles["results.html"] = "Results"

    rendered: dict[str, tuple[str, str, str]] = {}  # page → (title, body, kind)
    for stem in site.modules:
        rendered[f"{stem}.py.html"] = (f"{stem}.py", module_page(stem, site), "module")
    timings = {"modules": time.perf_counter() - started}
    readme_html = site.link_html(markdown_html(readme), "index.html", ".")
    rendered["index.html"] = ("README", contents_html(site) + readme_html, "doc")
    for rel, page in site.pages.items():
        if rel.startswith("docs/") and rel != "docs/paper.md":
            body = markdown_html((REPO / rel).read_text(encoding="utf-8"))
            rendered[page] = (Path(rel).name, site.link_html(body, page, "docs"), "doc")
    for notebook in notebooks:
        rel = notebook.relative_to(REPO).as_posix()
        body = site.link_html(notebook_html(notebook), site.pages[rel], Path(rel).parent.as_posix(), math=True)
        rendered[site.pages[rel]] = (rel, body, "notebook")
    timings["notebooks"] = time.perf_counter() - started - timings["modules"]
    if results.is_dir():
        rendered["results.html"] = ("Results", "<h1>Results</h1>" + results_html(results, site), "doc")
    if paper_md:
        figure_2_citations(readme, site)
        body = site.link_html(markdown_html(paper_md), "paper.html", "docs")
        rendered["paper.html"] = ("Paper notes", add_back_links(body, site), "doc")

    for page, (title, body, kind) in rendered.items():
        (out / page).write_text(template(site, page, title, body, kind), encoding="utf-8")
    style = STYLE + HtmlFormatter(style="friendly").get_style_defs(".highlight")
    (out / "style.css").write_text(style, encoding="utf-8")
    timings["total"] = time.perf_counter() - started
    if site.unresolved and paper_md:
        print(f"warning: {len(site.unresolved)} equation labels have no entry in {paper}: "
              + ", ".join(sorted(set(site.unresolved))[:10]), file=sys.stderr)
    if not paper_md:
        print(f"warning: {paper} not found: the site has no paper page and labels are not linked", file=sys.stderr)
    return timings


STYLE = """
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; background: #fff; }
nav.top { position: sticky; top: 0; z-index: 2; background: #f4f4f0; border-bottom: 1px solid #ddd;
  padding: 6px 16px; font-size: 13px; white-space: nowrap; overflow-x: auto; }
nav.top span { margin-right: 10px; white-space: nowrap; }
nav.top span.here a { font-weight: bold; color: #000; }
a { color: #1a5fb4; text-decoration: none; } a:hover { text-decoration: underline; }
a.eq { background: #fff4c2; border-radius: 3px; padding: 0 1px; }
main { padding: 8px 24px 40px; }
main.doc, main.notebook { max-width: 980px; margin: 0 auto; }
main.module { padding: 0; }
section.pair { display: grid; grid-template-columns: minmax(280px, 38%) 1fr; border-bottom: 1px solid #eee; }
section.pair .doc { padding: 6px 20px; background: #fbfbf8; border-right: 1px solid #eee; font-size: 14px; }
p:has(> span.anchor:target), pre:has(> span.anchor:target) { background: #fff0a0; }
section.pair .doc p { margin: 6px 0; } section.pair .doc p.item { margin-left: 1.2em; text-indent: -1.2em; }
section.pair .code { overflow-x: auto; padding: 6px 0; }
section.pair .code pre { margin: 0; background: none; font: 12.5px/1.45 ui-monospace, Menlo, Consolas, monospace; }
span.line { display: block; padding-right: 16px; }
a.eq:target { outline: 2px solid #e5a50a; }
span.line:target { background: #fff0a0; }
a.ln { display: inline-block; width: 3.5em; padding-right: 1em; text-align: right; color: #aaa; user-select: none; }
span.math { font-family: "DejaVu Serif", Georgia, serif; }
span.math.display { display: block; white-space: pre-wrap; padding: 6px 24px; font-size: 16px; }
pre.formula, pre.latex { font: 13px/1.4 ui-monospace, Menlo, Consolas, monospace; background: #f3f3ee;
  padding: 4px 8px; overflow-x: auto; white-space: pre; margin: 6px 0; }
code { font: 0.92em ui-monospace, Menlo, Consolas, monospace; background: #f1f1ec; padding: 0 2px; }
pre { background: #f6f6f2; padding: 8px; overflow-x: auto; }
pre code { background: none; padding: 0; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; font-size: 14px; }
p.cited-by { font-size: 13px; background: #f4f8ff; border-left: 3px solid #1a5fb4; padding: 4px 10px; }
p.cited-by .file { font-weight: bold; } p.cited-by .def { font-family: ui-monospace, Menlo, Consolas, monospace; }
h1.module { font-size: 22px; margin: 8px 0 4px; }
p.toc { font-size: 13px; border-bottom: 1px solid #e4e4dc; padding-bottom: 6px; }
p.banner { font-weight: bold; font-size: 15px; margin-top: 10px; }
[id] { scroll-margin-top: 64px; }
main.module .highlight { background: none; }
div.contents { background: #f4f4f0; padding: 4px 16px; border-radius: 4px; margin-top: 12px; }
img { max-width: 100%; }
footer.pager { display: flex; justify-content: space-between; padding: 12px 24px; border-top: 1px solid #ddd; }
.prompt { display: none; }
.input_area, .jp-InputArea { margin: 8px 0 2px; }
.output_area pre, .output_subarea pre { background: #fff; border-left: 3px solid #ccc; }
.anchor-link { display: none; }
.output_error pre { border-left-color: #c01c28; }
.ansi-red-fg { color: #c01c28; } .ansi-green-fg { color: #26a269; } .ansi-yellow-fg { color: #a67c00; }
.ansi-blue-fg { color: #1a5fb4; } .ansi-cyan-fg { color: #2a7b8c; } .ansi-bold { font-weight: bold; }
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "site", help="output folder (default docs/site)")
    parser.add_argument("--paper", type=Path, default=REPO / "docs" / "paper.md",
                        help="the paper notes (default docs/paper.md)")
    args = parser.parse_args()
    earlier_site = (args.out / "index.html").is_file() and (args.out / "style.css").is_file()
    if args.out.is_file() or (args.out.is_dir() and any(args.out.iterdir()) and not earlier_site):
        sys.exit(f"--out {args.out}: expected a new or empty folder, or an earlier site (it is deleted and rewritten)")
    timings = build(args.out, args.paper)
    print(f"site written to {args.out}/index.html in {timings['total']:.1f} s")


if __name__ == "__main__":
    main()
