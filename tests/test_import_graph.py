"""The package's import graph, imports inside functions included, has no cycle: a module that needs
another at run time depends on it as much as one that imports it at the top, and a cycle through a
deferred import is a design knot that only happens to load (issue: "no hidden cycles")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "sage_libs.sage_finetune"
ROOT = Path(__file__).resolve().parents[1] / "src" / "sage_libs" / "sage_finetune"


def modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package __init__)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join([PACKAGE, *(parts[:-1] if is_package else parts)])] = (path, is_package)
    return out


def imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The package's modules an import statement loads (``from . import x`` names a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return found + ([target] if target in known and len(found) < len(node.names) else [])


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, (path, is_package) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in imported(name, is_package, node, set(mods)) if t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 80 and f"{PACKAGE}.cli.train" in graph[f"{PACKAGE}.cli"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_deferred_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    # and the graph builder sees an import inside a function, relative and absolute
    tree = ast.parse("def f():\n    from ..data import render\n    import sage_libs.sage_finetune.errors\n")
    known = {f"{PACKAGE}.data", f"{PACKAGE}.data.render", f"{PACKAGE}.errors"}
    found = [t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for t in imported(f"{PACKAGE}.cli.train", False, node, known)]
    assert found == [f"{PACKAGE}.data.render", f"{PACKAGE}.errors"]
