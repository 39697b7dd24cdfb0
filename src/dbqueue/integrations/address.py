"""``dbqueue://`` URLs: where a framework's broker connects, with what token and what TLS.

A URL is ``dbqueue://[:TOKEN@]HOST[:PORT][?tls=1]`` (``dbqueues://`` is the same
with TLS on). The token may also come as an option (``token``), which wins over
the URL's; TLS may be an option too (``tls``: True for the system's trusted
CAs, or an `ssl.SSLContext` for an own CA or a client certificate). The port
defaults to 3003, the server's.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..client import Client

__all__ = ["DEFAULT_PORT", "Address", "parse_url"]

DEFAULT_PORT = 3003
SCHEMES = ("dbqueue", "dbqueues")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class Address:
    """Where and how to connect: ``host``, ``port``, the ``token`` (None: none) and ``tls``."""

    host: str
    port: int
    token: str | None = None
    tls: bool | ssl.SSLContext | None = None
    timeout: float = 10.0

    def connect(self) -> Client:
        """Return a connected, thread-safe `Client`. Raises `ConnectionLost`, `AuthenticationFailed`,
        `ssl.SSLError`."""
        return Client.connect((self.host, self.port), self.timeout, token=self.token, tls=self.tls)

    def __str__(self) -> str:
        return f"{'dbqueues' if self.tls else 'dbqueue'}://{self.host}:{self.port}"


def parse_url(url: str, options: Mapping[str, Any] | None = None) -> Address:
    """Return the `Address` that ``url`` and ``options`` (``token``, ``tls``, ``connect_timeout``) name.

    Raises `ValueError` for another scheme or a port that is not a number.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"a dbqueue URL starts with dbqueue:// or dbqueues://, got {url!r}")
    options = options or {}
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    tls: bool | ssl.SSLContext | None = parts.scheme == "dbqueues" or query.get("tls", "").lower() in _TRUE
    if options.get("tls") is not None:
        tls = options["tls"]
    token = options.get("token") or (unquote(parts.password) if parts.password else None)
    return Address(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or DEFAULT_PORT,
        token=token,
        tls=tls or None,
        timeout=float(options.get("connect_timeout", 10.0)),
    )
