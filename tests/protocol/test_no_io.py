"""The protocol package stays sans-I/O: no module in it imports a socket or an event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import dbqueue.protocol

FORBIDDEN = {"socket", "asyncio", "selectors", "ssl"}


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """Return the forbidden modules ``source`` imports, anywhere in it (functions included)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.extend(name for name in names if name.split(".")[0] in FORBIDDEN)
    return found


def protocol_modules() -> list[Path]:
    return sorted(Path(dbqueue.protocol.__file__).parent.rglob("*.py"))


def test_the_walk_sees_every_protocol_module() -> None:
    names = {path.name for path in protocol_modules()}
    assert {"__init__.py", "frames.py", "layouts.py", "messages.py", "codecs.py", "connection.py"} <= names


def test_protocol_package_imports_no_io() -> None:
    offenders = {
        str(path): found
        for path in protocol_modules()
        if (found := forbidden_imports(path.read_text(encoding="utf-8"), str(path)))
    }
    assert offenders == {}


def test_modules_the_protocol_reaches_outside_its_package_import_no_io() -> None:
    """The protocol imports `..errors`: that module must stay I/O-free too."""
    package = Path(dbqueue.protocol.__file__).parent
    outside = set()
    for path in protocol_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                outside.add(base.joinpath(*node.module.split(".")).with_suffix(".py"))
    assert outside, "expected the protocol to import the shared error tree"
    for path in outside:
        assert package not in path.parents
        assert forbidden_imports(path.read_text(encoding="utf-8"), str(path)) == []


def test_the_checker_catches_every_form_of_import() -> None:
    source = """
import os
import asyncio
import ssl as tls
from socket import socket
from selectors import DefaultSelector
def later():
    import asyncio.events
"""
    assert forbidden_imports(source) == ["asyncio", "ssl", "socket", "selectors", "asyncio.events"]
    assert forbidden_imports("import struct\nfrom . import frames\nfrom ..errors import X\n") == []
