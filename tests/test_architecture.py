"""The import rules of docs/architecture.md, read from the source: every import points down the layer list
(a back arrow fails), and no module imports itself back through others (no cycles).

Every `import r1v...` / `from r1v... import` counts, at module level or inside a function, so a lazy import
cannot hide a back arrow.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first: a unit may import only units of its own or a lower layer (docs/architecture.md)
LAYERS: list[set[str]] = [
    {"errors"},
    {"atomic", "config", "distributed", "plugins", "progress", "tables"},
    {"processing"},
    {"assets"},
    {"data"},
    {"model"},
    {"train"},
    {"algos"},
    {"rewards"},
    {"rollout"},
    {"eval"},
    {"agent"},
    {"serve"},
    {"export"},
    {"recipes"},
    {"cli"},
]
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def modules() -> dict[str, Path]:
    """`r1v.x.y` -> its file, for every module of the package."""
    out = {}
    for f in (SRC / "r1v").rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported r1v module: line}, names resolved to the module that defines them."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out: dict[str, dict[str, int]] = defaultdict(dict)
    for mod, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "r1v":
                targets = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "r1v"]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r is not None and r != mod and not mod.startswith(r + "."):  # a package's own __init__
                    out[mod].setdefault(r, node.lineno)
    return out


def unit(mod: str) -> str:
    """The folder (or top-level module) a module belongs to: r1v.data.sources -> data, r1v.cli -> cli."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "r1v"


def test_every_unit_has_a_layer() -> None:
    units = {unit(m) for m in modules()} - {"r1v"}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS and docs/architecture.md"


def back_arrows(found: dict[str, dict[str, int]]) -> list[str]:
    """`module:line: a imports b` for every import of a unit above the importer's."""
    out = []
    for mod, targets in sorted(found.items()):
        for target, line in targets.items():
            a, b = unit(mod), unit(target)
            if a != b and a in LEVEL and b in LEVEL and LEVEL[b] > LEVEL[a]:
                out.append(f"{mod}:{line}: {a} imports {target} ({b} is above {a})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle found by a depth-first walk, as `a -> b -> a`."""
    found, done, path = [], set(), []

    def visit(m: str) -> None:
        if m in path:
            found.append(" -> ".join([*path[path.index(m):], m]))
            return
        if m in done:
            return
        path.append(m)
        for t in sorted(graph.get(m, ())):
            visit(t)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    return found


def test_imports_point_down_the_layers() -> None:
    back = back_arrows(imports(modules()))
    assert not back, "back arrows:\n" + "\n".join(back)


def test_no_import_cycles() -> None:
    found = cycles({m: set(t) for m, t in imports(modules()).items()})
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_checks_catch_a_back_arrow_and_a_cycle() -> None:
    assert back_arrows({"r1v.data.sources": {"r1v.train.loop": 7, "r1v.errors": 3}}) == [
        "r1v.data.sources:7: data imports r1v.train.loop (train is above data)"]
    assert back_arrows({"r1v.recipes.sft": {"r1v.data.sources": 1}}) == []
    assert cycles({"r1v.a": {"r1v.b"}, "r1v.b": {"r1v.c"}, "r1v.c": {"r1v.a"}}) == ["r1v.a -> r1v.b -> r1v.c -> r1v.a"]
    assert cycles({"r1v.a": {"r1v.b"}, "r1v.b": set()}) == []
