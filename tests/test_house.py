"""The house rules a newcomer relies on, read from the code itself (the AST: function-local imports count):
no function over 80 lines, subpackages that depend one way, no module using another's `_private` names, and one
owner per concept (sweep.json, metric names)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict

from helpers.env import REPO

PKG = REPO / "bnexp"
MAX_LINES = 80
# top-level modules everything may use: they import no subpackage
LEAVES = ("cli", "files", "names", "record", "stops", "sweep_file")


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


def private_uses(mod: str, tree: ast.Module, modules: set[str]) -> list[str]:
    """`from bnexp.x import _name` and `x._name` (x a bnexp module imported here) where x is not `mod`."""
    got, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnexp"):
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:  # a module: `from bnexp.sweep import liveness`
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                elif a.name.startswith("_") and not a.name.startswith("__") and node.module != mod:
                    got.append(f"{mod}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.name.startswith("bnexp") and a.asname})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and aliases[node.value.id] != mod:
                got.append(f"{mod}: {aliases[node.value.id]}.{node.attr}")
    return got


def test_no_module_uses_another_modules_private_names():
    """A module's `_private` names are its own: one another module needs has become public, so it is named so."""
    mods = _modules()
    names = {m for m, _ in mods}
    bad = [b for mod, tree in mods for b in private_uses(mod, tree, names)]
    assert not bad, f"private names used across modules (make them public): {bad}"


def test_the_private_use_check_sees_both_spellings():
    """The check above finds what it looks for (it would pass on an empty walk)."""
    src = "from bnexp.core.train import _quiet\nfrom bnexp.tracking import wandb_runs\nwandb_runs._close()\n"
    mods = {"bnexp.core.train", "bnexp.tracking.wandb_runs", "bnexp.lr_find"}
    got = private_uses("bnexp.lr_find", ast.parse(src), mods)
    assert got == [
        "bnexp.lr_find: from bnexp.core.train import _quiet",
        "bnexp.lr_find: bnexp.tracking.wandb_runs._close",
    ]
    assert private_uses("bnexp.tracking.wandb_runs", ast.parse("from bnexp.tracking.wandb_runs import _x"), mods) == []


def test_sweep_json_has_one_owner():
    """sweep.json is written and read by bnexp.sweep_file only: every other module asks it (exists/read/write)."""
    naming = sorted(
        mod
        for mod, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("sweep.json")
    )
    assert naming == ["bnexp.sweep_file"], naming


METRIC = re.compile(r"(val|train|test|perf|landscape)/[a-z_]+|trainer/global_step")
METRIC_LITERALS_LEFT: set[str] = set()  # none left


def test_every_metric_name_is_spelled_in_bnexp_record_only():
    """One name per metric, as a constant in bnexp.record: a module writing "val/acc" itself spells it again."""
    spelled = sorted(
        f"{mod}:{node.lineno} {node.value}"
        for mod, tree in _modules()
        if mod != "bnexp.record" and mod not in METRIC_LITERALS_LEFT
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and METRIC.fullmatch(node.value)
    )
    assert not spelled, f"metric names spelled outside bnexp.record (use its constants): {spelled}"


# Optuna's private names bnexp needs (bnexp.sweep.liveness's docstring says why each): no public way exists
OPTUNA_PRIVATE_ALLOWED = {"_storage", "_trial_id", "_pop_waiting_trial_id", "_get_stale_trial_ids"}


def _optuna_private_names() -> set[str]:
    """Every `_name` of Optuna's study, trial and storage objects, their classes' and their instances' own."""
    import optuna
    from optuna.storages.journal import JournalFileBackend  # noqa: F401  (the journal classes load)

    study = optuna.create_study()
    trial = study.ask()
    objs = [study, trial, study.trials[0], study._storage, optuna.storages.RDBStorage, optuna.storages.JournalStorage]
    objs += [optuna.storages.BaseStorage, type(study._storage)]
    names = {n for o in objs for n in [*dir(o), *getattr(o, "__dict__", {})]}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_optunas_private_names_are_used_in_liveness_only_and_only_those_it_names():
    private = _optuna_private_names()
    used: dict[str, set[str]] = defaultdict(set)
    for mod, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                if not (isinstance(node.value, ast.Name) and node.value.id == "self"):  # bnexp's own attrs
                    used[mod].add(node.attr)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
                used[mod].update(p for p in node.module.split(".") if p.startswith("_"))
    used = {m: names for m, names in used.items() if names}
    assert set(used) <= {"bnexp.sweep.liveness"}, used
    assert used.get("bnexp.sweep.liveness", set()) <= OPTUNA_PRIVATE_ALLOWED, used
