"""Authentication tokens, TLS contexts and the loopback check behind the server's safe defaults."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

__all__ = ["read_token", "server_tls_context", "is_loopback", "MAX_TOKEN_BYTES", "PRE_AUTH_MAX_BODY"]

# Before authentication a connection's first frame may carry at most a Hello: its 2-byte
# version and a token. Bounding it keeps an unauthenticated peer from making the server
# buffer a full-size message.
MAX_TOKEN_BYTES = 4094
PRE_AUTH_MAX_BODY = 2 + MAX_TOKEN_BYTES


def read_token(path: str | None, environment_value: str | None) -> bytes | None:
    """The token from ``path`` (surrounding whitespace stripped) or else from the environment; None if neither.

    Raises `ValueError` for an empty token (an empty secret would let anyone in) or one over
    `MAX_TOKEN_BYTES`.
    """
    if path is not None:
        token = Path(path).read_bytes().strip()
    elif environment_value is not None:
        token = environment_value.strip().encode()
    else:
        return None
    where = "in " + path if path else "in DBQUEUE_AUTH_TOKEN"
    if not token:
        raise ValueError(f"the token {where} is empty")
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"the token {where} is {len(token)} bytes long; at most {MAX_TOKEN_BYTES}")
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
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
