"""The sans-I/O check shared by the packages that must stay free of I/O (`dbqueue.protocol`, `dbqueue.sqs`)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

IO_MODULES = frozenset({"socket", "asyncio", "selectors", "ssl"})


def forbidden_imports(source: str, forbidden: Iterable[str], filename: str = "<source>") -> list[str]:
    """Return the modules of ``forbidden`` that ``source`` imports, anywhere in it (functions included)."""
    banned = set(forbidden)
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.extend(name for name in names if name.split(".")[0] in banned)
    return found


def modules_of(package: ModuleType) -> list[Path]:
    """Every module file of ``package``, subpackages included."""
    assert package.__file__ is not None
    return sorted(Path(package.__file__).parent.rglob("*.py"))


def modules_reached_outside(package: ModuleType) -> set[Path]:
    """The module files outside ``package`` that its modules import relatively (``from ..errors import X``)."""
    outside = set()
    for path in modules_of(package):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                outside.add(base.joinpath(*node.module.split(".")).with_suffix(".py"))
    return outside
