"""Authentication tokens, TLS contexts and handshakes, and the loopback check behind the server's safe defaults.

Theory of operation: TLS handshakes
-----------------------------------
A TLS connection costs the server memory from its first byte (the TLS state
and its buffers), while the stranger at the other end has proved nothing. So
the server does not let asyncio run handshakes on its own (``create_server(ssl=
...)`` would start every one at accept, with no quota, and hand the connection
to its protocol only after the handshake): it listens in plain TCP and hands
each accepted connection to a `TlsGate`, which

* refuses it (closes it at once, before any TLS state exists) while
  ``limit`` handshakes are already in progress, so strangers cost at most
  ``limit`` handshakes' memory however many connect;
* else runs its handshake (``loop.start_tls``) with a deadline of ``timeout``
  seconds, the handshake counting against the quota until it ends, by success,
  failure or deadline;
* and on success gives the connection to a protocol of the server's
  (`make_protocol`: a `Session`), which counts against the server's connection
  limit from then on, like a plain TCP connection.

The handshake's end and the handover are not one step: the TLS transport may
deliver the client's first bytes (sent right after its last handshake message)
before the code that awaited the handshake runs again. Until the handover the
connection's protocol is the gate's `_Handshake`, which keeps those bytes, and
an end of file or a loss, and passes them on in order.

Memory. Each handshake's TLS state and buffers are small allocations spread
over the C heap, and a heap gives back only its top: once thousands of
handshakes have come and gone, most of their memory stays with the process,
free but resident, between the allocations that outlived them. So after
`TRIM_AFTER` handshakes have ended, the gate asks the C library to return
free pages to the system (glibc's ``malloc_trim``; nothing elsewhere), a second
later so that a flood's tail goes with it, and no more often than every
`TRIM_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

__all__ = [
    "read_token",
    "server_tls_context",
    "is_loopback",
    "TlsGate",
    "MAX_TOKEN_BYTES",
    "PRE_AUTH_MAX_BODY",
]

log = logging.getLogger("dbqueue.server")

TRIM_AFTER = 256  # handshakes ended since the last trim of the C heap that make another one worth it
TRIM_INTERVAL = 5.0  # seconds between two trims at least (one takes milliseconds per 100 MiB returned)

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


class TlsGate:
    """TLS for a plain TCP listener: at most ``limit`` handshakes at once, each given ``timeout`` seconds.

    Call it as the listener's protocol factory. ``make_protocol`` makes the
    protocol a connection gets once its handshake succeeded (its
    ``connection_made`` is called then, with the TLS transport). `in_progress`
    counts the handshakes under way; `refused` those closed because the quota
    was full; `close` ends every handshake under way (a server stopping).
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        timeout: float,
        limit: int,
        make_protocol: Callable[[], asyncio.Protocol],
    ) -> None:
        self.context = context
        self.timeout = timeout
        self.limit = limit
        self.make_protocol = make_protocol
        self.handshakes: set[_Handshake] = set()
        self.refused = 0
        self._refused_unlogged = 0
        self._logged_at = 0.0
        self._ended = 0  # handshakes ended since the last trim
        self._trim: asyncio.TimerHandle | None = None
        self._trimmed_at = -TRIM_INTERVAL

    def __call__(self) -> asyncio.Protocol:
        return _Handshake(self)

    @property
    def in_progress(self) -> int:
        """Handshakes under way (accepted, not yet succeeded, failed or timed out)."""
        return len(self.handshakes)

    def admit(self, transport: asyncio.Transport, handshake: _Handshake) -> None:
        """Start the handshake of a connection just accepted, or close it if the quota is full."""
        if len(self.handshakes) >= self.limit:
            transport.abort()  # no TLS state was made for it: it cost a socket for one loop iteration
            self.refused += 1
            self._refused_unlogged += 1
            now = time.monotonic()
            if now - self._logged_at >= 1.0:  # one line a second at most, however hard the flood
                log.warning(
                    "refusing connections: %d TLS handshakes under way, the limit (max_unauthenticated);"
                    " %d refused since the last such line, %d in all",
                    self.limit,
                    self._refused_unlogged,
                    self.refused,
                )
                self._logged_at = now
                self._refused_unlogged = 0
            return
        self.handshakes.add(handshake)
        handshake.start(transport)

    def ended(self, handshake: _Handshake) -> None:
        """A handshake ended (done, failed or abandoned): it no longer counts against the quota."""
        self.handshakes.discard(handshake)
        self._ended += 1
        if self._ended >= TRIM_AFTER and self._trim is None and _malloc_trim() is not None:
            loop = asyncio.get_running_loop()
            delay = max(1.0, self._trimmed_at + TRIM_INTERVAL - loop.time())
            self._trim = loop.call_later(delay, self._trim_heap, loop)

    def _trim_heap(self, loop: asyncio.AbstractEventLoop) -> None:
        self._trim = None
        self._ended = 0
        self._trimmed_at = loop.time()
        trim = _malloc_trim()
        if trim is not None:
            trim(0)

    def close(self) -> None:
        """End every handshake under way: their connections close, and none is handed over."""
        for handshake in list(self.handshakes):
            handshake.abandon()
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None


class _Handshake(asyncio.Protocol):
    # A TLS connection's protocol until its handshake succeeds; see the theory of operation.
    __slots__ = ("gate", "raw", "steps", "protocol", "early", "eof", "lost")

    def __init__(self, gate: TlsGate) -> None:
        self.gate = gate
        self.raw: asyncio.Transport | None = None
        self.steps: Coroutine[Any, Any, asyncio.Transport | None] | None = None  # start_tls, until it ends
        self.protocol: asyncio.Protocol | None = None  # the connection's own protocol, once handed over
        self.early: list[bytes] = []  # what came between the handshake and the handover
        self.eof = False
        self.lost: list[Exception | None] = []  # [exc] once the connection was lost before the handover

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.gate.admit(cast(asyncio.Transport, transport), self)

    def start(self, raw: asyncio.Transport) -> None:
        # start_tls is driven here by hand, not by a Task: its first part, which puts TLS between
        # the socket and this protocol, must run now, inside connection_made. uvloop starts reading
        # as soon as connection_made returns, whatever the protocol paused, and a Task would run
        # one loop iteration later: bytes read before TLS is in place would be lost to it.
        self.raw = raw
        gate = self.gate
        loop = asyncio.get_running_loop()
        self.steps = loop.start_tls(raw, self, gate.context, server_side=True, ssl_handshake_timeout=gate.timeout)
        self._step()

    def _step(self, _: object = None) -> None:
        # Run start_tls on to its next wait (it awaits futures only), or to its end.
        steps = self.steps
        if steps is None:  # abandoned
            return
        try:
            awaited = steps.send(None)
        except StopIteration as done:
            self._end()
            self._hand_over(done.value)
        except Exception as exc:  # the peer's failure (a timeout, a reset, bad TLS), never the server's
            self._end()
            log.debug("TLS handshake with %s failed: %r", self._peer(), exc)
        else:
            awaited.add_done_callback(self._step)

    def _end(self) -> None:
        self.steps = None
        self.gate.ended(self)

    def abandon(self) -> None:
        steps = self.steps
        self._end()
        if steps is not None:
            steps.close()  # start_tls closes what it opened
        if self.raw is not None:
            self.raw.abort()

    def _hand_over(self, transport: asyncio.Transport | None) -> None:
        # Only bytes of a finished handshake may reach the connection's protocol: a handshake
        # ended by an abort also returns a transport, closed, without the cipher agreed.
        if transport is None or transport.get_extra_info("cipher") is None:
            if self.raw is not None:
                self.raw.abort()
            log.debug("TLS handshake with %s ended before it finished", self._peer())
            return
        protocol = self.protocol = self.gate.make_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        early, self.early = self.early, []
        for data in early:
            protocol.data_received(data)
        if self.eof:
            protocol.eof_received()
        if self.lost:
            protocol.connection_lost(self.lost[0])

    def _peer(self) -> object:
        return None if self.raw is None else self.raw.get_extra_info("peername")

    # The TLS transport's callbacks between the handshake and the handover; those already
    # scheduled for this protocol when the handover happens go on to the connection's.
    def data_received(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.data_received(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        if self.protocol is not None:
            return self.protocol.eof_received()
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.protocol is not None:
            self.protocol.connection_lost(exc)
        else:
            self.lost.append(exc)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # glibc's malloc_trim, among the symbols the process has loaded; None where the C library has none.
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim
