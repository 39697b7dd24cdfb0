"""The SQS API under load: dbqueue's HTTP listener against moto's server mode, one driver, alternating rounds.

Run ``python bench/sqs.py`` (``--smoke`` for a few seconds' check, ``--signed``
for SigV4 on every request, ``--json PATH`` for the raw figures).

Theory of operation
-------------------
**Servers.** Both are started once, on free loopback ports, and stay up for
the whole run: dbqueue with its HTTP listener (``dbqueue serve --http-port``
when the CLI has the option, else a `Server` and an `HttpListener` started
side by side on one uvloop loop by this script's ``--serve-dbqueue`` mode, as
the listener's own tests start them; that mode also serves ``--fast-path off``,
the listener without its SQS fast path), and moto (``python -m moto.server``,
the ``moto_server`` command). Each round runs the same load against each,
in turn (A B, then B A, so that a machine that drifts over the run
favours neither), each on a fresh queue deleted afterwards.

**The load.** Producers send ``SendMessageBatch`` of 10; consumers
``ReceiveMessage`` up to 10 (a one-second long poll, so a consumer that
outruns the producers waits instead of spinning) and ``DeleteMessageBatch``
what they got, all at once on keep-alive connections, for ``--seconds``
after ``--warmup``, or until ``--max-messages`` have been sent. Every
message body is unique (its round, process, producer and sequence number).
The driver is not an SDK, whose own CPU would be measured: it writes
requests straight onto a socket with asyncio (uvloop) protocols, request
templates formatted with the message numbers, and parses replies only as
far as it needs (the receipt handles of a receive). It runs in
``--processes`` processes, each with its own connections, started and
prepared before the clock starts.

**Requests.** By default every request carries a fixed, unchecked
``Authorization`` header: moto routes a request to its service by the
signature's credential scope and checks nothing else, and dbqueue's
listener started without credentials accepts it unchecked, so both servers
get the same bytes and neither verifies a signature. With ``--signed``,
dbqueue is started with credentials and verifies SigV4 on every request:
the sends are signed ahead of the clock (one signature per request, each
over its own body), the receive once (its body never changes; a signature
is good for 15 minutes), and each delete just before it goes (its body
holds the handles just received). moto still checks nothing.

**Floors.** ``--systems`` may add ``aiohttp-floor`` and ``bare-floor``
(`serve_floor`): servers that answer the same requests with canned replies of
the same shape, one on aiohttp's low-level server as dbqueue's listener runs
it, one on a bare asyncio protocol. They do no SQS work, so they show what
HTTP alone costs per message, and what aiohttp's per-request machinery adds.

**Figures.** Per system and round: messages sent, received and deleted per
second over the window; the server's CPU (``/proc/PID/stat``, all its
threads) as cores busy and as microseconds per message deleted; the load
generator's CPU; the CPU of every other process on the machine
(`machine.CpuWatch`), which marks a crowded round. Then ``--round-trips``
single-message round trips (send, receive, delete, one call after the
other) with boto3, whose p50 is what an application sees, and with this
script's own requests on one keep-alive connection, which leaves out the
SDK's CPU. The report gives medians over rounds, the median of
the round-by-round ratios dbqueue / moto, and the issue's targets: at least
50,000 messages/s deleted (a message is through once it is deleted) and at
least 20 times moto.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `machine` sits next to this file

from machine import CpuWatch, add_run_options, begin_run, context_lines, python_description

ACCESS_KEY = "AKIDBENCHSQS"
SECRET_KEY = "bench/sqs+secret"
REGION = "us-east-1"
ACCOUNT = {
    "dbqueue": "000000000000",
    "moto": "123456789012",
    "aiohttp-floor": "000000000000",
    "bare-floor": "000000000000",
}
SYSTEMS = ("dbqueue", "moto")
FLOORS = ("aiohttp-floor", "bare-floor")  # canned replies: what HTTP alone costs (`serve_floor`)
BATCH = 10
TARGET_RATE = 50_000.0  # messages/s deleted through dbqueue's SQS API (issue 19)
TARGET_RATIO = 20.0  # dbqueue over moto
START_TIMEOUT = 30.0

# --- requests ------------------------------------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class Signer:
    """AWS Signature Version 4 for ``POST /`` JSON requests to one host: what botocore writes, done cheaply.

    The signing key is derived once per day; a signature then costs two
    SHA-256 and one HMAC. ``None`` as a signer (`RequestMaker`) writes a fixed
    ``Authorization`` header instead, checked by neither server.
    """

    def __init__(self, host: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> None:
        self.host = host
        self.access_key = access_key
        self.secret_key = secret_key
        self._day = ""
        self._key = b""

    def headers(self, target: str, body: bytes) -> str:
        """The ``X-Amz-Date`` and ``Authorization`` header lines for a request of ``target`` with ``body``."""
        now = datetime.now(UTC)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        if day != self._day:
            key = _hmac(f"AWS4{self.secret_key}".encode(), day)
            for part in (REGION, "sqs", "aws4_request"):
                key = _hmac(key, part)
            self._day, self._key = day, key
        scope = f"{day}/{REGION}/sqs/aws4_request"
        canonical = (
            f"POST\n/\n\ncontent-type:application/x-amz-json-1.0\nhost:{self.host}\nx-amz-date:{stamp}\n"
            f"x-amz-target:{target}\n\ncontent-type;host;x-amz-date;x-amz-target\n{hashlib.sha256(body).hexdigest()}"
        )
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        return (
            f"X-Amz-Date: {stamp}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={signature}\r\n"
        )


_UNCHECKED = (
    f"X-Amz-Date: 20260101T000000Z\r\nAuthorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/{REGION}/sqs/"
    "aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64 + "\r\n"
)


class RequestMaker:
    """Whole HTTP requests (head and body, as bytes) for the SQS actions of the load, on one queue."""

    def __init__(self, host: str, queue_url: str, signer: Signer | None, body_size: int) -> None:
        self.host = host
        self.signer = signer
        self.queue_url = queue_url
        self.pad = "x" * max(0, body_size - 32)
        self._send_head = '{"QueueUrl":' + json.dumps(queue_url) + ',"Entries":['
        self._delete_head = self._send_head

    def request(self, action: str, body: bytes) -> bytes:
        target = f"AmazonSQS.{action}"
        auth = self.signer.headers(target, body) if self.signer is not None else _UNCHECKED
        return (
            f"POST / HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/x-amz-json-1.0\r\n"
            f"X-Amz-Target: {target}\r\nContent-Length: {len(body)}\r\n{auth}\r\n"
        ).encode() + body

    def send_batch(self, tag: str, first: int) -> bytes:
        """A SendMessageBatch of messages ``first`` .. ``first + 9`` of the producer ``tag``: unique bodies."""
        pad = self.pad
        entries = ",".join(f'{{"Id":"{i}","MessageBody":"{tag}-{first + i:010d}-{pad}"}}' for i in range(BATCH))
        return self.request("SendMessageBatch", (self._send_head + entries + "]}").encode())

    def receive(self, wait_seconds: int) -> bytes:
        body = json.dumps(
            {"QueueUrl": self.queue_url, "MaxNumberOfMessages": BATCH, "WaitTimeSeconds": wait_seconds},
            separators=(",", ":"),
        )
        return self.request("ReceiveMessage", body.encode())

    def delete_batch(self, handles: list[str]) -> bytes:
        entries = ",".join(f'{{"Id":"{i}","ReceiptHandle":{json.dumps(handle)}}}' for i, handle in enumerate(handles))
        return self.request("DeleteMessageBatch", (self._delete_head + entries + "]}").encode())


# --- the driver ----------------------------------------------------------------------------------------------------


class HttpFailure(Exception):
    """A reply the load did not expect (not 200, or not the shape asked for)."""


class _HttpProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; replies framed by ``Content-Length``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end_of_head = buffer.find(b"\r\n\r\n")
        if end_of_head < 0 or self.waiter is None:
            return
        head = bytes(buffer[:end_of_head]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter.set_exception(HttpFailure(f"a reply without Content-Length: {head[:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop > 0 else len(head)])
        end = end_of_head + 4 + length
        if len(buffer) < end:
            return
        body = bytes(buffer[end_of_head + 4 : end])
        del buffer[:end]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(head[9:12]), body, b"\r\nconnection: close" in head))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"the server closed the connection: {exc}"))


class HttpLink:
    """A connection to ``host:port`` that opens again when the server closed it (moto may, after a reply)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.protocol: _HttpProtocol | None = None
        self.connects = 0

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        protocol = self.protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            _, protocol = await loop.create_connection(_HttpProtocol, "127.0.0.1", self.port)
            self.protocol = protocol
            self.connects += 1
        protocol.waiter = waiter = loop.create_future()
        assert protocol.transport is not None
        protocol.transport.write(request)
        status, body, close = await waiter
        if close:
            protocol.transport.close()
            self.protocol = None
        return status, body

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()


@dataclass
class DriverConfig:
    """What one driver process does (picklable: it crosses into a spawned process)."""

    index: int
    port: int
    queue_url: str
    tag: str
    producers: int
    consumers: int
    max_messages: int  # this process's share
    body_size: int
    signed: bool
    warmup: float
    seconds: float
    wait_seconds: int
    check_duplicates: bool = True  # off for the floors, whose canned replies repeat one body


@dataclass
class Counts:
    sent: int = 0
    received: int = 0
    deleted: int = 0
    requests: int = 0
    empty_receives: int = 0
    duplicates: int = 0  # bodies this process received twice (none expected: the window is within the visibility)
    errors: int = 0
    first_error: str = ""

    def minus(self, other: Counts) -> Counts:
        return self._combine(other, -1)

    def plus(self, other: Counts) -> Counts:
        return self._combine(other, 1)

    def _combine(self, other: Counts, sign: int) -> Counts:
        numbers = {name: getattr(self, name) + sign * getattr(other, name) for name in COUNTED}
        return Counts(**numbers, first_error=self.first_error or other.first_error)


COUNTED = ("sent", "received", "deleted", "requests", "empty_receives", "duplicates", "errors")


def _failure(counts: Counts, what: str) -> None:
    counts.errors += 1
    if not counts.first_error:
        counts.first_error = what[:500]


async def _produce(link: HttpLink, requests: Iterator[bytes], counts: Counts, running: Callable[[], bool]) -> None:
    for request in requests:
        if not running():
            return
        status, body = await link.exchange(request)
        counts.requests += 1
        if status != 200:
            _failure(counts, f"SendMessageBatch {status}: {body[:300]!r}")
            continue
        counts.sent += body.count(b'"MessageId"')


async def _consume(
    link: HttpLink,
    maker: RequestMaker,
    receive: bytes,
    counts: Counts,
    seen: set[str] | None,
    running: Callable[[], bool],
) -> None:
    while running():
        status, body = await link.exchange(receive)
        counts.requests += 1
        if status != 200:
            _failure(counts, f"ReceiveMessage {status}: {body[:300]!r}")
            continue
        messages = json.loads(body).get("Messages") or []
        if not messages:
            counts.empty_receives += 1
            continue
        counts.received += len(messages)
        if seen is not None:
            before = len(seen)
            seen.update(message["Body"] for message in messages)
            counts.duplicates += len(messages) - (len(seen) - before)
        status, body = await link.exchange(maker.delete_batch([message["ReceiptHandle"] for message in messages]))
        counts.requests += 1
        if status != 200:
            _failure(counts, f"DeleteMessageBatch {status}: {body[:300]!r}")
            continue
        reply = json.loads(body)
        if reply.get("Failed"):
            _failure(counts, f"DeleteMessageBatch failed entries: {reply['Failed'][:2]!r}")
        counts.deleted += len(reply.get("Successful") or [])


def _send_requests(maker: RequestMaker, tag: str, batches: int, precompute: bool) -> Iterator[bytes]:
    if precompute:  # signed ahead of the clock: the driver's time goes to the wire, not to SHA-256
        return iter([maker.send_batch(tag, batch * BATCH) for batch in range(batches)])
    return (maker.send_batch(tag, batch * BATCH) for batch in range(batches))


async def _drive(config: DriverConfig, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{config.port}"
    maker = RequestMaker(host, config.queue_url, Signer(host) if config.signed else None, config.body_size)
    per_producer = max(1, config.max_messages // max(1, config.producers) // BATCH)
    sends = [
        _send_requests(maker, f"{config.tag}.{config.index}.{p}", per_producer, config.signed)
        for p in range(config.producers)
    ]
    receive = maker.receive(config.wait_seconds)
    links = [HttpLink(config.port) for _ in range(config.producers + config.consumers)]
    counts = Counts()
    seen: set[str] | None = set() if config.check_duplicates else None
    stop = False

    def running() -> bool:
        return not stop

    pipe.send("ready")
    start_at = pipe.recv()  # wall-clock time every process starts at
    await asyncio.sleep(max(0.0, start_at - time.time()))
    tasks = [loop.create_task(_produce(links[p], sends[p], counts, running)) for p in range(config.producers)]
    tasks += [
        loop.create_task(_consume(links[config.producers + c], maker, receive, counts, seen, running))
        for c in range(config.consumers)
    ]
    await asyncio.sleep(max(0.0, start_at + config.warmup - time.time()))
    before, cpu_before, began = Counts(**asdict(counts)), time.process_time(), time.monotonic()
    await asyncio.sleep(max(0.0, start_at + config.warmup + config.seconds - time.time()))
    after, cpu_after, ended = Counts(**asdict(counts)), time.process_time(), time.monotonic()
    stop = True
    done, pending = await asyncio.wait(tasks, timeout=config.wait_seconds + 5.0)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            _failure(after, f"driver task: {task.exception()!r}")
    for link in links:
        link.close()
    window = after.minus(before)
    pipe.send(
        {
            "counts": asdict(window),
            "seconds": ended - began,
            "cpu_seconds": cpu_after - cpu_before,
            "connects": sum(link.connects for link in links),
        }
    )


def driver_main(config: DriverConfig, pipe: Connection) -> None:
    """A driver process: prepare, say "ready", start at the time the parent sends, report the window's counts."""
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(_drive(config, pipe))
    except BaseException as error:  # the parent must hear why rather than wait for a report
        pipe.send({"error": repr(error)})
        raise


# --- servers -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid``, all its threads, and the children it has waited for."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        stat = file.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class BlockingLink:
    """A blocking keep-alive connection for setup, checks and round trips (not the load): one request at a time."""

    def __init__(self, port: int, signed: bool, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        host = f"127.0.0.1:{port}"
        self.maker = RequestMaker(host, "", Signer(host) if signed else None, 0)
        self.connection: socket.socket | None = None
        self.pending = b""

    def call(self, action: str, payload: dict[str, Any]) -> Any:
        """Send one request; return its parsed JSON reply. Raises `HttpFailure` for any status but 200."""
        if self.connection is None:
            self.connection = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pending = b""
        self.connection.sendall(self.maker.request(action, json.dumps(payload).encode()))
        reply = self.pending
        while b"\r\n\r\n" not in reply:
            reply += self._receive(action)
        head, _, body = reply.partition(b"\r\n\r\n")
        lower = head.lower()
        at = lower.find(b"content-length:")
        if at < 0:
            raise HttpFailure(f"{action}: a reply without Content-Length: {head[:200]!r}")
        length = int(lower[at + 15 :].split(b"\r\n", 1)[0])
        while len(body) < length:
            body += self._receive(action)
        body, self.pending = body[:length], body[length:]
        if b"\r\nconnection: close" in lower:
            self.close()
        status = int(head[9:12])
        if status != 200:
            raise HttpFailure(f"{action} answered {status}: {body[:300]!r}")
        return json.loads(body) if body else {}

    def _receive(self, action: str) -> bytes:
        assert self.connection is not None
        chunk = self.connection.recv(65536)
        if not chunk:
            self.close()
            raise HttpFailure(f"{action}: the server closed the connection")
        return chunk

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class SqsServer:
    """One server under test: its process, HTTP port, and how to reach its queues."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    signed: bool
    command: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def queue_url(self, queue: str) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT[self.name]}/{queue}"

    def call(self, action: str, **payload: Any) -> Any:
        """One request on a connection of its own; the parsed JSON reply."""
        link = BlockingLink(self.port, self.signed)
        try:
            return link.call(action, payload)
        finally:
            link.close()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.call("ListQueues")
                return
            except (OSError, HttpFailure, ValueError) as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not answer within {START_TIMEOUT} s ({error}):\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _serve_has_http_port(python: str) -> bool:
    done = subprocess.run(
        [python, "-m", "dbqueue.cli", "serve", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return "--http-port" in done.stdout


def start_dbqueue(python: str, log_dir: Path, signed: bool, fast: str = "auto") -> SqsServer:
    """dbqueue with its HTTP listener: ``serve --http-port`` when the CLI has it, else this script's own mode.

    The native port is the kernel's pick (``--port 0``); the HTTP port is probed free first, and taken again
    if another process bound it in between (up to three tries)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DBQUEUE_")}
    if signed:
        environment["DBQUEUE_SQS_ACCESS_KEY_ID"] = ACCESS_KEY
        environment["DBQUEUE_SQS_SECRET_ACCESS_KEY"] = SECRET_KEY
    # "on" and "auto": the listener as `serve --http-port` runs it (the fast path on); "off": this script's own
    # mode, the listener's fast path turned off (aiohttp alone), which `serve` has no option for.
    has_http_port = fast != "off" and _serve_has_http_port(python)
    for attempt in range(3):
        port = free_port()
        if has_http_port:
            command = [python, "-m", "dbqueue.cli", "serve", "--port", "0", "--http-port", str(port)]
            command += ["--log-level", "warning"]
        else:
            command = [python, str(Path(__file__).resolve()), "--serve-dbqueue", str(port), "--fast-path", fast]
        log_path = log_dir / "dbqueue.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        server = SqsServer("dbqueue", process, port, log_path, signed, command)
        try:
            server.wait_ready()
        except RuntimeError as exc:
            if attempt == 2 or "address already in use" not in str(exc):
                raise
            continue
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")


def moto_python(server_python: str) -> tuple[str, str]:
    """The interpreter for moto: the dbqueue server's when moto is installed there (same build), else this one;
    and moto's version under it."""
    for python in (server_python, sys.executable):
        done = subprocess.run(
            [python, "-c", "import importlib.metadata as m, moto.server; print(m.version('moto'))"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode == 0:
            return python, done.stdout.strip()
    raise RuntimeError('moto is not installed: pip install "moto[server]"')


def start_moto(python: str, log_dir: Path, signed: bool) -> SqsServer:
    """moto's server mode (``moto_server``): a threaded werkzeug server for every AWS service it mocks."""
    port = free_port()
    log_path = log_dir / "moto.log"
    with open(log_path, "wb") as log:
        command = [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = SqsServer("moto", process, port, log_path, signed, command)
    server.wait_ready()
    return server


def start_floor(python: str, name: str, log_dir: Path) -> SqsServer:
    """A floor (`serve_floor`): ``aiohttp-floor`` or ``bare-floor``, on ``python``."""
    port = free_port()
    command = [python, str(Path(__file__).resolve()), "--serve-floor", name, str(port)]
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = SqsServer(name, process, port, log_path, False, command)
    server.wait_ready()
    return server


def _canned_replies() -> dict[bytes, bytes]:
    """X-Amz-Target -> a reply body of the shape (and about the size) dbqueue gives the load's requests."""
    ids = [f"00000000-0000-0000-0000-{i:012x}" for i in range(BATCH)]
    digest = "0" * 32
    replies: dict[str, Any] = {
        "SendMessageBatch": {
            "Successful": [{"Id": str(i), "MessageId": ids[i], "MD5OfMessageBody": digest} for i in range(BATCH)],
            "Failed": [],
        },
        "ReceiveMessage": {
            "Messages": [
                {"MessageId": ids[i], "ReceiptHandle": "h" * 52, "MD5OfBody": digest, "Body": "b" * 64}
                for i in range(BATCH)
            ]
        },
        "DeleteMessageBatch": {"Successful": [{"Id": str(i)} for i in range(BATCH)], "Failed": []},
        "ListQueues": {"QueueUrls": []},
        "CreateQueue": {"QueueUrl": "http://127.0.0.1/000000000000/floor"},
        "DeleteQueue": {},
    }
    return {f"AmazonSQS.{action}".encode(): json.dumps(body).encode() for action, body in replies.items()}


def serve_floor(name: str, port: int) -> None:
    """``--serve-floor NAME PORT``: answer the load's requests with canned replies, to measure what HTTP costs.

    ``aiohttp-floor`` is aiohttp's low-level server as dbqueue's listener runs
    it (a handler per request, cancelled if its client leaves; the body read,
    a `web.Response` with the same headers); ``bare-floor`` is an asyncio
    protocol that finds each request's end by its ``Content-Length`` and
    writes the reply from ``data_received``, with no request object, task or
    header parsing beyond that. Neither looks at the body: the difference
    between dbqueue and ``aiohttp-floor`` is the SQS work, the difference
    between the floors what aiohttp's per-request machinery costs.
    """
    from aiohttp import web

    from dbqueue.server import new_event_loop

    replies = _canned_replies()
    request_id = "00000000-0000-4000-8000-000000000000"
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": request_id}

    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=replies[request.headers["X-Amz-Target"].encode()], headers=headers)

    class Bare(asyncio.Protocol):
        def __init__(self) -> None:
            self.buffer = bytearray()
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            buffer = self.buffer
            buffer += data
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                head = bytes(buffer[:end])
                at = head.find(b"Content-Length: ")
                length = int(head[at + 16 : head.find(b"\r\n", at)])
                if len(buffer) < end + 4 + length:
                    return
                at = head.find(b"X-Amz-Target: ")
                body = replies[head[at + 14 : head.find(b"\r\n", at)]]
                del buffer[: end + 4 + length]
                assert self.transport is not None
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: %s\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (request_id.encode(), len(body), body)
                )

    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        if name == "aiohttp-floor":
            factory: Callable[[], asyncio.BaseProtocol] = web.Server(handle, handler_cancellation=True, access_log=None)
        else:
            factory = Bare
        listener = await loop.create_server(factory, "127.0.0.1", port, backlog=4096)
        stopping = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        listener.close()

    loop.run_until_complete(main())
    loop.close()


def serve_dbqueue(http_port: int, fast: bool) -> None:
    """``--serve-dbqueue PORT``: a `Server` (native port: any) and its `HttpListener` on ``PORT``, until SIGTERM.

    Credentials come from ``DBQUEUE_SQS_ACCESS_KEY_ID`` / ``DBQUEUE_SQS_SECRET_ACCESS_KEY`` when set. ``fast``
    is the listener's ``fast_path``: off, aiohttp serves every request (the general path alone).
    """
    from dbqueue import Server
    from dbqueue.server import new_event_loop
    from dbqueue.server.http import HttpListener, read_credentials

    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        server = Server(port=0)
        await server.start()
        listener = HttpListener(server, http_port, credentials=read_credentials(None, os.environ), fast_path=fast)
        await listener.start()
        stopping = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        await listener.stop()
        await server.stop()

    loop.run_until_complete(main())
    loop.close()


# --- where a request's CPU goes ------------------------------------------------------------------------------------


def layers(count: int, signed: bool) -> dict[str, dict[str, float]]:
    """``--layers``: CPU microseconds per request in each layer of dbqueue's SQS path, in this process.

    A `Server` and its `HttpListener` are started here, and the load's own
    requests (the driver's bytes) are handed to the listener's layers one
    after another, as `HttpListener` does, without a socket: the signature
    check (with ``signed``), `dbqueue.sqs.decode_request`, `SqsService.act`
    on the broker, `dbqueue.sqs.encode_result`. What the load measures on top
    of their sum is aiohttp's and the kernel's. ``count`` rounds of one send,
    one receive and one delete of ten messages.
    """
    from dbqueue import Server
    from dbqueue.server import new_event_loop
    from dbqueue.server.http import HttpListener
    from dbqueue.sqs import decode_request, encode_result, protocol_of

    clock = time.process_time
    spent = {kind: dict.fromkeys(("verify", "decode", "act", "encode"), 0.0) for kind in ("send", "receive", "delete")}

    async def measure() -> None:
        server = Server(port=0)
        await server.start()
        listener = HttpListener(server, 0, credentials={ACCESS_KEY: SECRET_KEY} if signed else None)
        await listener.start()
        host = f"127.0.0.1:{listener.port}"
        url = f"http://{host}/000000000000/layers"
        maker = RequestMaker(host, url, Signer(host) if signed else None, 64)
        json_protocol = protocol_of("application/x-amz-json-1.0", "AmazonSQS.SendMessageBatch")
        service, verifier = listener.service, listener.verifier

        async def one(kind: str, raw: bytes) -> Any:
            head, _, body = raw.partition(b"\r\n\r\n")
            headers = [tuple(line.split(": ", 1)) for line in head.decode().split("\r\n")[1:]]
            target = dict(headers)["X-Amz-Target"]
            began = clock()
            if verifier is not None:
                verifier.verify("POST", "/", "", headers, body, time.time())
            verified = clock()
            request = decode_request(json_protocol, "/", "", body, target)
            decoded = clock()
            result = await service.act(request, host, ACCOUNT["dbqueue"])
            acted = clock()
            reply = encode_result(json_protocol, request.action, result, "00000000-0000-4000-8000-000000000000")
            encoded = clock()
            figures = spent[kind]
            figures["verify"] += verified - began
            figures["decode"] += decoded - verified
            figures["act"] += acted - decoded
            figures["encode"] += encoded - acted
            return json.loads(reply.body)

        create = decode_request(json_protocol, "/", "", b'{"QueueName":"layers"}', "AmazonSQS.CreateQueue")
        await service.act(create, host, ACCOUNT["dbqueue"])
        receive = maker.receive(0)
        for batch in range(count):
            await one("send", maker.send_batch("layers", batch * BATCH))
            messages = (await one("receive", receive))["Messages"]
            assert len(messages) == BATCH, messages
            await one("delete", maker.delete_batch([message["ReceiptHandle"] for message in messages]))
        await listener.stop()
        await server.stop()

    loop = new_event_loop()
    try:
        loop.run_until_complete(measure())
    finally:
        loop.close()
    return {
        kind: {layer: 1e6 * seconds / count for layer, seconds in figures.items()} for kind, figures in spent.items()
    }


class _Captured(asyncio.Transport):
    """A transport that keeps what is written to it: the fast path's answers, without a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Handler(asyncio.Protocol):
    """Stands for aiohttp's handler beside a `SqsConnection` that never hands over."""


def fast_layers(count: int, signed: bool) -> dict[str, float]:
    """``--layers``, the fast path: CPU microseconds per request from the request's bytes to the answer's.

    The driver's bytes are handed to an `SqsConnection` (``data_received``) whose
    transport keeps what it is written: framing, the signature check (with
    ``signed``), the fast path on the broker and the answer's bytes, in process;
    the socket's system calls are not in it.
    """
    from dbqueue import Server
    from dbqueue.server import new_event_loop
    from dbqueue.server.http import HttpListener
    from dbqueue.server.sqs_api import SqsConnection
    from dbqueue.sqs import decode_request, protocol_of

    clock = time.process_time
    spent = dict.fromkeys(("send", "receive", "delete"), 0.0)

    async def measure() -> None:
        server = Server(port=0)
        await server.start()
        listener = HttpListener(server, 0, credentials={ACCESS_KEY: SECRET_KEY} if signed else None)
        await listener.start()
        host = f"127.0.0.1:{listener.port}"
        url = f"http://{host}/000000000000/layers"
        maker = RequestMaker(host, url, Signer(host) if signed else None, 64)
        json_protocol = protocol_of("application/x-amz-json-1.0", "AmazonSQS.CreateQueue")
        create = decode_request(json_protocol, "/", "", b'{"QueueName":"layers"}', "AmazonSQS.CreateQueue")
        await listener.service.act(create, host, ACCOUNT["dbqueue"])
        transport = _Captured()
        connection = SqsConnection(_Handler(), listener)
        connection.connection_made(transport)

        def one(kind: str, raw: bytes) -> Any:
            began = clock()
            connection.data_received(raw)
            spent[kind] += clock() - began
            assert connection.running is None, "the fast path let the request go to the general path"
            answer = transport.written.pop()
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            return json.loads(answer.partition(b"\r\n\r\n")[2])

        receive = maker.receive(0)
        for batch in range(count):
            one("send", maker.send_batch("layers", batch * BATCH))
            messages = one("receive", receive)["Messages"]
            assert len(messages) == BATCH, messages
            one("delete", maker.delete_batch([message["ReceiptHandle"] for message in messages]))
        await listener.stop()
        await server.stop()

    loop = new_event_loop()
    try:
        loop.run_until_complete(measure())
    finally:
        loop.close()
    return {kind: 1e6 * seconds / count for kind, seconds in spent.items()}


def print_fast_layers(figures: dict[str, float], signed: bool) -> None:
    total = sum(figures.values())
    print(
        f"\nCPU per request on the fast path, bytes in to bytes out, in process, no socket "
        f"({'signed' if signed else 'unsigned'}), µs: "
        + ", ".join(f"{kind} {value:.1f}" for kind, value in figures.items())
        + f"; per message {total / BATCH:.1f} µs, so at most {1e6 * BATCH / total:,.0f} messages/s on one core "
        "before the kernel"
    )


def print_layers(figures: dict[str, dict[str, float]], signed: bool) -> None:
    print(
        f"\nCPU per request in dbqueue's SQS layers, in process, no socket ({'signed' if signed else 'unsigned'}), µs"
    )
    print(f"  {'request':<10}" + "".join(f"{layer:>9}" for layer in ("verify", "decode", "act", "encode", "sum")))
    total = 0.0
    for kind, layer in figures.items():
        total += sum(layer.values())
        print(f"  {kind:<10}" + "".join(f"{value:>9.1f}" for value in layer.values()) + f"{sum(layer.values()):>9.1f}")
    print(
        f"  per message (one of each request per {BATCH} messages): {total / BATCH:.1f} µs, "
        f"so at most {1e6 * BATCH / total:,.0f} messages/s on one core before HTTP and the kernel"
    )


# --- one run -------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One system's load in one round."""

    system: str
    round: int
    seconds: float
    counts: Counts
    server_cpu: float  # CPU seconds over the window
    driver_cpu: float
    other_cpu: float
    kernel_cpu: float
    connects: int
    errors: list[str] = field(default_factory=list)

    def rate(self, what: str) -> float:
        return float(getattr(self.counts, what)) / self.seconds if self.seconds else 0.0

    @property
    def crowded(self) -> bool:
        return self.other_cpu / self.seconds > 0.25 if self.seconds else False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            sent_per_s=self.rate("sent"),
            received_per_s=self.rate("received"),
            deleted_per_s=self.rate("deleted"),
            server_cores=self.server_cpu / self.seconds if self.seconds else 0.0,
            server_us_per_message=1e6 * self.server_cpu / self.counts.deleted if self.counts.deleted else None,
            crowded=self.crowded,
        )
        return out


def run_load(server: SqsServer, round_: int, args: argparse.Namespace, profile: Path | None) -> Run:
    """Run the load against ``server`` on a fresh queue; return the window's figures."""
    queue = f"bench-{round_}-{int(time.time() * 1000) % 10**9}"
    server.call("CreateQueue", QueueName=queue)
    url = server.queue_url(queue)
    context = multiprocessing.get_context("spawn")
    processes, pipes = [], []
    for index in range(args.processes):
        config = DriverConfig(
            index=index,
            port=server.port,
            queue_url=url,
            tag=f"r{round_}",
            producers=args.producers,
            consumers=args.consumers,
            max_messages=args.max_messages // args.processes,
            body_size=args.body_size,
            signed=args.signed,
            warmup=args.warmup,
            seconds=args.seconds,
            wait_seconds=1,
            check_duplicates=server.name not in FLOORS,
        )
        ours, theirs = context.Pipe()
        process = context.Process(target=driver_main, args=(config, theirs), daemon=True)
        process.start()
        processes.append(process)
        pipes.append(ours)
    try:
        for pipe in pipes:
            if not pipe.poll(120.0):
                raise RuntimeError("a driver process did not get ready within 120 s")
            ready = pipe.recv()
            if ready != "ready":
                raise RuntimeError(f"a driver process failed while preparing: {ready}")
        start_at = time.time() + 0.2
        for pipe in pipes:
            pipe.send(start_at)
        watch = CpuWatch(lambda: [os.getpid()])
        time.sleep(max(0.0, start_at + args.warmup - time.time()))
        server_before = process_cpu_seconds(server.pid)
        watch.start()
        spy = _start_profile(server, args.seconds, profile) if profile is not None else None
        time.sleep(max(0.0, start_at + args.warmup + args.seconds - time.time()))
        server_after = process_cpu_seconds(server.pid)
        watch.stop()
        reports = []
        for pipe in pipes:
            if not pipe.poll(args.seconds + 60.0):
                raise RuntimeError("a driver process did not report")
            reports.append(pipe.recv())
        if spy is not None:
            spy.wait(60)
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
        try:
            server.call("DeleteQueue", QueueUrl=url)
        except (OSError, HttpFailure) as error:
            print(f"  (could not delete {queue} on {server.name}: {error})")
    failures = [report["error"] for report in reports if "error" in report]
    if failures:
        raise RuntimeError(f"driver failed against {server.name}: {failures[0]}")
    total = Counts()
    for report in reports:
        total = total.plus(Counts(**report["counts"]))
    seconds = statistics.fmean(report["seconds"] for report in reports)
    return Run(
        system=server.name,
        round=round_,
        seconds=seconds,
        counts=total,
        server_cpu=server_after - server_before,
        driver_cpu=sum(report["cpu_seconds"] for report in reports),
        other_cpu=watch.other_seconds,
        kernel_cpu=watch.kernel_seconds,
        connects=sum(report["connects"] for report in reports),
        errors=[total.first_error] if total.first_error else [],
    )


def _start_profile(server: SqsServer, seconds: float, path: Path) -> subprocess.Popen[bytes]:
    """py-spy on the server for the window: collapsed stacks (``--format raw``), one line per distinct stack."""
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(path),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def raw_round_trips(server: SqsServer, count: int) -> dict[str, list[float]]:
    """``count`` single-message SendMessage / ReceiveMessage / DeleteMessage on one keep-alive connection with this
    script's own requests: the server's latency without an SDK's CPU. Seconds of each call."""
    queue = f"raw-{int(time.time() * 1000) % 10**9}"
    server.call("CreateQueue", QueueName=queue)
    url = server.queue_url(queue)
    link = BlockingLink(server.port, server.signed)
    times: dict[str, list[float]] = {"send": [], "receive": [], "delete": []}
    try:
        for i in range(count + 5):  # the first five warm up
            began = time.perf_counter()
            link.call("SendMessage", {"QueueUrl": url, "MessageBody": f"raw round trip {queue} {i}"})
            sent = time.perf_counter()
            messages = link.call("ReceiveMessage", {"QueueUrl": url}).get("Messages", [])
            received = time.perf_counter()
            if len(messages) != 1:
                raise HttpFailure(f"{server.name}: a receive after a send returned {len(messages)} messages")
            link.call("DeleteMessage", {"QueueUrl": url, "ReceiptHandle": messages[0]["ReceiptHandle"]})
            deleted = time.perf_counter()
            if i >= 5:
                times["send"].append(sent - began)
                times["receive"].append(received - sent)
                times["delete"].append(deleted - received)
    finally:
        link.close()
        server.call("DeleteQueue", QueueUrl=url)
    return times


def round_trips(server: SqsServer, count: int) -> dict[str, list[float]]:
    """``count`` boto3 send / receive / delete of single messages, one at a time; seconds of each call."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{server.port}",
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"max_attempts": 1}),
    )
    queue = f"rt-{int(time.time() * 1000) % 10**9}"
    url = client.create_queue(QueueName=queue)["QueueUrl"]
    times: dict[str, list[float]] = {"send": [], "receive": [], "delete": []}
    try:
        for i in range(count + 5):  # the first five warm the connection and botocore's caches
            began = time.perf_counter()
            client.send_message(QueueUrl=url, MessageBody=f"round trip {queue} {i}")
            sent = time.perf_counter()
            messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", [])
            received = time.perf_counter()
            if len(messages) != 1:
                raise HttpFailure(f"{server.name}: a receive after a send returned {len(messages)} messages")
            client.delete_message(QueueUrl=url, ReceiptHandle=messages[0]["ReceiptHandle"])
            deleted = time.perf_counter()
            if i >= 5:
                times["send"].append(sent - began)
                times["receive"].append(received - sent)
                times["delete"].append(deleted - received)
    finally:
        client.delete_queue(QueueUrl=url)
        client.close()
    return times


# --- the report ----------------------------------------------------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def summarise(runs: list[Run], trips: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    clean = [run for run in runs if not run.crowded] or runs
    summary: dict[str, Any] = {
        "systems": {},
        "ratios": {},
        "round_trips_ms": {},
        "crowded_runs": len(runs) - len(clean),
        "all_crowded": all(run.crowded for run in runs),
    }
    for system in dict.fromkeys(run.system for run in runs):
        mine = [run for run in clean if run.system == system]
        if not mine:
            continue
        summary["systems"][system] = {
            "runs": len(mine),
            **{
                f"{what}_per_s": statistics.median(run.rate(what) for run in mine)
                for what in ("sent", "received", "deleted")
            },
            "server_cores": statistics.median(run.server_cpu / run.seconds for run in mine),
            "server_us_per_message": statistics.median(
                1e6 * run.server_cpu / run.counts.deleted for run in mine if run.counts.deleted
            )
            if any(run.counts.deleted for run in mine)
            else None,
            "driver_cores": statistics.median(run.driver_cpu / run.seconds for run in mine),
            "other_cores": statistics.median(run.other_cpu / run.seconds for run in mine),
            "errors": sum(run.counts.errors for run in mine),
        }
    rounds = sorted({run.round for run in clean})
    for what in ("sent", "received", "deleted"):
        ratios = []
        for round_ in rounds:
            pair = {run.system: run for run in clean if run.round == round_}
            if {"dbqueue", "moto"} <= pair.keys() and pair["moto"].rate(what) > 0:
                ratios.append(pair["dbqueue"].rate(what) / pair["moto"].rate(what))
        summary["ratios"][what] = statistics.median(ratios) if ratios else None
    # What a crowded machine distorts least: messages deleted per CPU-second the server used.
    per_cpu = []
    for round_ in rounds:
        pair = {run.system: run for run in clean if run.round == round_}
        if {"dbqueue", "moto"} <= pair.keys() and all(
            pair[name].server_cpu > 0 and pair[name].counts.deleted for name in ("dbqueue", "moto")
        ):
            per_cpu.append(
                (pair["dbqueue"].counts.deleted / pair["dbqueue"].server_cpu)
                / (pair["moto"].counts.deleted / pair["moto"].server_cpu)
            )
    summary["ratios"]["deleted per server CPU-second"] = statistics.median(per_cpu) if per_cpu else None
    for system, times in trips.items():
        if not any(times.values()):
            continue
        summary["round_trips_ms"][system] = {
            call: {"p50": 1000 * _percentile(values, 0.5), "p99": 1000 * _percentile(values, 0.99), "n": len(values)}
            for call, values in times.items()
        }
    deleted = summary["systems"].get("dbqueue", {}).get("deleted_per_s", 0.0)
    ratio = summary["ratios"]["deleted"]
    summary["targets"] = [
        {
            "target": f"dbqueue >= {TARGET_RATE:,.0f} messages/s deleted",
            "reached": deleted,
            "met": deleted >= TARGET_RATE,
        },
        {
            "target": f"dbqueue >= {TARGET_RATIO:g}x moto (deleted/s)",
            "reached": ratio,
            "met": ratio is not None and ratio >= TARGET_RATIO,
        },
    ]
    return summary


def run_line(run: Run) -> str:
    span = run.seconds or 1.0
    line = (
        f"  round {run.round} {run.system:<13} sent {run.rate('sent'):>9,.0f}/s"
        f"  received {run.rate('received'):>9,.0f}/s  deleted {run.rate('deleted'):>9,.0f}/s"
        f"  cores: server {run.server_cpu / span:4.2f} driver {run.driver_cpu / span:4.2f}"
        f" others {run.other_cpu / span:4.2f} kernel {run.kernel_cpu / span:4.2f}"
        f"  empty receives {run.counts.empty_receives}  connects {run.connects}"
    )
    if run.counts.duplicates:
        line += f"  DUPLICATES {run.counts.duplicates}"
    if run.crowded:
        line += "  CROWDED"
    if run.counts.errors:
        line += f"  ERRORS {run.counts.errors}: {run.counts.first_error}"
    return line


def print_summary(summary: dict[str, Any]) -> None:
    print(
        "\nmedians over rounds"
        + (
            " (every run was crowded: over all of them)"
            if summary["all_crowded"]
            else f" (left out: {summary['crowded_runs']} crowded runs)"
            if summary["crowded_runs"]
            else ""
        )
    )
    columns = ("sent/s", "received/s", "deleted/s", "server cores", "server µs/msg", "msg/CPU-s", "driver cores")
    print(f"  {'system':<13} " + " ".join(f"{column:>13}" for column in columns))
    for system, figures in summary["systems"].items():
        per_message = figures["server_us_per_message"]
        print(
            f"  {system:<13} {figures['sent_per_s']:>13,.0f} {figures['received_per_s']:>13,.0f} "
            f"{figures['deleted_per_s']:>13,.0f} {figures['server_cores']:>13.2f} "
            f"{per_message if per_message is not None else float('nan'):>13.1f} "
            f"{1e6 / per_message if per_message else float('nan'):>13,.0f} {figures['driver_cores']:>13.2f}"
        )
    print(
        "  (msg/CPU-s: messages deleted per CPU-second of the server, each sent, received and deleted once: what one"
        " core given wholly to the server would carry, if its CPU were the only limit)"
    )
    ratios = summary["ratios"]
    print(
        "  dbqueue / moto, median of the rounds' ratios: "
        + ", ".join(f"{what} {value:.1f}x" if value is not None else f"{what} -" for what, value in ratios.items())
    )
    print("\nround trips, one message at a time, one call after the other (ms): boto3, and this script's raw requests")
    for system, calls in summary["round_trips_ms"].items():
        print(
            f"  {system:<14} "
            + "  ".join(f"{call} p50 {v['p50']:.2f} p99 {v['p99']:.2f} (n={v['n']})" for call, v in calls.items())
        )
    print("\ntargets")
    for target in summary["targets"]:
        reached = target["reached"]
        shown = "-" if reached is None else f"{reached:,.1f}"
        print(f"  {target['target']:<45} reached {shown:>12}  {'met' if target['met'] else 'NOT MET'}")


# --- main ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs the load against every system")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of each run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window opens")
    parser.add_argument("--max-messages", type=int, default=2_000_000, help="messages sent per run at most")
    parser.add_argument("--processes", type=int, default=1, help="driver processes")
    parser.add_argument("--producers", type=int, default=4, help="sending connections per driver process")
    parser.add_argument(
        "--consumers", type=int, default=8, help="receiving connections per driver process (two requests a batch)"
    )
    parser.add_argument("--body-size", type=int, default=64, help="bytes of each message body")
    parser.add_argument("--round-trips", type=int, default=200, help="round trips per system, client and round")
    parser.add_argument("--signed", action="store_true", help="sign every request (SigV4); dbqueue verifies them")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"which systems, comma-separated, of {', '.join(SYSTEMS + FLOORS)} (floors: canned replies, no SQS)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy dbqueue's server in round 1 (collapsed stacks here)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--layers", type=int, metavar="N", help="only measure the CPU of each SQS layer in process, over N rounds"
    )
    parser.add_argument(
        "--fast-path",
        choices=("on", "off", "auto"),
        default="on",
        help="dbqueue's SQS fast path: on (as `dbqueue serve --http-port` runs it), off (the listener's general "
        "path alone: aiohttp), auto (the same as on)",
    )
    parser.add_argument("--smoke", action="store_true", help="one short round: does the script still work?")
    parser.add_argument("--serve-dbqueue", type=int, metavar="HTTP_PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", nargs=2, metavar=("NAME", "PORT"), help=argparse.SUPPRESS)
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.seconds, args.warmup, args.round_trips = 1, 2.0, 0.5, 20
        args.max_messages = min(args.max_messages, 200_000)
        args.quiet_load = 0
    args.server_python = args.server_python or sys.executable
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_dbqueue is not None:
        serve_dbqueue(args.serve_dbqueue, args.fast_path != "off")
        return 0
    if args.serve_floor is not None:
        serve_floor(args.serve_floor[0], int(args.serve_floor[1]))
        return 0
    systems = [name for name in args.systems.split(",") if name]
    context = begin_run(args)
    for line in context_lines(context):
        print(line)
    if args.layers is not None:
        print_layers(layers(args.layers, args.signed), args.signed)
        print_fast_layers(fast_layers(args.layers, args.signed), args.signed)
        return 0
    moto, moto_version = moto_python(args.server_python) if "moto" in systems else ("-", "-")
    print(f"moto server: {python_description(moto)} (moto {moto_version}), threaded werkzeug server")
    print(
        f"load: {args.processes} driver process(es) x ({args.producers} producers + {args.consumers} consumers), "
        f"SendMessageBatch({BATCH}) / ReceiveMessage({BATCH}, wait 1 s) / DeleteMessageBatch({BATCH}), "
        f"{args.body_size}-byte unique bodies, {args.warmup:g} s warm-up + {args.seconds:g} s window, "
        f"at most {args.max_messages:,} messages a run, {args.rounds} rounds alternating; "
        + (
            "every request signed (SigV4), dbqueue verifying"
            if args.signed
            else "requests unsigned (a fixed, unchecked Authorization)"
        )
    )
    runs: list[Run] = []
    trips: dict[str, dict[str, list[float]]] = {
        f"{name} {client}": {"send": [], "receive": [], "delete": []} for name in systems for client in ("boto3", "raw")
    }
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-sqs-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        servers: dict[str, SqsServer] = {}
        for name in systems:
            if name == "dbqueue":
                server = start_dbqueue(args.server_python, log_dir, args.signed, args.fast_path)
            elif name == "moto":
                server = start_moto(moto, log_dir, args.signed)
            elif name in FLOORS:
                server = start_floor(args.server_python, name, log_dir)
            else:
                raise SystemExit(f"no such system: {name} (known: {', '.join(SYSTEMS + FLOORS)})")
            stack.callback(server.stop)
            servers[name] = server
            print(f"{name} started as: {shlex.join(server.command)}", flush=True)
        for round_ in range(1, args.rounds + 1):
            order = systems if round_ % 2 else list(reversed(systems))
            for name in order:
                profile = args.profile if (args.profile is not None and name == "dbqueue" and round_ == 1) else None
                run = run_load(servers[name], round_, args, profile)
                runs.append(run)
                print(run_line(run), flush=True)
                if args.round_trips and name in SYSTEMS:
                    for call, values in round_trips(servers[name], args.round_trips).items():
                        trips[f"{name} boto3"][call].extend(values)
                    for call, values in raw_round_trips(servers[name], args.round_trips).items():
                        trips[f"{name} raw"][call].extend(values)
    summary = summarise(runs, trips)
    print_summary(summary)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "context": context,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "runs": [run.as_dict() for run in runs],
                    "summary": summary,
                    "round_trips_s": trips,
                },
                indent=1,
            )
        )
    errors = sum(run.counts.errors for run in runs)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
