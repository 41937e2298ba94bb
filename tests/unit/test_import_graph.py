"""The import graph keeps the layers of DESIGN.md: no client -> service import, no cycles.

    .venv/bin/pytest tests/unit/test_import_graph.py -q

Every `import` in a file counts, wherever it stands: at the top, inside a function, under
`if TYPE_CHECKING:`. A lazy import that hides a cycle is still a cycle: the two packages
cannot be understood, tested or moved apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where each top-level package's source lies (the client's is one folder down).
PACKAGES = {
    "protocol": ROOT / "protocol",
    "services": ROOT / "services",
    "embedded": ROOT / "embedded",
    "cai": ROOT / "client" / "cai",
}
# What each top-level package may import (besides itself and third-party code).
ALLOWED = {
    "protocol": set[str](),
    "embedded": set[str](),  # starts the services as command lines, never imports them
    "services": {"protocol"},
    "cai": {"protocol", "embedded"},
}

Graph = dict[str, dict[str, list[str]]]  # module -> imported module -> ["file:line", ...]


def module_name(path: Path, package_dir: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in `tree`; `from a import
    b` yields `a.b` (which may name a module, or only something defined in `a`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source, node.lineno
            for alias in node.names:
                yield f"{source}.{alias.name}", node.lineno


def module_graph(package_dirs: dict[str, Path]) -> Graph:
    """module -> {imported module of these packages -> where}, modules as dotted names."""
    files = {
        module_name(path, folder): path
        for folder in package_dirs.values()
        for path in sorted(folder.rglob("*.py"))
    }
    graph: Graph = {}
    for module, path in files.items():
        edges = graph.setdefault(module, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for target, line in imported(tree, module, path.name == "__init__.py"):
            if target.split(".")[0] not in package_dirs:
                continue
            # `from a import b`: the module a.b if there is one, else a (b is defined in a).
            while target not in files and "." in target:
                target = target.rsplit(".", 1)[0]
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            places = edges.setdefault(target, [])
            if where not in places:  # `from a import b, c` is one import of a
                places.append(where)
    return graph


def collapse(graph: Graph, depth: int) -> Graph:
    """The graph between packages: each module named by its first `depth` dotted parts."""
    out: Graph = {}
    for module, edges in graph.items():
        source = ".".join(module.split(".")[:depth])
        node = out.setdefault(source, {})
        for target, where in edges.items():
            target = ".".join(target.split(".")[:depth])
            if target != source:
                places = node.setdefault(target, [])
                places.extend(w for w in where if w not in places)
    return out


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(graph: Graph, component: list[str]) -> str:
    lines = [" <-> ".join(component)]
    for source in component:
        for target in component:
            for where in graph.get(source, {}).get(target, []):
                lines.append(f"  {source} -> {target} at {where}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return module_graph(PACKAGES)


def test_the_client_imports_no_service(graph: Graph) -> None:
    reached = [
        f"{module} imports {target} at {where}"
        for module, edges in graph.items()
        if module.split(".")[0] == "cai"
        for target, places in edges.items()
        if target.split(".")[0] == "services"
        for where in places
    ]
    assert not reached, (
        "the client talks to the services over HTTP only (what both sides need lies in "
        "protocol/ or embedded/):\n" + "\n".join(reached)
    )


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_top_level_package_imports_only_the_layers_below_it(
    graph: Graph, package: str
) -> None:
    top = collapse(graph, 1)
    extra = set(top.get(package, {})) - ALLOWED[package]
    assert not extra, "\n".join(
        f"{package} may import {sorted(ALLOWED[package]) or 'none of ours'}, but imports "
        f"{target} at {', '.join(top[package][target])}"
        for target in sorted(extra)
    )


def test_the_client_packages_import_each_other_without_a_cycle(graph: Graph) -> None:
    client = {module: edges for module, edges in graph.items() if module.split(".")[0] == "cai"}
    packages = collapse(client, 2)
    assert {"cai.pipeline", "cai.evaluation", "cai.stages", "cai.report"} <= set(packages)
    found = cycles(packages)
    assert not found, "import cycles between client packages:\n" + "\n".join(
        describe(packages, component) for component in found
    )


def test_no_client_module_is_its_own_import_cycle(graph: Graph) -> None:
    client = {module: edges for module, edges in graph.items() if module.split(".")[0] == "cai"}
    # A package's __init__ re-exporting its own modules is not a cycle between modules.
    within = {
        module: {t: w for t, w in edges.items() if not module.startswith(f"{t}.")}
        for module, edges in client.items()
    }
    found = cycles(within)
    assert not found, "import cycles between client modules:\n" + "\n".join(
        describe(within, component) for component in found
    )


def test_a_cycle_hidden_in_a_function_level_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "app"
    for folder in ("a", "b"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "a" / "one.py").write_text("from app.b.two import g\n")
    (package / "b" / "two.py").write_text(
        "def g() -> None:\n    from app.a import one  # lazy: hides the cycle at import time\n"
    )
    packages = collapse(module_graph({"app": package}), 2)
    assert cycles(packages) == [["app.a", "app.b"]]
