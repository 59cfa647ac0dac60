"""List the import cycles between medcm modules; exit 1 if there is any.

Every import counts, also one inside a function (it still runs before the caller can finish) and
one under `if TYPE_CHECKING:`: a loop is a sign that two modules share a concept that has no home.
`from medcm.x import y` is an edge to `medcm.x` and, when `y` is a submodule, to `medcm.x.y`; a
package's `__init__` is a module of its own (`medcm.index`). Relative imports are resolved; dynamic
ones (`importlib.import_module`) are not seen. `tests/test_layout.py` uses `module_imports` for the
layout rules and asserts that `find_cycles` finds none.

    .venv/bin/python scripts/import_loops.py              # medcm
    .venv/bin/python scripts/import_loops.py medcm db ui  # cycles within and between these packages
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ImportRef:
    """One import statement: who imports, where, and which modules it refers to.

    Attributes:
        source: the importing module, e.g. "medcm.engine.facade".
        path: the importing file.
        line: the statement's line number.
        statement: the statement as written in source form, e.g. "from db.store import CaseStore".
        targets: the modules it refers to: the imported module, plus `x.y` for each `from x import y`
            where `x.y` is a module of the tree walked.
        names: the names a `from ... import` takes ("*" included); empty for `import x`.
        base: the module a `from ... import` takes them from (resolved if relative); "" for `import x`.
    """

    source: str
    path: Path
    line: int
    statement: str
    targets: tuple[str, ...]
    names: tuple[str, ...] = ()
    base: str = ""

    def where(self, root: Path) -> str:
        """`file:line` relative to `root` (or absolute when outside it)."""
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


def module_files(root: Path, packages: Sequence[str]) -> dict[str, Path]:
    """Module name → file of every .py module under `root/<package>` (a package's is its `__init__.py`).

    Raises:
        FileNotFoundError: a package folder that does not exist under `root`.
    """
    modules: dict[str, Path] = {}
    for package in packages:
        folder = root / package
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such package folder; expected one of the packages under {root}")
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if not all(part.isidentifier() for part in parts):
                continue  # e.g. Alembic's versions/0001_initial.py: loaded by path, never imported
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(source: str, is_package: bool, level: int, module: str | None, path: Path, line: int) -> str:
    """The absolute module of `from <level dots><module> import ...` written in `source`."""
    if level == 0:
        return module or ""
    package = source.split(".") if is_package else source.split(".")[:-1]
    if level - 1 >= len(package):
        raise ImportError(f"{path}:{line}: relative import beyond the top-level package {source.split('.')[0]!r}")
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(source: str, path: Path, modules: Iterable[str]) -> list[ImportRef]:
    """Every import statement of one file, wherever it stands (module level, function, class, `if`).

    Args:
        source: the file's module name.
        path: the file.
        modules: the module names of the tree walked (to tell a submodule from an attribute).

    Raises:
        SyntaxError: the file does not parse.
    """
    known = set(modules)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    refs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                refs.append(ImportRef(source, path, node.lineno, ast.unparse(node), (alias.name,)))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, path.name == "__init__.py", node.level, node.module, path, node.lineno)
            names = tuple(alias.name for alias in node.names)
            targets = (base, *(f"{base}.{name}" for name in names if f"{base}.{name}" in known))
            refs.append(ImportRef(source, path, node.lineno, ast.unparse(node), targets, names, base))
    return sorted(refs, key=lambda ref: ref.line)


def module_imports(root: Path, packages: Sequence[str]) -> list[ImportRef]:
    """Every import statement of every module under `root/<package>`, by module, then line."""
    modules = module_files(root, packages)
    return [ref for name, path in sorted(modules.items()) for ref in imports_of(name, path, modules)]


def import_graph(refs: Iterable[ImportRef], modules: Iterable[str]) -> dict[str, dict[str, ImportRef]]:
    """Module → {imported module → the first statement importing it}, keeping edges between `modules` only."""
    known = set(modules)
    graph: dict[str, dict[str, ImportRef]] = {name: {} for name in known}
    for ref in refs:
        for target in ref.targets:
            # A package's `from . import x` names itself as the base: no edge, it is already running.
            if target in known and ref.source in known and target != ref.source:
                graph[ref.source].setdefault(target, ref)
    return graph


def _components(graph: dict[str, dict[str, ImportRef]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative: no recursion limit on deep import chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
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
                found.append(sorted(component))
    return found


def _shortest_cycle(graph: dict[str, dict[str, ImportRef]], start: str, members: set[str]) -> list[str]:
    """A shortest path start → ... → start inside `members` (breadth-first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise ValueError(f"{start}: no cycle through it inside {sorted(members)}")


def find_cycles(graph: dict[str, dict[str, ImportRef]]) -> list[list[str]]:
    """One shortest cycle per group of mutually importing modules, as [a, b, ..., a], sorted.

    A group of more than two modules may hold further
    cycles; breaking the one shown and running again reveals the next.
    """
    cycles = []
    for component in _components(graph):
        if len(component) > 1:  # import_graph keeps no self-edges
            cycles.append(_shortest_cycle(graph, component[0], set(component)))
    return sorted(cycles)


def describe(cycle: list[str], graph: dict[str, dict[str, ImportRef]], root: Path) -> str:
    """The cycle on one line, then each of its edges with the file:line and statement that make it."""
    lines = [" -> ".join(cycle)]
    for source, target in zip(cycle, cycle[1:]):
        ref = graph[source][target]
        lines.append(f"    {ref.where(root)}: {ref.statement}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the cycles of the packages named on the command line (default: medcm); 1 if any, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("packages", nargs="*", default=["medcm"], help="package folders under the repository root")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    modules = module_files(args.root, args.packages)
    graph = import_graph(module_imports(args.root, args.packages), modules)
    cycles = find_cycles(graph)
    for cycle in cycles:
        print(describe(cycle, graph, args.root))
    edges = sum(len(targets) for targets in graph.values())
    print(f"{len(cycles)} import cycle(s) among {len(modules)} modules and {edges} imports of {', '.join(args.packages)}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
