"""Find import cycles among the modules of a package, type-only imports included.

The project's rule (STYLE.md) is "no import cycles, not even type-only ones", so
every ``import``/``from ... import`` statement anywhere in a module counts as an
edge, including those under ``if TYPE_CHECKING:`` and inside functions. Relative
imports are resolved against the importing module. ``from pkg import name``
counts as an edge to ``pkg.name`` when that is a module of the package, else to
``pkg`` itself.

Usage: ``python tools/import_cycles.py [SRC_PACKAGE_DIR]`` (default
``src/trio_chatruns``); prints each cycle (strongly connected component with more
than one module, or a module importing itself) and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_names(package_dir: Path) -> dict[str, Path]:
    """Map each dotted module name under ``package_dir`` to its file."""
    root = package_dir.parent
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a (possibly relative) ``from`` import refers to."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    if target:
        base = [*base, *target.split(".")]
    return ".".join(base)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Edges module -> modules of the same package it imports (any import)."""
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # "import a.b.c" depends on the deepest known module prefix.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(result)


def main(argv: list[str]) -> int:
    package_dir = Path(argv[1] if len(argv) > 1 else "src/trio_chatruns")
    graph = import_graph(package_dir)
    cycles = find_cycles(graph)
    for cycle in cycles:
        members = set(cycle)
        print(f"cycle of {len(cycle)} modules:")
        for module in cycle:
            inside = sorted(graph[module] & members)
            print(f"  {module} -> {', '.join(inside)}")
    if not cycles:
        print(f"no import cycles among {len(graph)} modules")
    return 1 if cycles else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
