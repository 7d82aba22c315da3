"""The layout: the method at the top level, machinery/ and tooling/ below it, imports only downwards.

Every Python module of the project has a layer (LAYERS, bottom first). A module may import only
modules of lower layers; no module imports a project module inside a function; the top level
holds at most 10 modules. The README's "Layout" table lists the same modules in the same order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom first. A module may import from the groups above its own line only.
LAYERS = [
    # foundations: no project imports
    ["machinery.distributed", "machinery.checkpoint", "machinery.augment", "machinery.shapes", "machinery.adamw"],
    # the method, without the model: the backbones, the matching, the ground truth z_gt
    ["backbones", "matcher", "data"],
    # the method: the model of Figure 2, its loss, the metrics of §4, the inference of §3.4
    ["maskformer", "losses", "metrics"],
    ["inference"],
    # machinery over the method: datasets on disk, weight files and their conversion, CLI checks
    ["machinery.dataset_files"],
    ["machinery.datasets", "machinery.weight_files", "machinery.cli"],
    ["machinery.conversion", "machinery.drawing", "machinery.runs"],
    ["machinery.weights"],
    # evaluation over a split, then the two commands
    ["evaluation"],
    ["infer", "train"],
    # tools that are not the method
    ["tooling.timing", "tooling.flops", "tooling.prepare", "tooling.deviations",
     "tooling.convert", "tooling.fetch"],
    ["tooling.training_speed", "tooling.experiments"],
    ["tooling.benchmark", "tooling.gpu_check"],
]
RANK = {module: rank for rank, group in enumerate(LAYERS) for module in group}
PACKAGES = ("machinery", "tooling")


def project_modules() -> dict[str, Path]:
    """'name' or 'package.name' -> file, for the top level and the two folders."""
    found = {p.stem: p for p in REPO.glob("*.py")}
    for package in PACKAGES:
        found.update({f"{package}.{p.stem}": p for p in (REPO / package).glob("*.py") if p.stem != "__init__"})
    return found


def imported(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The project modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module in modules:
            return [node.module]
        if node.module in PACKAGES:
            return [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
    return []


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the project modules it imports at its top, "file:line: import" of function-level imports)."""
    modules = project_modules()
    graph, inner = {}, []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        graph[name] = {m for node in tree.body for m in imported(node, modules)}
        # an import inside `if`/`try` at module level still runs at import time: counted as top-level
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner += [f"{path.relative_to(REPO)}:{sub.lineno}: {ast.unparse(sub)}" for sub in ast.walk(node)
                          if imported(sub, modules)]
    return graph, inner


def test_every_module_has_a_layer_and_the_top_level_is_small():
    modules = project_modules()
    assert sorted(modules) == sorted(RANK), "a module without a layer, or a layer naming no module"
    top = [m for m in modules if "." not in m]
    assert len(top) <= 10, top
    assert {"maskformer", "losses", "matcher", "data", "train", "infer", "backbones"} <= set(top)


def test_imports_point_down_only():
    graph, _ = import_graph()
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if RANK[b] >= RANK[a] and a != b]
    assert not upward, "imports of a module of the same or a higher layer:\n" + "\n".join(upward)


def test_no_cycle_in_the_import_graph():
    """Independent of LAYERS: a depth-first search over the imports themselves."""
    graph, _ = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_function_level_import_of_a_project_module():
    _, inner = import_graph()
    assert not inner, "\n".join(inner)


def test_the_checker_sees_a_cycle_and_an_upward_edge(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import and cycle are found."""
    graph = {"data": {"maskformer"}, "maskformer": {"data"}}
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if RANK[b] >= RANK[a]]
    assert upward == ["data -> maskformer"]
    tree = ast.parse("def f():\n    import losses\n")
    modules = {"losses": Path("losses.py")}
    assert [imported(sub, modules) for sub in ast.walk(tree.body[0]) if imported(sub, modules)] == [["losses"]]


def test_readme_layout_tables_follow_the_layers():
    """README's "Layout" tables (method, machinery, tools) name every module, each table in the order
    of LAYERS (bottom first)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    tables = [re.findall(r"^\| `([\w/]+)\.py` \|", table, re.M) for table in section.split("\n\n")]
    tables = [[name.replace("/", ".") for name in table] for table in tables if table]
    assert len(tables) == 3
    named = [name for table in tables for name in table]
    assert sorted(named) == sorted(RANK), set(named) ^ set(RANK)
    for table in tables:
        assert [RANK[n] for n in table] == sorted(RANK[n] for n in table), f"README lists out of layer order: {table}"
