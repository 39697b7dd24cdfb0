"""Who may use the console: the server's token, exchanged once for a session cookie; and what guards each call.

Theory of operation
-------------------
The console is guarded by the server's own token (``--auth-token-file``,
``DBQUEUE_AUTH_TOKEN``), the one every native connection presents in its
Hello. A browser presents it once, in the login form; `Sessions.login`
compares it in constant time and opens a `ConsoleSession`: a random id
(256 bits) sent back as a cookie that is ``HttpOnly`` (no script reads it,
so an injected one could not steal it), ``SameSite=Strict`` (no other site's
page makes the browser send it), ``Path=/`` and, over TLS, ``Secure``. Every
API call must carry it. Logging out ends the session on the server, not just
in the browser. Sessions end after `IDLE_LIFETIME` without a call and after
`MAX_LIFETIME` in any case; at most `MAX_SESSIONS` are kept (the oldest goes
first), so logins cannot grow the server's memory. A wrong token is answered
only after `FAILED_LOGIN_DELAY`, one at a time per listener (`Sessions.refusing`),
so guessing costs a second a guess.

A server without a token serves the console only when its HTTP listener is
bound to loopback (`Sessions.allowed`; the rule of the native port and of the
SQS API, without an ``--insecure`` escape: a console off loopback needs a
token). Then every browser that asks is given a session without a login, and
the rest below still holds.

Cross-site requests. Every call that changes something is a ``POST`` with a
JSON body (``Content-Type: application/json``, which another site's form
cannot send and its script cannot send without a CORS preflight this server
never grants) carrying the session's *CSRF token* in the
``X-Dbqueue-Csrf`` header, which only a page of the console has read (from
``/console/api/session``, a response no other origin may read); an
``Origin`` header, when the browser sends one, must name this very server.
SameSite=Strict alone would keep another site's requests from carrying the
cookie in current browsers; the token and the origin check also hold in older
ones. Without a token on the server, a page of another site could still
reach the loopback listener by *DNS rebinding* (its own name pointed at
127.0.0.1, so the browser thinks it same-origin): then the ``Host`` header
names that site, and `host_allowed` refuses every request whose ``Host`` is
not an address or ``localhost``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "FAILED_LOGIN_DELAY",
    "IDLE_LIFETIME",
    "MAX_LIFETIME",
    "MAX_SESSIONS",
    "ConsoleSession",
    "Sessions",
    "host_allowed",
]

COOKIE = "dbqueue_console"
CSRF_HEADER = "X-Dbqueue-Csrf"
IDLE_LIFETIME = 12 * 3600.0  # seconds a session lives without a call
MAX_LIFETIME = 7 * 24 * 3600.0  # seconds a session lives at most
MAX_SESSIONS = 1000
FAILED_LOGIN_DELAY = 1.0  # seconds before a wrong token is answered


@dataclass(slots=True)
class ConsoleSession:
    """One browser's login: its cookie value ``id``, its ``csrf`` token, when it began and was last used."""

    id: str
    csrf: str
    began: float
    used: float = field(default=0.0)


class Sessions:
    """The console's sessions, for a server whose token is ``token`` (None: no token, loopback only).

    ``loopback`` says whether the listener is bound to loopback only; ``clock``
    is monotonic seconds.
    """

    def __init__(self, token: bytes | None, loopback: bool, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self.loopback = loopback
        self.clock = clock
        self.sessions: OrderedDict[str, ConsoleSession] = OrderedDict()  # oldest first
        self.refusing = False  # a wrong token is being answered (after its delay)

    @property
    def allowed(self) -> bool:
        """Whether the console is served at all: with a token, or on a loopback listener."""
        return self.token is not None or self.loopback

    @property
    def login_required(self) -> bool:
        return self.token is not None

    def check(self, presented: str) -> bool:
        """Whether ``presented`` is the server's token (in constant time; False when the server has none)."""
        if self.token is None:
            return False
        return hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), self.token)

    def open(self) -> ConsoleSession:
        """Open a session (after a login, or for anyone on a loopback server without a token)."""
        now = self.clock()
        session = ConsoleSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self.sessions[session.id] = session
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def find(self, cookie: str | None) -> ConsoleSession | None:
        """The live session whose id is ``cookie`` (marked used now), or None."""
        if not cookie:
            return None
        session = self.sessions.get(cookie)
        if session is None:
            return None
        now = self.clock()
        if now - session.used > IDLE_LIFETIME or now - session.began > MAX_LIFETIME:
            del self.sessions[cookie]
            return None
        session.used = now
        return session

    def close(self, session: ConsoleSession) -> None:
        """End ``session`` (logout)."""
        self.sessions.pop(session.id, None)

    def close_all(self) -> None:
        self.sessions.clear()


def csrf_ok(session: ConsoleSession, presented: str | None) -> bool:
    """Whether ``presented`` (the request's `CSRF_HEADER`) is ``session``'s CSRF token (in constant time)."""
    return presented is not None and hmac.compare_digest(presented.encode(), session.csrf.encode())


def host_allowed(host_header: str | None) -> bool:
    """Whether a ``Host`` header names this machine by address or as ``localhost`` (see DNS rebinding, above)."""
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):  # [IPv6]:port
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
