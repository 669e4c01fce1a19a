"""`python -m benchmarks.layout`: the package's shape against the goals of issue 15.

Prints the modules directly in `bulkgetty/`, the longest classes and functions, the modules
over 700 lines, import cycles between modules, and every import that runs up a layer. Layers,
bottom to top: the core modules (assets, config, errors, events), `getty/` (the API client),
`stages/` (a run's stages), `scale/` (shards, merging, the team ledger's commands),
`commands/`, `cli/`. The sandbox stands apart: it may import the core modules only. The
package's `__init__`/`__main__` are its front door and may import anything. Exit 1 when a goal
is missed, so the numbers can be checked in a test.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "bulkgetty"
LAYERS = {"core": 0, "getty": 1, "stages": 2, "scale": 3, "commands": 4, "cli": 5}
GOALS = {"top modules": 12, "class lines": 250, "module lines": 700, "function lines": 80}


@dataclass(frozen=True, slots=True)
class Module:
    name: str  # dotted, below bulkgetty
    path: Path
    tree: ast.Module

    @property
    def layer(self) -> str:
        first = self.name.split(".")[0]
        if first in ("", "__init__", "__main__"):
            return "front"
        if first == "sandbox":
            return "sandbox"
        return first if first in LAYERS else "core"


def modules() -> list[Module]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append(Module(".".join(parts), path, ast.parse(path.read_text())))
    return found


def imports(mod: Module, names: set[str]) -> set[str]:
    """The bulkgetty modules `mod` imports (anywhere in it, lazy ones included)."""
    out: set[str] = set()
    base = mod.name.split(".") if mod.path.name == "__init__.py" else mod.name.split(".")[:-1]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*anchor, node.module] if node.module else anchor)
            elif node.module and node.module.startswith("bulkgetty"):
                target = node.module.removeprefix("bulkgetty").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                out.add(sub if sub in names else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bulkgetty."):
                    out.add(alias.name.removeprefix("bulkgetty."))
    return {m for m in out if m in names and m != mod.name}


def upward(mods: list[Module]) -> list[str]:
    by_name = {m.name: m for m in mods}
    bad = []
    for m in mods:
        if m.layer == "front":
            continue
        for target in sorted(imports(m, set(by_name))):
            t = by_name[target]
            if t.layer == "front":
                bad.append(f"{m.name} -> {target} (the package's front door)")
            elif m.layer == "sandbox":
                if t.layer not in ("core", "sandbox"):
                    bad.append(f"{m.name} -> {target} (the sandbox imports the core only)")
            elif t.layer == "sandbox":
                continue  # a tool beside the layers, used by the commands that start it
            elif LAYERS.get(t.layer, 0) > LAYERS.get(m.layer, 0):
                bad.append(f"{m.name} -> {target} ({m.layer} below {t.layer})")
    return bad


def cycles(mods: list[Module]) -> list[list[str]]:
    """Strongly connected groups of modules through module-level, run-time imports."""
    names = {m.name for m in mods}
    graph: dict[str, set[str]] = {}
    for m in mods:
        top = ast.Module(
            body=[n for n in m.tree.body if isinstance(n, ast.Import | ast.ImportFrom)],
            type_ignores=[],
        )
        graph[m.name] = imports(Module(m.name, m.path, top), names)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def longest(mods: list[Module], kind: type[ast.AST]) -> list[tuple[int, str]]:
    sizes = []
    for m in mods:
        for node in ast.walk(m.tree):
            if isinstance(node, kind):
                assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                sizes.append((lines, f"{m.name}.{node.name}"))
    return sorted(sizes, reverse=True)


def main() -> int:
    mods = modules()
    top = [m for m in mods if m.path.parent == PKG]
    classes = longest(mods, ast.ClassDef)
    functions = longest(mods, ast.FunctionDef) + longest(mods, ast.AsyncFunctionDef)
    functions.sort(reverse=True)
    big = sorted(((len(m.path.read_text().splitlines()), m.name) for m in mods), reverse=True)
    over = [(n, name) for n, name in big if n > GOALS["module lines"]]
    loops = cycles(mods)
    up = upward(mods)
    rows = [
        ("modules directly in bulkgetty/", str(len(top)), f"<= {GOALS['top modules']}"),
        ("longest class", f"{classes[0][1]} {classes[0][0]}", f"<= {GOALS['class lines']}"),
        ("modules over 700 lines", ", ".join(f"{n} {c}" for c, n in over) or "none", "none"),
        ("longest function", f"{functions[0][1]} {functions[0][0]}", "<= 80"),
        ("import cycles", str(len(loops)), "0"),
        ("imports that run up a layer", str(len(up)), "0"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value}  (goal {goal})")
    print("\nclasses over 200 lines:", ", ".join(f"{n} {c}" for c, n in classes if c > 200))
    for group in loops:
        print("cycle:", " <-> ".join(group))
    for line in up:
        print("up:", line)
    missed = (
        len(top) > GOALS["top modules"]
        or classes[0][0] > GOALS["class lines"]
        or over
        or functions[0][0] > GOALS["function lines"]
        or loops
        or up
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
