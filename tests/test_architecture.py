"""The package's architecture, checked from its source: no import circle, no import up the layers, no I/O in
the queue logic, and a client import that loads no server.

Every module under ``src/dbqueue`` is parsed with `ast` and every import in it
is read: at the top, under ``if TYPE_CHECKING:`` and inside functions alike (a
lazy import still ties two modules together). ``from P import n`` depends on
the module ``P.n`` when there is one, else on ``P``; importing a submodule does
not count as depending on its package's ``__init__``.

The layers, lowest first: errors (with _version) < protocol < core < store <
server < cli. A module may import its own layer and those below it. Beside the
chain, client may import errors and protocol; loadtest and report may import
client and protocol too, and so may integrations (the Celery and Dramatiq
transports, which are clients); the package face (``dbqueue/__init__.py``)
imports client, errors and protocol (whose public types it exports) eagerly
and anything else only lazily; and no module imports the face.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = "dbqueue"

# The chain of layers: a module may import its own layer and those below it.
# sqs (the SQS-compatible front end, being written) stands with the server until its place is decided.
LAYERS = {"_version": 0, "errors": 0, "protocol": 1, "core": 2, "store": 3, "server": 4, "sqs": 4, "cli": 5}
# Parts beside the chain, and every part each may import (besides its own modules).
BESIDE = {
    "client": {"_version", "errors", "protocol"},
    "loadtest": {"_version", "errors", "protocol", "client", "report"},
    "report": {"_version", "errors", "protocol", "client", "loadtest"},
    "integrations": {"_version", "errors", "protocol", "client"},
}
FACE_EAGER = {"_version", "client", "errors", "protocol"}  # what `import dbqueue` may load at once
NO_IO_IN_CORE = {"asyncio", "socket", "selectors", "ssl", "sqlite3"}
# What a program that only uses the clients must not load with `import dbqueue`.
NOT_FOR_CLIENTS = (
    "dbqueue.server", "dbqueue.core", "dbqueue.store",
    "prometheus_client", "sqlite3", "_sqlite3", "uvloop", "click", "rich",
)  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, a dbqueue one or the top-level name of another
    line: int
    lazy: bool  # under `if TYPE_CHECKING:` or inside a function
    internal: bool

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}{', lazy' if self.lazy else ''}) imports {self.target}"


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, for its __init__)."""
    modules = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], lazy: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement in ``body``, nested ones included, with whether it runs only lazily."""
    for node in body:
        yield node, lazy
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _statements(node.body, True)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.body, True)
            yield from _statements(node.orelse, lazy)
        else:
            for name in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, name, []), lazy)
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body, lazy)
            for case in getattr(node, "cases", []):
                yield from _statements(case.body, lazy)


def imports_of(module: str) -> list[Import]:
    """Every import in ``module``'s source, resolved to the modules it loads."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, lazy in _statements(ast.parse(path.read_text(), str(path)).body, False):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names
            ]
        else:
            continue
        for target in dict.fromkeys(targets):
            internal = target == PACKAGE or target.startswith(PACKAGE + ".")
            name = target if internal else target.partition(".")[0]
            found.append(Import(module, name, node.lineno, lazy, internal))
    return found


ALL_IMPORTS = [found for module in MODULES for found in imports_of(module)]


def part(module: str) -> str:
    """The part of the package a module belongs to: ``dbqueue.server.app`` -> ``server``, the face -> ""."""
    return module.split(".")[1] if "." in module else ""


def test_every_part_of_the_package_has_a_place_in_the_layers() -> None:
    unplaced = sorted({part(module) for module in MODULES} - LAYERS.keys() - BESIDE.keys() - {""})
    assert not unplaced, f"give {unplaced} a place in LAYERS or BESIDE (tests/test_architecture.py)"


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for found in ALL_IMPORTS:
        if found.internal and found.target in MODULES and found.target != found.module:
            graph[found.module].add(found.target)
    circles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert not circles, "import circles:\n" + "\n".join(
        "  " + " -> ".join(circle_through(graph, component)) for component in circles
    )


def test_no_import_runs_up_the_layers() -> None:
    wrong = []
    for found in ALL_IMPORTS:
        if not found.internal:
            continue
        source, target = part(found.module), part(found.target)
        if source == target:
            continue
        if target == "":
            allowed = False  # the face is for users: nothing inside the package leans on it
        elif source == "":
            allowed = target in FACE_EAGER or found.lazy
        elif source in BESIDE:
            allowed = target in BESIDE[source]
        elif source == "cli":
            allowed = True
        else:
            allowed = target in LAYERS and LAYERS[target] <= LAYERS.get(source, -1)
        if not allowed:
            wrong.append(str(found))
    assert not wrong, "imports against the layers:\n" + "\n".join(f"  {line}" for line in wrong)


def test_the_queue_logic_imports_no_io() -> None:
    wrong = [str(found) for found in ALL_IMPORTS if part(found.module) == "core" and found.target in NO_IO_IN_CORE]
    assert not wrong, "I/O in dbqueue.core:\n" + "\n".join(f"  {line}" for line in wrong)


def test_a_client_import_loads_no_server() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import dbqueue, sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    unwanted = sorted(
        module for module in loaded if any(module == name or module.startswith(name + ".") for name in NOT_FOR_CLIENTS)
    )
    assert not unwanted, f"`import dbqueue` loads {unwanted}"


@pytest.mark.parametrize("name", ["Server", "Limits"])
def test_the_server_names_are_still_there_on_first_use(name: str) -> None:
    code = f"import dbqueue, sys; from dbqueue import {name}; print({name}.__module__, 'dbqueue.server' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.split() == [f"dbqueue.server.{'app' if name == 'Server' else 'limits'}", "True"]


# --- graph helpers -------------------------------------------------------------------------------------


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def circle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One circle inside ``component`` (a strongly connected component), as a path back to its start."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for successor in sorted(graph[node] & members):
            if successor == start:
                return [*paths[node], start]
            if successor not in paths:
                paths[successor] = [*paths[node], successor]
                queue.append(successor)
    return component
