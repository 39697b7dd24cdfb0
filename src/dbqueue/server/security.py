"""Authentication tokens, TLS contexts and the loopback check behind the server's safe defaults."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

__all__ = ["read_token", "server_tls_context", "is_loopback"]


def read_token(path: str | None, environment_value: str | None) -> bytes | None:
    """The token from ``path`` (surrounding whitespace stripped) or else from the environment; None if neither.

    Raises `ValueError` for an empty token: an empty secret would let anyone in.
    """
    if path is not None:
        token = Path(path).read_bytes().strip()
    elif environment_value is not None:
        token = environment_value.strip().encode()
    else:
        return None
    if not token:
        raise ValueError(f"the token {'in ' + path if path else 'in DBQUEUE_AUTH_TOKEN'} is empty")
    return token


def server_tls_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+); with ``client_ca`` clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves only to loopback addresses."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
