"""The modules of ``pynomaly_workers`` import each other without a cycle.

Every import counts: at module level, under ``TYPE_CHECKING`` and inside functions (a
function-local import hides a cycle from Python until the function runs; it does not
remove it). Configuration sits at the bottom, the Celery app factory above the tasks.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pynomaly_workers"
Graph = dict[str, set[str]]


def package_folders(root: Path) -> dict[str, Path]:
    """Package name -> folder, from pyproject's setuptools ``package-dir`` mapping."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def module_files(folders: Mapping[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file below the mapped folders; a folder
    mapped to its own package name (``tasks`` -> ``pynomaly_workers.tasks``) wins over
    the same folder seen from its parent."""
    found: dict[str, Path] = {}
    for package, folder in sorted(folders.items(), key=lambda item: len(item[0])):
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imported_names(path: Path, module: str) -> set[str]:
    """The absolute names a file imports, anywhere in it (relative imports resolved;
    ``from a import b`` gives ``a`` and ``a.b``, as ``b`` may be a module)."""
    names: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}".rstrip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: Mapping[str, Path]) -> Graph:
    """Module -> the modules it imports. Importing ``a.b.c`` runs ``a.b`` too, so a
    package on the way counts, except the importer's own packages (already running)."""
    graph: Graph = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for name in imported_names(path, module):
            found = name
            while found and found not in modules:
                found = found.rpartition(".")[0]
            if found.startswith(PACKAGE):
                targets.update(m for m in (*ancestors(found), found) if m in modules)
        graph[module] = targets - {module, *ancestors(module)}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each group of modules that import each
    other."""
    return [cycle_within(graph, set(group)) for group in cyclic_groups(graph)]


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module ``start`` imports, directly or not."""
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        for step in graph.get(frontier.pop(), set()) - seen:
            seen.add(step)
            frontier.append(step)
    return seen


def cyclic_groups(graph: Graph) -> list[list[str]]:
    """The groups of modules each of which imports (directly or not) every other one
    (the strongly connected components with a cycle); a hundred modules is small enough
    to compare what each one reaches."""
    reach = {module: reachable(graph, module) for module in graph}
    groups: list[list[str]] = []
    placed: set[str] = set()
    for module in sorted(graph):
        if module in reach[module] and module not in placed:
            group = sorted(other for other in reach[module] if module in reach[other])
            placed.update(group)
            groups.append(group)
    return groups


def cycle_within(graph: Graph, group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module, by breadth-first search."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for step in sorted(graph[node] & group):
                if step == start:
                    return [*path_to(came_from, node, start), start]
                if step not in came_from:
                    came_from[step] = node
                    following.append(step)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def path_to(came_from: Mapping[str, str], node: str, start: str) -> list[str]:
    path = [node]
    while path[-1] != start:
        path.append(came_from[path[-1]])
    return path[::-1]


def describe(graph: Graph) -> str:
    """Each group of modules that import each other, and one cycle through it."""
    groups = [set(group) for group in cyclic_groups(graph)]
    return "\n".join(
        f"{len(group)} modules import each other: {', '.join(sorted(group))}\n"
        f"  e.g. {' -> '.join(cycle_within(graph, group))}"
        for group in groups
    )


def test_the_package_imports_without_a_cycle() -> None:
    # Given every import of every module (module level, TYPE_CHECKING, in functions)
    graph = import_graph(module_files(package_folders(ROOT)))
    assert len(graph) > 50
    assert "pynomaly_workers.tasks.detection" in graph

    # Then no module imports, directly or not, a module that imports it
    cycles = find_cycles(graph)
    assert cycles == [], f"import cycles:\n{describe(graph)}"


def write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_a_function_local_import_is_named(tmp_path: Path) -> None:
    # Given a -> b at module level, b -> c in a function, c -> a relatively
    write(
        tmp_path,
        {
            "pyproject.toml": '[tool.setuptools]\npackage-dir = { "pynomaly_workers" = "w" }\n',
            "w/__init__.py": "",
            "w/a.py": "from pynomaly_workers.b import thing\n",
            "w/b.py": "def f():\n    from pynomaly_workers import c\n",
            "w/c.py": "from . import a\n",
            "w/d.py": "import pynomaly_workers.a\n",
        },
    )

    # When the graph is built
    graph = import_graph(module_files(package_folders(tmp_path)))

    # Then the cycle is found and named, and d (outside it) is not in it
    assert find_cycles(graph) == [
        ["pynomaly_workers.a", "pynomaly_workers.b", "pynomaly_workers.c", "pynomaly_workers.a"]
    ]


def test_importing_a_submodule_runs_its_package(tmp_path: Path) -> None:
    # Given a package whose __init__ imports a module that imports one of its submodules
    write(
        tmp_path,
        {
            "pyproject.toml": '[tool.setuptools]\npackage-dir = { "pynomaly_workers" = "w" }\n',
            "w/__init__.py": "",
            "w/p/__init__.py": "from pynomaly_workers import q\n",
            "w/p/s.py": "from pynomaly_workers.p import t\n",
            "w/p/t.py": "",
            "w/q.py": "from pynomaly_workers.p.s import x\n",
        },
    )

    graph = import_graph(module_files(package_folders(tmp_path)))

    # Then q -> p.s runs p's __init__, which imports q; p.s -> p (its own package) does not
    assert "pynomaly_workers.p" in graph["pynomaly_workers.q"]
    assert "pynomaly_workers.p" not in graph["pynomaly_workers.p.s"]
    assert find_cycles(graph) == [
        ["pynomaly_workers.p", "pynomaly_workers.q", "pynomaly_workers.p"]
    ]
