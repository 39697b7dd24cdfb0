"""The SQS layer stays sans-I/O: no module of dbqueue.sqs imports a socket, an event loop or an HTTP stack."""

from __future__ import annotations

from pathlib import Path

import dbqueue.sqs
from no_io import IO_MODULES, forbidden_imports, modules_of, modules_reached_outside

FORBIDDEN = IO_MODULES | {"aiohttp", "http", "urllib3", "requests", "uvloop"}


def test_the_walk_sees_every_module() -> None:
    names = {path.name for path in modules_of(dbqueue.sqs)}
    assert {"__init__.py", "wire.py", "decoding.py", "signature.py", "receipts.py", "digests.py"} <= names


def test_the_sqs_package_imports_no_io() -> None:
    offenders = {
        str(path): found
        for path in modules_of(dbqueue.sqs)
        if (found := forbidden_imports(path.read_text(encoding="utf-8"), FORBIDDEN, str(path)))
    }
    assert offenders == {}


def test_modules_it_reaches_outside_its_package_import_no_io() -> None:
    """dbqueue.sqs imports the shared error tree (`..errors`): that module must stay I/O-free too."""
    package = Path(dbqueue.sqs.__file__).parent
    outside = modules_reached_outside(dbqueue.sqs)
    assert outside, "expected the SQS layer to import the shared error tree"
    for path in outside:
        assert package not in path.parents
        assert forbidden_imports(path.read_text(encoding="utf-8"), FORBIDDEN, str(path)) == []


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
    expected = ["asyncio", "ssl", "socket", "aiohttp", "http.client", "asyncio.events"]
    assert forbidden_imports(source, FORBIDDEN) == expected
    assert forbidden_imports("import hmac\nfrom urllib.parse import quote\nfrom ..errors import X\n", FORBIDDEN) == []
