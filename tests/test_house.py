"""The house rules a newcomer relies on, read from the code itself (the AST: function-local imports count):
no function over 80 lines, and subpackages that depend one way."""

from __future__ import annotations

import ast
from collections import defaultdict

from helpers.env import REPO

PKG = REPO / "bnexp"
MAX_LINES = 80
LEAVES = ("cli", "files", "names", "record", "stops")  # top-level modules everything may use: they import no subpackage


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        mod = ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        out.append((mod, ast.parse(p.read_text(), filename=str(p))))
    return out


def _unit(mod: str) -> str:
    """bnexp.sweep.worker -> sweep; bnexp.names -> names; bnexp -> bnexp."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, tree in _modules():
        for node in ast.walk(tree):  # every import, at the top or inside a function
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnexp"):
                targets = [node.module] if node.module != "bnexp" else [f"bnexp.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("bnexp")]
            for t in targets:
                if _unit(t) != _unit(mod):
                    edges[_unit(mod)].add(_unit(t))
    return edges


def test_no_function_is_longer_than_80_lines():
    long = [
        (node.end_lineno - node.lineno + 1, f"{mod}:{node.name}")
        for mod, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long, f"functions over {MAX_LINES} lines: {sorted(long, reverse=True)}"


def test_subpackages_depend_one_way():
    edges = _edges()
    seen: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                seen.append([*path[path.index(nxt) :], nxt])
            elif len(path) < 12:
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not seen, f"import cycles between parts of bnexp: {seen[:5]}"


def test_the_leaf_modules_import_no_subpackage():
    edges = _edges()
    for leaf in LEAVES:
        assert edges.get(leaf, set()) <= set(LEAVES), (leaf, edges.get(leaf))


def test_core_and_analysis_know_nothing_above_them():
    edges = _edges()
    # training judges nothing (no analysis, no sweep): it logs through tracking, which never imports it back
    assert edges["core"] <= {*LEAVES, "tracking", "bnexp"}, edges["core"]
    assert "core" not in edges["tracking"]
    assert edges["analysis"] <= {*LEAVES}, edges["analysis"]  # pure: no torch, Optuna, W&B, no sweep
