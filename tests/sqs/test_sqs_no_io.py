"""The SQS layer stays sans-I/O: no module of dbqueue.sqs imports a socket, an event loop or an HTTP stack."""

from __future__ import annotations

import ast
from pathlib import Path

import dbqueue.sqs

FORBIDDEN = {"socket", "asyncio", "selectors", "ssl", "aiohttp", "http", "urllib3", "requests", "uvloop"}


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


def sqs_modules() -> list[Path]:
    return sorted(Path(dbqueue.sqs.__file__).parent.rglob("*.py"))


def test_the_walk_sees_every_module() -> None:
    names = {path.name for path in sqs_modules()}
    assert {"__init__.py", "wire.py", "decoding.py", "signature.py", "receipts.py", "digests.py"} <= names


def test_the_sqs_package_imports_no_io() -> None:
    offenders = {
        str(path): found
        for path in sqs_modules()
        if (found := forbidden_imports(path.read_text(encoding="utf-8"), str(path)))
    }
    assert offenders == {}


def test_modules_it_reaches_outside_its_package_import_no_io() -> None:
    """dbqueue.sqs imports the shared error tree (`..errors`): that module must stay I/O-free too."""
    package = Path(dbqueue.sqs.__file__).parent
    outside = set()
    for path in sqs_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                outside.add(base.joinpath(*node.module.split(".")).with_suffix(".py"))
    assert outside, "expected the SQS layer to import the shared error tree"
    for path in outside:
        assert package not in path.parents
        assert forbidden_imports(path.read_text(encoding="utf-8"), str(path)) == []


def test_the_checker_catches_every_form_of_import() -> None:
    source = """
import os
import asyncio
import ssl as tls
from socket import socket
from aiohttp import web
import http.client
def later():
    import asyncio.events
"""
    assert forbidden_imports(source) == ["asyncio", "ssl", "socket", "aiohttp", "http.client", "asyncio.events"]
    assert forbidden_imports("import hmac\nfrom urllib.parse import quote\nfrom ..errors import X\n") == []
