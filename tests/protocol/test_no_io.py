"""The protocol package stays sans-I/O: no module in it imports a socket or an event loop."""

from __future__ import annotations

from pathlib import Path

import dbqueue.protocol
from no_io import IO_MODULES, forbidden_imports, modules_of, modules_reached_outside

FORBIDDEN = IO_MODULES


def test_the_walk_sees_every_protocol_module() -> None:
    names = {path.name for path in modules_of(dbqueue.protocol)}
    assert {"__init__.py", "frames.py", "layouts.py", "messages.py", "codecs.py", "connection.py"} <= names


def test_protocol_package_imports_no_io() -> None:
    offenders = {
        str(path): found
        for path in modules_of(dbqueue.protocol)
        if (found := forbidden_imports(path.read_text(encoding="utf-8"), FORBIDDEN, str(path)))
    }
    assert offenders == {}


def test_modules_the_protocol_reaches_outside_its_package_import_no_io() -> None:
    """The protocol imports `..errors`: that module must stay I/O-free too."""
    package = Path(dbqueue.protocol.__file__).parent
    outside = modules_reached_outside(dbqueue.protocol)
    assert outside, "expected the protocol to import the shared error tree"
    for path in outside:
        assert package not in path.parents
        assert forbidden_imports(path.read_text(encoding="utf-8"), FORBIDDEN, str(path)) == []


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
    assert forbidden_imports(source, FORBIDDEN) == ["asyncio", "ssl", "socket", "selectors", "asyncio.events"]
    assert forbidden_imports("import struct\nfrom . import frames\nfrom ..errors import X\n", FORBIDDEN) == []
