"""The console over HTTP: its page, its assets and its JSON API, answered on the HTTP listener at ``/``.

Theory of operation
-------------------
`Console` answers every request the listener (`server.http`) routes to it:
``GET /`` (and ``/console/``) the page, ``/console/static/*`` its assets (read
from the package once, kept in memory), ``/console/api/*`` the API the page
calls. No template is filled on the server: the page is a fixed file, and
every figure, queue name and payload reaches it as JSON that its script puts
into the document as text (``textContent``), never as markup; a strict
``Content-Security-Policy`` (scripts and styles from this server's own files
only, no inline script, no framing) would keep an injected script from
running even if some text were ever written as markup.

The API, each call refused (401) without a session cookie (see `sessions`),
each ``POST`` refused (403) without the session's CSRF token or from another
origin:

* ``GET session``: whether a login is needed, and the CSRF token (this call
  opens a session without a login on a server without a token);
* ``POST login`` ``{"token"}``, ``POST logout``;
* ``GET overview``: the overview (`Sampler.overview`); ``GET events``: the same,
  as server-sent events, one a second, the same bytes for every viewer;
* ``GET queue?q=KEY``: a queue's options, figures and samples of the last hour;
* ``GET peek?q=KEY&count=N&in_flight=0|1&delayed=0|1``: its first messages,
  delivered to no one. A message sent over SQS is stored in an envelope
  (`dbqueue.protocol.envelope`): its ``data`` is the SQS body, and ``sqs``
  says the rest (sender, send time, message and system attributes), so the
  page shows what the producer sent, never the envelope's bytes;
* ``POST create``, ``send``, ``purge``, ``delete``, ``redrive``: `Actions`.

A queue is named in the API by the hex of its name's bytes (``KEY``), so any
name, whatever characters it holds, travels intact through a URL. Refusals
are ``{"error": "..."}`` with the message a native client would read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs

from aiohttp import web

from ..._version import __version__
from ...core import Queue
from ...errors import NoSuchQueue, RequestError
from ...protocol.envelope import MAGIC, MessageAttributeValue, open_envelope
from ..host import Host
from ..security import is_loopback
from .actions import Actions, refusal_text
from .group import GroupView
from .sampler import BYTES_PER_QUEUE, COARSE_SAMPLES, COARSE_STEP, FINE_SAMPLES, Sampler
from .sessions import COOKIE, CSRF_HEADER, FAILED_LOGIN_DELAY, ConsoleSession, Sessions, csrf_ok, host_allowed

__all__ = ["Console", "ConsoleHost", "PEEK_MAX", "PEEK_BYTES", "SECURITY_HEADERS"]

log = logging.getLogger("dbqueue.server")

PEEK_MAX = 100  # messages a peek shows at most
PEEK_BYTES = 65536  # bytes of each peeked payload sent to the page (the rest is cut, and said to be)
PAGES_CACHED = 1000  # queue pages kept for the rest of a tick (each looked at within it), at most

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


Query = dict[str, list[str]]


class ConsoleHost(Host, Protocol):
    """What the console uses of the server: a session's `Host`, and its TLS context (None: plain TCP)."""

    @property
    def ssl(self) -> ssl_module.SSLContext | None: ...


class Refused(Exception):
    """An API call answered with ``status`` and ``message`` (as ``{"error": message}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
    )
    if headers:
        response.headers.update(headers)
    return response


def _key(query: Query, name: str = "q") -> bytes:
    """The queue name a ``KEY`` (hex) parameter holds."""
    values = query.get(name)
    if not values:
        raise Refused(400, f"the parameter {name!r} (a queue's key) is missing")
    return _unhex(values[0])


def _attributes(attributes: Mapping[str, MessageAttributeValue]) -> list[dict[str, str]]:
    """An envelope's attributes for the page, in name order: name, data type, and ``text`` or ``base64``."""
    shown = []
    for name in sorted(attributes):
        value = attributes[name]
        entry = {"name": name, "type": value.data_type}
        if value.binary_value is not None:
            entry["base64"] = base64.b64encode(value.binary_value).decode("ascii")
        else:
            entry["text"] = value.string_value or ""
        shown.append(entry)
    return shown


def _unhex(text: Any) -> bytes:
    if not isinstance(text, str):
        raise Refused(400, "a queue's key is a string of hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Refused(400, "a queue's key is a string of hex digits") from None


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


def _integer(body: dict[str, Any], name: str, default: int = 0) -> int:
    value = body.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Refused(400, f"{name} must be a whole number")
    try:
        return int(value)
    except ValueError:
        raise Refused(400, f"{name} must be a whole number") from None


def _seconds(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Refused(400, f"{name} must be a number of seconds")
    if isinstance(value, str) and value.strip().lower() == "never":
        return math.inf
    try:
        return float(value)
    except ValueError:
        raise Refused(400, f"{name} must be a number of seconds") from None


class Console:
    """The web console of ``server`` (an `ConsoleHost`), served by ``listener`` (an `HttpListener`).

    ``scheme`` is the listener's ("http" or "https": the cookie is ``Secure``
    over TLS); ``loopback`` whether it is bound to loopback only.
    """

    def __init__(self, server: ConsoleHost, *, scheme: str, loopback: bool, body_timeout: float = 30.0) -> None:
        self.server = server
        self.scheme = scheme
        self.body_timeout = body_timeout
        self.sessions = Sessions(server.auth_token, loopback)
        self.actions = Actions(server)
        self.sampler = Sampler(lambda: server.broker, self.describe, finish=self._group_figures)
        self.group: GroupView | None = None  # made when first looked at, once the server knows its members
        self._assets: dict[str, bytes] = {}
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest, ConsoleSession, dict[str, list[str]]], Any]] = {
            ("GET", "overview"): self._overview,
            ("GET", "queue"): self._queue,
            ("GET", "peek"): self._peek,
            ("POST", "logout"): self._logout,
            ("POST", "create"): self._create,
            ("POST", "send"): self._send,
            ("POST", "purge"): self._purge,
            ("POST", "delete"): self._delete,
            ("POST", "redrive"): self._redrive,
        }

    @classmethod
    def for_listener(cls, server: ConsoleHost, host: str, scheme: str, body_timeout: float) -> Console:
        return cls(server, scheme=scheme, loopback=is_loopback(host), body_timeout=body_timeout)

    @property
    def access(self) -> str:
        """Who may use the console, in a few words (for the log)."""
        sessions = self.sessions
        if sessions.login_required:
            return "log in with the server's token"
        if sessions.allowed:
            return "loopback, no token: no login"
        return "off: a console off loopback needs --auth-token-file"

    def start(self) -> None:
        """Start sampling (on the running loop)."""
        self.sampler.start()

    def stop(self) -> None:
        """Stop sampling and asking the group, end every event stream, forget every session."""
        self.sampler.stop()
        if self.group is not None:
            self.group.stop()
        self.sessions.close_all()

    def _group_figures(self, overview: dict[str, Any]) -> None:
        server = self.server
        group = self.group
        if group is None or group.addresses != server.members or group.index != server.member_index:
            # The members as the server knows them now (known once it started; a store may name them later).
            if group is not None:
                group.stop()
            group = self.group = None
            if len(server.members) > 1:
                group = self.group = GroupView(
                    list(server.members), server.member_index, server.auth_token, tls=server.ssl is not None
                )
        if group is None:
            overview["group"] = None
            return
        group.wanted()
        own = [
            {figure: queue.get(figure) for figure in ("name", "ready", "in_flight", "delayed", "waiting", "consumers")}
            | {"rates": queue.get("rates")}
            for queue in overview["queues"]
        ]
        overview["group"] = group.snapshot(own)

    @staticmethod
    def routes(method: str, path: str, query: str) -> bool:
        """Whether a request is the console's (else the SQS API's): ``/console/...``, or a ``GET``/``HEAD`` of
        ``/`` with no query (SQS's Query protocol always has one)."""
        if path.startswith("/console/") or path == "/console":
            return True
        return path == "/" and not query and method in ("GET", "HEAD")

    # --- the figures -----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The overview's figures that are not samples: the server's, and every queue's (see `Sampler`)."""
        server = self.server
        broker = server.broker
        sources: dict[bytes, list[str]] = {}
        for queue in broker.queues.values():
            if queue.dead_letter:
                sources.setdefault(queue.dead_letter, []).append(queue.name.hex())
        queues = []
        for name, queue in broker.queues.items():
            figures = queue.stats()
            figures["key"] = name
            figures["bytes"] = queue.payload_bytes
            figures["sources"] = sources.get(name, [])
            figures["dead_letter_key"] = queue.dead_letter.hex() if queue.dead_letter else None
            queues.append(figures)
        return {
            "server": server.name,
            "version": __version__,
            "connections": len(server.sessions),
            "members": list(server.members),
            "member_index": server.member_index,
            "store": "unavailable" if server.store_unavailable else ("durable" if server.store else "memory"),
            "store_unavailable": server.store_unavailable,
            "queues": queues,
        }

    # --- requests --------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest, path: str, query: str) -> web.StreamResponse:
        """Answer one request of the console's (see `routes`)."""
        if not self.sessions.allowed:
            return web.Response(
                status=403,
                text="The console needs a token when the server listens off loopback: start it with "
                "--auth-token-file FILE (or DBQUEUE_AUTH_TOKEN).\n",
                headers=SECURITY_HEADERS,
            )
        if self.sessions.token is None and not host_allowed(request.headers.get("Host")):
            return web.Response(status=403, text="Host not allowed.\n", headers=SECURITY_HEADERS)
        if path in ("/", "/console", "/console/"):
            return self._asset("index.html", request.method)
        if path.startswith("/console/static/"):
            return self._asset(path.removeprefix("/console/static/"), request.method)
        if not path.startswith("/console/api/"):
            return web.Response(status=404, text="Not found.\n", headers=SECURITY_HEADERS)
        try:
            return await self._api(request, path.removeprefix("/console/api/"), parse_qs(query))
        except Refused as refused:
            return _json({"error": refused.message}, refused.status)
        except RequestError as error:
            status = 404 if isinstance(error, NoSuchQueue) else 409
            return _json({"error": refusal_text(error), "kind": type(error).__name__}, status)

    def _asset(self, name: str, method: str) -> web.Response:
        content_type = _ASSETS.get(name)
        if content_type is None:
            return web.Response(status=404, text="Not found.\n", headers=SECURITY_HEADERS)
        if method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={**SECURITY_HEADERS, "Allow": "GET, HEAD"})
        body = self._assets.get(name)
        if body is None:
            body = self._assets[name] = resources.files(__package__).joinpath("static", name).read_bytes()
        return web.Response(
            body=body if method == "GET" else None,
            headers={**SECURITY_HEADERS, "Content-Type": content_type, "Cache-Control": "no-cache"},
        )

    async def _api(self, request: web.BaseRequest, call: str, query: Query) -> web.StreamResponse:
        method = request.method
        if call == "session" and method == "GET":
            return self._session(request)
        if call == "login" and method == "POST":
            return await self._login(request)
        session = self.sessions.find(request.cookies.get(COOKIE))
        if session is None:
            raise Refused(401, "log in first")
        if call == "events" and method == "GET":
            return await self._events(request, session, query)
        route = self._routes.get((method, call))
        if route is None:
            raise Refused(404 if all(key[1] != call for key in self._routes) else 405, f"no call {method} {call}")
        if method == "POST":
            self._check_origin(request)
            if not csrf_ok(session, request.headers.get(CSRF_HEADER)):
                raise Refused(403, "this request lacks the console's CSRF token: reload the page")
        answer: Awaitable[web.StreamResponse] | web.StreamResponse = route(request, session, query)
        if isinstance(answer, web.StreamResponse):
            return answer
        try:
            return await answer
        finally:
            if method == "POST":
                self.sampler.cache.clear()  # the pages built this tick show what was before the change

    def _check_origin(self, request: web.BaseRequest) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{self.scheme}://{request.headers.get('Host', '')}":
            raise Refused(403, "cross-origin requests are refused")
        if request.content_type != "application/json":
            raise Refused(415, "the console's calls are JSON")

    async def _body(self, request: web.BaseRequest) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.body_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refused(413, "the request is too large") from None
        except TimeoutError:
            raise Refused(408, "the request body took too long") from None
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the request body is not a JSON object")
        return body

    def _cookie(self, value: str, max_age: int | None) -> str:
        parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if self.scheme == "https":
            parts.append("Secure")
        return "; ".join(parts)

    # --- sessions --------------------------------------------------------------------

    def _session(self, request: web.BaseRequest) -> web.Response:
        sessions = self.sessions
        session = sessions.find(request.cookies.get(COOKIE))
        headers = None
        if session is None and not sessions.login_required:
            session = sessions.open()
            headers = {"Set-Cookie": self._cookie(session.id, None)}
        return _json(
            {
                "authenticated": session is not None,
                "login_required": sessions.login_required,
                "csrf": session.csrf if session is not None else None,
                "server": self.server.name if session is not None else None,
                "version": __version__ if session is not None else None,
            },
            headers=headers,
        )

    async def _login(self, request: web.BaseRequest) -> web.Response:
        self._check_origin(request)
        body = await self._body(request)
        token = body.get("token")
        sessions = self.sessions
        if not sessions.login_required:
            raise Refused(400, "this server has no token: no login needed")
        if not isinstance(token, str) or not sessions.check(token):
            log.warning("console login refused from %s: wrong token", request.remote)
            await asyncio.sleep(FAILED_LOGIN_DELAY)  # a guess a second per request
            raise Refused(401, "wrong token")
        session = sessions.open()
        log.info("console login from %s", request.remote)
        return _json(
            {"authenticated": True, "csrf": session.csrf}, headers={"Set-Cookie": self._cookie(session.id, None)}
        )

    def _logout(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        self.sessions.close(session)
        return _json({"authenticated": False}, headers={"Set-Cookie": self._cookie("", 0)})

    # --- what it shows ---------------------------------------------------------------

    def _overview(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        return web.Response(
            body=self.sampler.overview(),
            content_type="application/json",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
        )

    async def _events(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.StreamResponse:
        """The overview as server-sent events: now, then after every tick, until the session or the sampler ends;
        with ``q=KEY`` (a viewer on a queue's page), that page too, as ``queue`` events."""
        name = _key(query) if "q" in query else None
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        sampler = self.sampler
        sessions = self.sessions
        # Each answer is JSON on one line (json.dumps escapes newlines), so one data line an event.
        await response.write(b"retry: 2000\n" + self._event(name))
        while True:
            tick = sampler.next_tick()
            await asyncio.wait((tick,))  # not `await tick`: a viewer that leaves must not cancel everyone's tick
            if not tick.result() or sessions.sessions.get(session.id) is not session:
                break
            await response.write(self._event(name))
        return response

    def _event(self, name: bytes | None) -> bytes:
        """This tick's events for a viewer: the overview, and the page of queue ``name`` when it looks at one."""
        event = b"data: " + self.sampler.overview() + b"\n\n"
        if name is not None:
            try:
                page = self._page_of(name)
            except RequestError as error:
                page = json.dumps({"error": refusal_text(error), "gone": True}, separators=(",", ":")).encode()
            event += b"event: queue\ndata: " + page + b"\n\n"
        return event

    def _queue(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        """A queue's page: its figures and options as of the last tick, and its samples (built once a tick)."""
        return web.Response(
            body=self._page_of(_key(query)),
            content_type="application/json",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
        )

    def _page_of(self, name: bytes) -> bytes:
        """Queue ``name``'s page as JSON, built once a tick (the figures as of the tick); raises `NoSuchQueue`."""
        queue = self.actions.queue(name)
        cache = self.sampler.cache
        body = cache.get(name)
        if body is None:
            body = self._queue_page(name, queue)
            if len(cache) < PAGES_CACHED:
                cache[name] = body
        return body

    def _queue_page(self, name: bytes, queue: Queue) -> bytes:
        figures = queue.stats()
        figures["key"] = name.hex()
        figures["bytes"] = queue.payload_bytes
        figures["dead_letter_key"] = queue.dead_letter.hex() if queue.dead_letter else None
        sources = self.actions.sources_of(name)
        history = self.sampler.history(name)
        figures["sources"] = [{"key": source.hex(), "name": source.decode("utf-8", "replace")} for source in sources]
        return json.dumps(
            {
                "queue": figures,
                "history": history,
                "unsampled": None if history is not None else self.sampler.unsampled(name),
                "ring": {
                    "fine_samples": FINE_SAMPLES,
                    "coarse_samples": COARSE_SAMPLES,
                    "coarse_step": COARSE_STEP,
                    "bytes_per_queue": BYTES_PER_QUEUE,
                },
            },
            separators=(",", ":"),
        ).encode()

    def _peek(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        name = _key(query)
        queue = self.actions.queue(name)
        try:
            count = max(1, min(PEEK_MAX, int(query.get("count", ["10"])[0])))
        except ValueError:
            raise Refused(400, "count must be a whole number") from None
        in_flight = query.get("in_flight", ["0"])[0] == "1"
        delayed = query.get("delayed", ["0"])[0] == "1"
        peeked = self.actions.peek(queue, count, in_flight=in_flight, delayed=delayed)
        wall_ms = time.time() * 1000.0
        messages = []
        for message in peeked:
            size = len(message.data)
            envelope = open_envelope(message.data) if message.data.startswith(MAGIC) else None
            data = message.data if envelope is None else envelope.body.encode()
            origin = message.origin
            messages.append(
                {
                    "id": message.id,
                    "state": message.state,
                    "deliveries": message.deliveries,
                    "age": max(0.0, wall_ms - message.enqueued_ms) / 1000.0 if message.enqueued_ms else None,
                    "size": size,
                    "data": base64.b64encode(data[:PEEK_BYTES]).decode("ascii"),
                    "truncated": len(data) > PEEK_BYTES,
                    "sqs": None
                    if envelope is None
                    else {
                        "body_size": len(data),
                        "sent_to": envelope.queue,
                        "sender": envelope.sender,
                        "sent_age": max(0.0, wall_ms - envelope.sent_ms) / 1000.0,
                        "attributes": _attributes(envelope.message_attributes),
                        "system_attributes": _attributes(envelope.system_attributes),
                    },
                    "origin": None
                    if origin is None
                    else {
                        "queue": origin.queue.decode("utf-8", "replace"),
                        "key": origin.queue.hex(),
                        "id": origin.id,
                        "age": max(0.0, wall_ms - origin.enqueued_ms) / 1000.0,
                        "deliveries": origin.deliveries,
                    },
                }
            )
        return _json({"messages": messages})

    # --- what it does ----------------------------------------------------------------

    async def _create(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        body = await self._body(request)
        name = body.get("name")
        dead_letter = body.get("dead_letter_queue") or ""
        if not isinstance(name, str) or not isinstance(dead_letter, str):
            raise Refused(400, "a queue's name is text")
        created = await self.actions.create(
            name,
            capacity=_integer(body, "capacity"),
            max_deliveries=_integer(body, "max_deliveries"),
            dead_letter_queue=dead_letter,
            visibility_timeout=_seconds(body, "visibility_timeout"),
        )
        key = name.encode().hex()
        message = f"created queue {name!r}" if created else f"queue {name!r} exists already (its options unchanged)"
        if created:
            log.info("console (%s): %s", request.remote, message)
        return _json({"created": created, "key": key, "message": message})

    async def _send(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        body = await self._body(request)
        name = _unhex(body.get("q"))
        if "base64" in body:
            try:
                data = base64.b64decode(str(body["base64"]), validate=True)
            except (binascii.Error, ValueError):
                raise Refused(400, "the message is not valid base64") from None
        else:
            text = body.get("text")
            if not isinstance(text, str):
                raise Refused(400, "the message is text (or base64)")
            data = text.encode("utf-8", "surrogatepass")
        id_ = await self.actions.send(name, data, delay=_seconds(body, "delay") or 0.0)
        return _json({"id": id_, "message": f"sent message {id_} ({len(data)} bytes)"})

    async def _purge(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        body = await self._body(request)
        name = _unhex(body.get("q"))
        dropped = await self.actions.purge(name)
        log.info("console (%s): purged %d messages of %r", request.remote, dropped, _text(name))
        return _json({"purged": dropped, "message": f"purged {dropped} messages"})

    async def _delete(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        body = await self._body(request)
        name = _unhex(body.get("q"))
        await self.actions.delete(name)
        log.info("console (%s): deleted queue %r", request.remote, _text(name))
        return _json({"deleted": True, "message": f"deleted queue {name.decode('utf-8', 'replace')!r}"})

    async def _redrive(self, request: web.BaseRequest, session: ConsoleSession, query: Query) -> web.Response:
        body = await self._body(request)
        source = _unhex(body.get("q"))
        destination = _unhex(body.get("to"))
        count = body.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise Refused(400, "count is a whole number, 1 or more (or none: every ready message)")
        moved = await self.actions.move(source, destination, count=count)
        log.info(
            "console (%s): moved %d messages of %r to %r", request.remote, moved, _text(source), _text(destination)
        )
        return _json({"moved": moved, "message": f"moved {moved} messages"})
