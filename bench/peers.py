"""The load test's peers: drivers that speak beanstalkd and Redis, and launchers for every server.

Theory of operation
-------------------
`dbqueue.loadtest` runs one workload (producers pipeline sends; consumers pipeline
reads, then confirm what they got) through a `Driver` that turns each step into
bytes and checks the replies. This module maps that workload onto each peer's
own at-least-once pattern:

=================  ==============================  ===================================  ===========================
system             send                            read (nothing there = empty)         confirm
=================  ==============================  ===================================  ===========================
beanstalkd         ``put <pri> 0 <ttr> <bytes>``   ``reserve-with-timeout 0``           ``delete <id>``
redis-list         ``RPUSH foo <payload>``         ``LMOVE foo processing LEFT RIGHT``  ``LREM processing 1 <p>``
redis-stream       ``XADD foo * d <payload>``      ``XREADGROUP GROUP g c COUNT 1 ...`` ``XACK foo g <id>``
redis-list-batch   ``RPUSH foo <p1> .. <pN>``      ``LPOP foo N``                       (none: popped is gone)
=================  ==============================  ===================================  ===========================

``redis-list-batch`` is the batched counterpart of dbqueue's ``send_batch`` /
``read_batch`` / ``confirm_batch`` (``config.batch`` messages a request). It has
no confirm step, so it is *at-most-once*: it does less work than dbqueue, and
a consumer that dies loses what it popped.

The drivers write the raw wire protocol over the engine's own connections; no
client library is on the hot path. Replies are parsed in C where possible:
hiredis's reader for RESP, and for beanstalkd two precompiled patterns (one
that spans every complete reply in a buffer, one that splits them). Every
reply is still checked, one by one, in request order; anything unexpected is
returned as a value and turned into `BenchFailure` by the check, so a wrong
reply can never become a number.

The engine opens its connections itself and sends only the frames a driver
returns, so nothing can be said once per connection. beanstalkd therefore uses
the ``default`` tube (every connection starts out using and watching it) and
`BeanstalkdDriver.prepare` empties it; ``config.queue`` names the Redis keys.

The launchers (`DbQueueServer`, `BeanstalkdServer`, `RedisServer`) each start
one server as a child process on a free loopback port, inside a temporary
directory that also holds its log, wait until it accepts connections, and stop
it (SIGTERM, then SIGKILL if it lingers). They are context managers.
``DbQueueServer(workers=N)`` starts a ``serve --workers N`` group: a
supervisor and N worker processes on N consecutive ports (`ServerProcess.addresses`),
and its CPU and memory figures add up the whole group. With
``durable=True`` each keeps its write-ahead log in that directory (dbqueue: a
``--data-dir``; Redis: an append-only file; beanstalkd: a binlog), and
`ServerProcess.data_bytes` says how much disk it takes; `ServerProcess.rss_bytes`
reads the process's resident memory.

`run_guarded` is how a script runs its work against them: on a fresh event
loop, with a failure or Ctrl-C turned into the script's exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hiredis

from dbqueue.loadtest import BenchConfig, BenchFailure, DbQueueDriver, Driver
from dbqueue.server import new_event_loop

__all__ = [
    "BeanstalkdDriver",
    "BeanstalkdServer",
    "DbQueueServer",
    "FloorDriver",
    "FloorServer",
    "RedisBatchDriver",
    "RedisListDriver",
    "RedisServer",
    "RedisStreamDriver",
    "ServerProcess",
    "ServerUnavailable",
    "ensure_installed",
    "process_stat",
    "redis_call",
    "run_guarded",
]


# --- beanstalkd ---------------------------------------------------------------------


def _reply_pattern(payload_size: int, capture: bool) -> bytes:
    """One beanstalkd reply the load test expects. A ``RESERVED`` body has the payload's size or it is no match."""
    g = "(" if capture else "(?:"
    return rb"%sINSERTED|RESERVED|DELETED|TIMED_OUT|DEADLINE_SOON)(?: %s\d+))?(?: %d\r\n%s.{%d}))?\r\n" % (
        g.encode(),
        g.encode(),
        payload_size,
        g.encode(),
        payload_size,
    )


class BeanstalkdDriver(Driver):
    """The load test in beanstalkd's text protocol, on the ``default`` tube.

    A read is ``reserve-with-timeout 0``: ``TIMED_OUT`` is an empty read, and so is
    ``DEADLINE_SOON`` (beanstalkd's answer when nothing is ready and this
    connection holds a job within a second of its time-to-run, which with a
    one-second ``ttr`` is every job it holds). The in-flight timeout
    ``config.visibility_timeout`` becomes the jobs' ``ttr``, rounded up to whole seconds.
    """

    name = "beanstalkd"
    priority = 1024

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.ttr = max(1, math.ceil(config.visibility_timeout))

    async def prepare(self, address: tuple[str, int]) -> None:
        """Empty the ``default`` tube: kick buried and delayed jobs, reserve and delete all, then verify."""
        reader, writer = await asyncio.open_connection(*address)
        try:
            for _attempt in range(50):
                # Jobs reserved by connections that just closed come back to ready a moment later.
                for _ in range(2):  # `kick` moves buried jobs if there are any, else delayed ones
                    writer.write(b"kick 1000000000\r\n")
                    await _beanstalkd_line(reader, b"KICKED")
                while await self._drain_batch(reader, writer, 1000):
                    pass
                writer.write(b"stats-tube default\r\n")
                stats = await _beanstalkd_body(reader)
                counts = dict(re.findall(rb"current-jobs-(\w+): (\d+)", stats))
                if counts and not any(int(counts.get(k, b"0")) for k in (b"ready", b"reserved", b"delayed", b"buried")):
                    return
                await asyncio.sleep(0.02)
            raise BenchFailure(f"beanstalkd: the default tube does not empty: {stats.decode(errors='replace')}")
        finally:
            writer.close()
            await writer.wait_closed()

    async def _drain_batch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int) -> int:
        writer.write(b"reserve-with-timeout 0\r\n" * count)
        ids = []
        for _ in range(count):
            line = await reader.readline()
            if line.startswith(b"RESERVED "):
                _, job_id, size = line.split()
                await reader.readexactly(int(size) + 2)
                ids.append(job_id)
            elif line not in (b"TIMED_OUT\r\n", b"DEADLINE_SOON\r\n"):
                raise BenchFailure(f"beanstalkd: reserve while draining: {line!r}")
        if ids:
            writer.write(b"".join(b"delete %s\r\n" % job_id for job_id in ids))
            for _ in ids:
                await _beanstalkd_line(reader, b"DELETED")
        return len(ids)

    def new_parser(self) -> Callable[[bytes], list[Any]]:
        """Replies as ``(word, id, body)`` tuples (``b""`` where absent).

        A line it cannot parse comes as ``(b"?", line, b"")``."""
        size = self.config.payload
        spans = re.compile(rb"(?:%s)*" % _reply_pattern(size, capture=False), re.DOTALL).match
        split = re.compile(_reply_pattern(size, capture=True), re.DOTALL).findall
        reserved_head = re.compile(rb"RESERVED \d+ %d\r\n" % size).match
        pending = b""

        def parse(data: bytes) -> list[Any]:
            nonlocal pending
            buffer = pending + data if pending else data
            replies: list[Any] = []
            start = 0
            while True:
                end = spans(buffer, start).end()  # type: ignore[union-attr]  # `*` always matches
                if end > start:
                    replies += split(buffer, start, end)
                eol = buffer.find(b"\r\n", end)
                if eol < 0:
                    break  # the rest is an incomplete line
                head = reserved_head(buffer, end)
                if head is not None and len(buffer) < head.end() + size + 2:
                    break  # a job whose body has not all arrived
                replies.append((b"?", buffer[end:eol], b""))  # unexpected: let the check name it
                start = eol + 2
            pending = buffer[end:]
            return replies

        return parse

    def send_frames(self, count: int) -> bytes:
        head = b"put %d 0 %d %d\r\n" % (self.priority, self.ttr, len(self.payload))
        return b"".join([head + payload + b"\r\n" for payload in self.payloads(count)])

    def check_sent(self, replies: list[Any]) -> None:
        for word, job_id, _ in replies:
            if word != b"INSERTED":
                raise BenchFailure(f"beanstalkd put: got {_line(word, job_id)}")

    def read_frames(self, count: int) -> bytes:
        return b"reserve-with-timeout 0\r\n" * count

    def take_messages(self, replies: list[Any]) -> list[Any]:
        ids = []
        intact = self.intact
        for word, job_id, body in replies:
            if word == b"RESERVED":
                if not intact(body):
                    raise BenchFailure(f"beanstalkd reserve: job {job_id.decode()} payload corrupted")
                ids.append(job_id)
            elif word != b"TIMED_OUT" and word != b"DEADLINE_SOON":
                raise BenchFailure(f"beanstalkd reserve: got {_line(word, job_id)}")
        return ids

    def confirm_frames(self, handles: list[Any]) -> bytes:
        return b"".join([b"delete " + job_id + b"\r\n" for job_id in handles])

    def check_confirmed(self, replies: list[Any]) -> None:
        for word, job_id, _ in replies:
            if word != b"DELETED":
                raise BenchFailure(f"beanstalkd delete: got {_line(word, job_id)}")


def _line(word: bytes, rest: bytes) -> str:
    return repr(word + b" " + rest if word != b"?" else rest)


async def _beanstalkd_line(reader: asyncio.StreamReader, expected: bytes) -> bytes:
    line = await reader.readline()
    if not line.startswith(expected):
        raise BenchFailure(f"beanstalkd: expected {expected.decode()}, got {line!r}")
    return line


async def _beanstalkd_body(reader: asyncio.StreamReader) -> bytes:
    """The body of an ``OK <bytes>`` reply."""
    line = await _beanstalkd_line(reader, b"OK ")
    return (await reader.readexactly(int(line.split()[1]) + 2))[:-2]


# --- Redis --------------------------------------------------------------------------


def _resp(*parts: bytes) -> bytes:
    """One command in RESP, as a client sends it."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _resp_head(size: int, *parts: bytes) -> bytes:
    """A command of ``parts`` and one more argument of ``size`` bytes, up to that argument's bytes."""
    arguments = b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
    return b"*%d\r\n" % (len(parts) + 1) + arguments + b"$%d\r\n" % size


def _resp_parser() -> Callable[[bytes], list[Any]]:
    """Replies decoded by hiredis's C reader: ints, bytes, lists, ``None`` for nil, ``ReplyError`` values for errors."""
    reader = hiredis.Reader()
    feed, gets = reader.feed, reader.gets

    def parse(data: bytes) -> list[Any]:
        feed(data)
        replies = []
        reply = gets()
        while reply is not False:
            replies.append(reply)
            reply = gets()
        return replies

    return parse


async def redis_call(address: tuple[str, int], *commands: Sequence[bytes]) -> list[Any]:
    """Send ``commands`` on a fresh connection; return their replies, raising `BenchFailure` on any error reply."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"".join(_resp(*command) for command in commands))
        parse = _resp_parser()
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await reader.read(65536)
            if not data:
                raise BenchFailure("redis closed the connection during setup")
            replies += parse(data)
    finally:
        writer.close()
        await writer.wait_closed()
    for command, reply in zip(commands, replies):
        if isinstance(reply, hiredis.ReplyError):
            raise BenchFailure(f"redis {b' '.join(command).decode()}: {reply}")
    return replies


class RedisListDriver(Driver):
    """The reliable-queue pattern on Redis lists: ``LMOVE`` into a processing list, ``LREM`` to confirm.

    Redis has no in-flight timeout here: a real deployment needs a reaper that
    moves stale entries back, which this load test does not run. Payloads are
    unique (`Driver.payloads`), so ``LREM`` compares payloads along the
    processing list until it finds its own, as it would in a real deployment.
    """

    name = "redis-list"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.key = config.queue.encode()
        self.processing = b"processing"
        self._lrem = b"*4\r\n$4\r\nLREM\r\n" + b"$%d\r\n%s\r\n$1\r\n1\r\n" % (len(self.processing), self.processing)

    async def prepare(self, address: tuple[str, int]) -> None:
        await redis_call(address, (b"DEL", self.key, self.processing))

    def new_parser(self) -> Callable[[bytes], list[Any]]:
        return _resp_parser()

    def send_frames(self, count: int) -> bytes:
        head = _resp_head(len(self.payload), b"RPUSH", self.key)
        return b"".join([head + payload + b"\r\n" for payload in self.payloads(count)])

    def check_sent(self, replies: list[Any]) -> None:
        for reply in replies:
            if type(reply) is not int:
                raise BenchFailure(f"redis RPUSH: got {reply!r}")

    def read_frames(self, count: int) -> bytes:
        return _resp(b"LMOVE", self.key, self.processing, b"LEFT", b"RIGHT") * count

    def take_messages(self, replies: list[Any]) -> list[Any]:
        intact = self.intact
        handles = []
        for reply in replies:
            if reply is None:
                continue
            if type(reply) is not bytes or not intact(reply):
                raise BenchFailure(f"redis LMOVE: got {reply!r:.80}")
            handles.append(reply)
        return handles

    def confirm_frames(self, handles: list[Any]) -> bytes:
        lrem = self._lrem
        return b"".join([lrem + b"$%d\r\n%s\r\n" % (len(value), value) for value in handles])

    def check_confirmed(self, replies: list[Any]) -> None:
        for reply in replies:
            if reply != 1 or type(reply) is not int:
                raise BenchFailure(f"redis LREM: got {reply!r}")


class RedisStreamDriver(Driver):
    """The consumer-group pattern on a Redis stream: ``XREADGROUP`` delivers, ``XACK`` confirms.

    ``XACK`` removes the entry from the pending list but not from the stream,
    which keeps every entry until `prepare` deletes the key before the next run.
    Redelivery after a timeout would be ``XAUTOCLAIM`` by a reaper, not run here.
    """

    name = "redis-stream"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.key = config.queue.encode()
        self.group = b"g"
        self._xack = b"*4\r\n$4\r\nXACK\r\n" + b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(self.key),
            self.key,
            len(self.group),
            self.group,
        )

    async def prepare(self, address: tuple[str, int]) -> None:
        await redis_call(
            address,
            (b"DEL", self.key),
            (b"XGROUP", b"CREATE", self.key, self.group, b"$", b"MKSTREAM"),
        )

    def new_parser(self) -> Callable[[bytes], list[Any]]:
        return _resp_parser()

    def send_frames(self, count: int) -> bytes:
        head = _resp_head(len(self.payload), b"XADD", self.key, b"*", b"d")
        return b"".join([head + payload + b"\r\n" for payload in self.payloads(count)])

    def check_sent(self, replies: list[Any]) -> None:
        for reply in replies:
            if type(reply) is not bytes:
                raise BenchFailure(f"redis XADD: got {reply!r}")

    def read_frames(self, count: int) -> bytes:
        command = _resp(b"XREADGROUP", b"GROUP", self.group, b"c", b"COUNT", b"1", b"STREAMS", self.key, b">")
        return command * count

    def take_messages(self, replies: list[Any]) -> list[Any]:
        intact, key = self.intact, self.key
        handles = []
        for reply in replies:
            if reply is None:
                continue
            try:
                [[stream, [[entry_id, [field, value]]]]] = reply
            except (TypeError, ValueError):
                raise BenchFailure(f"redis XREADGROUP: got {reply!r:.120}") from None
            if stream != key or field != b"d" or not intact(value):
                raise BenchFailure(f"redis XREADGROUP: entry {entry_id!r} corrupted")
            handles.append(entry_id)
        return handles

    def confirm_frames(self, handles: list[Any]) -> bytes:
        xack = self._xack
        return b"".join([xack + b"$%d\r\n%s\r\n" % (len(entry_id), entry_id) for entry_id in handles])

    def check_confirmed(self, replies: list[Any]) -> None:
        for reply in replies:
            if reply != 1 or type(reply) is not int:
                raise BenchFailure(f"redis XACK: got {reply!r}")


class RedisBatchDriver(Driver):
    """Batches on a Redis list: ``RPUSH`` of ``config.batch`` values, ``LPOP key <batch>``; nothing to confirm.

    `take_messages` returns one handle per message popped (the payload itself),
    so the engine counts messages, not requests; `confirm_replies` is 0, which
    tells the engine to skip the confirm exchange.
    """

    name = "redis-list-batch"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.key = config.queue.encode()

    async def prepare(self, address: tuple[str, int]) -> None:
        await redis_call(address, (b"DEL", self.key))

    def new_parser(self) -> Callable[[bytes], list[Any]]:
        return _resp_parser()

    def send_frames(self, count: int) -> bytes:
        batch, size = self.config.batch, len(self.payload)
        command = b"*%d\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n" % (batch + 2, len(self.key), self.key)
        value = b"$%d\r\n" % size
        payloads = self.payloads(count * batch)
        return b"".join(
            command + b"".join([value + payload + b"\r\n" for payload in payloads[start : start + batch]])
            for start in range(0, len(payloads), batch)
        )

    def check_sent(self, replies: list[Any]) -> None:
        for reply in replies:
            if type(reply) is not int:
                raise BenchFailure(f"redis RPUSH: got {reply!r}")

    def read_frames(self, count: int) -> bytes:
        return _resp(b"LPOP", self.key, b"%d" % self.config.batch) * count

    def take_messages(self, replies: list[Any]) -> list[Any]:
        intact = self.intact
        handles: list[Any] = []
        for reply in replies:
            if reply is None:  # the list is empty (or gone)
                continue
            if type(reply) is not list or not all(map(intact, reply)):
                raise BenchFailure(f"redis LPOP: got {reply!r:.80}")
            handles += reply
        return handles

    def confirm_frames(self, handles: list[Any]) -> bytes:
        return b""

    def confirm_replies(self, handles: list[Any]) -> int:
        return 0

    def check_confirmed(self, replies: list[Any]) -> None:
        if replies:
            raise BenchFailure(f"redis-list-batch has no confirms, yet got {len(replies)} replies")


# --- the floor --------------------------------------------------------------------


class FloorDriver(DbQueueDriver):
    """dbqueue's driver against `floor.py`, which answers ENQUEUE, READ and CONFIRM only: nothing to prepare."""

    name = "floor"

    async def prepare(self, address: tuple[str, int]) -> None:
        return None


# --- server launchers ---------------------------------------------------------------

_install_attempted = False


def ensure_installed(*programs: str) -> str | None:
    """Return ``None`` if every program is on ``PATH``, else why not.

    The first time a program is missing and we run as root, try
    ``apt-get install -y beanstalkd redis-server`` once for the whole process.
    """
    missing = [program for program in programs if shutil.which(program) is None]
    if not missing:
        return None
    global _install_attempted
    note = ""
    if not _install_attempted and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_attempted = True
        print("installing beanstalkd and redis-server with apt-get ...", file=sys.stderr)
        done = subprocess.run(
            ["apt-get", "install", "-y", "beanstalkd", "redis-server"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        missing = [program for program in programs if shutil.which(program) is None]
        if not missing:
            return None
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            note = f"; `apt-get install -y beanstalkd redis-server` failed: {tail[0]}"
        else:
            note = "; `apt-get install -y beanstalkd redis-server` did not provide it"
    elif _install_attempted:
        note = "; apt-get install was already tried"
    else:
        note = "; not root, so apt-get install was not tried"
    return f"{', '.join(missing)} not found on PATH{note}"


class ServerUnavailable(RuntimeError):
    """A server could not be started: not installed, or it exited or never listened."""


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A port P such that P .. P+count-1 are all free right now (another process may still take one before us)."""
    for _attempt in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            try:
                for other in range(port + 1, port + count):
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                        probe.bind((host, other))
            except OSError:  # taken, or past 65535: try another start
                continue
            return port
    raise OSError(f"no {count} consecutive free ports on {host}")


def process_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = process_stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


class ServerProcess(ABC):
    """One server as a child process on a free loopback port, in its own temporary directory.

    `start` raises `ServerUnavailable` if the program is missing, exits early or
    does not accept connections within ``start_timeout`` seconds; `stop` is
    safe to call at any time and more than once. ``durable`` asks for the
    system's write-ahead log (see each subclass); it is off by default.
    """

    name: str
    program: str  # looked up on PATH; "" for none
    ports = 1  # it listens on ``port`` .. ``port + ports - 1``
    start_timeout = 15.0
    stop_timeout = 5.0

    def __init__(self, *, host: str = "127.0.0.1", durable: bool = False) -> None:
        self.host = host
        self.durable = durable
        self.port = 0
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._ended = ""  # how the server ended, when it did so on its own before `stop`

    @abstractmethod
    def command(self, port: int, workdir: Path) -> list[str]:
        """The command line that starts the server on ``port`` with ``workdir`` for its files."""

    def environment(self) -> dict[str, str] | None:
        return None

    def unavailable(self) -> str | None:
        """Why this server cannot run here, or ``None``."""
        return ensure_installed(self.program) if self.program else None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every address it listens on: just `address`, unless it is a group of servers."""
        return [(self.host, self.port + i) for i in range(self.ports)]

    def pids(self) -> list[int]:
        """The processes whose CPU and memory are the server's: the one we started (a group adds its workers)."""
        return [self.process.pid] if self.process is not None else []

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def version(self) -> str:
        """The server's own version string, or ``"?"``."""
        return "?"

    def describe(self) -> str:
        """``<version> on <host>:<port> (pid <pid>)`` (a group's ports as a range), once it has started."""
        ports = f"{self.port}" if self.ports == 1 else f"{self.port}-{self.port + self.ports - 1}"
        return f"{self.version()} on {self.host}:{ports} (pid {self.pid})"

    def start(self) -> ServerProcess:
        reason = self.unavailable()
        if reason:
            raise ServerUnavailable(f"{self.name}: {reason}")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"dbqueue-bench-{self.name}-"))
        for _attempt in range(3):  # the free port may be taken between our probe and the server's bind
            self.port = free_port(self.host, self.ports)
            self._log = open(self.workdir / "server.log", "ab")  # noqa: SIM115  # closed by _reap, not a block
            self.process = subprocess.Popen(
                self.command(self.port, self.workdir),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,  # a Ctrl-C reaches us, and we stop the server in order
            )
            if self._wait_until_listening():
                return self
            self._reap()
        log = self.log_tail(lines=5, limit=600)
        self.stop()
        raise ServerUnavailable(f"{self.name} did not start listening on {self.host}:{self.port}: {log}")

    def _wait_until_listening(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        waiting = self.addresses
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(waiting[0], timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.02)
                continue
            waiting = waiting[1:]
            if not waiting:
                return True
        return False

    def _reap(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            self._ended = self.exit_description()  # kept: `stop` removes the log it quotes
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            # The server leads its own process group (start_new_session): whatever is still in it (a worker
            # whose supervisor was killed or crashed, a Redis rewrite child) would outlive us, so end it too.
            with contextlib.suppress(OSError):  # nothing left: the usual case
                os.killpg(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers) and remove its directory."""
        self._reap()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 2, limit: int = 300) -> str:
        """The last lines of the server's output, joined with `` | `` and cut to ``limit`` characters."""
        if self.workdir is None:
            return ""
        try:
            text = (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        tail = " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"
        return tail if len(tail) <= limit else "..." + tail[-limit:]

    def exit_description(self) -> str:
        """How the server ended, for an error message ("" while it runs, or when we stopped it)."""
        if self.process is None or self.process.returncode is None and self.process.poll() is None:
            return self._ended
        return f"the server exited with status {self.process.returncode}; its log ends: {self.log_tail()}"

    def cpu_seconds(self) -> float:
        """User plus system CPU the server has used so far; 0.0 if unknown.

        Counts all threads of every process in `pids`, and the children they
        have waited for (Redis forks one to rewrite its append-only file; a
        group's supervisor restarts workers that die: that work is the server's too).
        """
        ticks = 0
        for pid in self.pids():
            fields = process_stat(pid)
            if fields is not None:
                ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """The resident memory (``VmRSS``) of every process in `pids`, summed, in bytes; 0 if unknown."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            total += int(match.group(1)) * 1024 if match else 0
        return total

    def data_paths(self) -> list[Path]:
        """The files or directories that hold what the server keeps on disk (none when not durable)."""
        return []

    def data_description(self) -> str:
        """What `data_paths` are, in a few words."""
        return "nothing (in memory)"

    def data_bytes(self) -> int:
        """Bytes of every file under `data_paths` (their apparent sizes; preallocated space counts)."""
        total = 0
        for path in self.data_paths():
            files = path.rglob("*") if path.is_dir() else [path]
            for file in files:
                try:
                    if file.is_file():
                        total += file.stat().st_size
                except OSError:
                    pass  # removed while we walked
        return total

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class DbQueueServer(ServerProcess):
    """``python -m dbqueue.cli serve``, by default with this process's interpreter and dbqueue.

    Durable: ``--data-dir`` in the work directory, with ``--sync`` ``sync``
    ("os": each group commit reaches the kernel before its replies; "disk": it
    is fsynced too). ``workers > 1``: ``serve --workers N``, a supervisor and N
    workers on ports ``port`` .. ``port + N - 1``; SIGTERM to the supervisor
    stops them all.
    """

    name = "dbqueue"
    program = ""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        durable: bool = False,
        sync: str = "os",
        max_message_size: int | None = None,
        python: str | None = None,
        label: str = "dbqueue",
        workers: int = 1,
    ) -> None:
        if sync not in ("os", "disk"):
            raise ValueError(f"sync must be 'os' or 'disk', got {sync!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        super().__init__(host=host, durable=durable)
        self.name = label
        self.workers = self.ports = workers
        self.sync = sync
        self.max_message_size = max_message_size
        self.python = python or sys.executable  # an interpreter that has dbqueue installed

    def command(self, port: int, workdir: Path) -> list[str]:
        command = [self.python, "-m", "dbqueue.cli", "serve", "--host", self.host, "--port", str(port)]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        if self.max_message_size:
            command += ["--max-message-size", str(self.max_message_size)]
        if self.durable:
            command += ["--data-dir", str(workdir / "data"), "--sync", self.sync]
        return command + ["--log-level", "warning"]

    def pids(self) -> list[int]:
        pids = super().pids()
        # A group's supervisor does little; its live workers do the work (it has reaped only those that died).
        return pids + _children(pids[0]) if pids and self.workers > 1 else pids

    def data_paths(self) -> list[Path]:
        return [self.workdir / "data"] if self.durable and self.workdir is not None else []

    def data_description(self) -> str:
        return f"--data-dir (SQLite + WAL, --sync {self.sync})" if self.durable else super().data_description()

    def environment(self) -> dict[str, str]:
        import dbqueue

        source = str(Path(dbqueue.__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": source + (os.pathsep + path if path else "")}

    def version(self) -> str:
        import dbqueue

        return dbqueue.__version__


class FloorServer(DbQueueServer):
    """``python bench/floor.py``: dbqueue's framing on the same loop, canned replies, no queue work (see floor.py)."""

    name = "floor"

    def __init__(self, *, host: str = "127.0.0.1", python: str | None = None, label: str = "floor") -> None:
        super().__init__(host=host, python=python, label=label)

    def command(self, port: int, workdir: Path) -> list[str]:
        return [
            self.python,
            str(Path(__file__).resolve().parent / "floor.py"),
            "--host",
            self.host,
            "--port",
            str(port),
        ]

    def version(self) -> str:
        return "floor.py, dbqueue " + super().version()


class BeanstalkdServer(ServerProcess):
    """beanstalkd, in memory; durable: a binlog in the work directory, fsync at most every ``fsync_ms``.

    ``fsync_ms=1000`` matches Redis's ``appendfsync everysec``; ``None`` leaves
    beanstalkd's default (the binlog is written but never fsynced).
    """

    name = "beanstalkd"
    program = "beanstalkd"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        durable: bool = False,
        fsync_ms: int | None = 1000,
        max_job_size: int = 65535,
    ) -> None:
        super().__init__(host=host, durable=durable)
        self.fsync_ms = fsync_ms
        self.max_job_size = max_job_size

    def command(self, port: int, workdir: Path) -> list[str]:
        command = [self.program, "-l", self.host, "-p", str(port), "-z", str(self.max_job_size)]
        if self.durable:
            binlog = workdir / "binlog"
            binlog.mkdir(exist_ok=True)
            command += ["-b", str(binlog)]
            if self.fsync_ms is not None:
                command += ["-f", str(self.fsync_ms)]
        return command

    def version(self) -> str:
        return _program_output([self.program, "-v"]).removeprefix("beanstalkd ").strip() or "?"

    def data_paths(self) -> list[Path]:
        return [self.workdir / "binlog"] if self.durable and self.workdir is not None else []

    def data_description(self) -> str:
        if not self.durable:
            return super().data_description()
        fsync = f"fsync every {self.fsync_ms} ms" if self.fsync_ms is not None else "no fsync"
        return f"binlog directory ({fsync}; files are preallocated)"


class RedisServer(ServerProcess):
    """redis-server with no snapshots; durable: ``appendonly yes``, ``appendfsync everysec``."""

    name = "redis"
    program = "redis-server"

    def __init__(self, *, host: str = "127.0.0.1", durable: bool = False, label: str = "redis") -> None:
        super().__init__(host=host, durable=durable)
        self.name = label

    def command(self, port: int, workdir: Path) -> list[str]:
        command = [self.program, "--port", str(port), "--bind", self.host, "--dir", str(workdir), "--save", ""]
        command += ["--daemonize", "no"]
        if self.durable:
            return command + ["--appendonly", "yes", "--appendfsync", "everysec"]
        return command + ["--appendonly", "no"]

    def version(self) -> str:
        match = re.search(r"v=(\S+)", _program_output([self.program, "--version"]))
        return match.group(1) if match else "?"

    def data_paths(self) -> list[Path]:
        if not self.durable or self.workdir is None:
            return []
        # Redis 7 keeps a base file and increments in appendonlydir/; older ones write appendonly.aof.
        return [self.workdir / "appendonlydir", self.workdir / "appendonly.aof"]

    def data_description(self) -> str:
        return "append-only file (appendfsync everysec)" if self.durable else super().data_description()


def _program_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


# --- a script's run -----------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_guarded(
    work: Callable[[asyncio.AbstractEventLoop], None],
    failures: tuple[type[BaseException], ...],
    server: ServerProcess | None = None,
) -> int:
    """Run ``work`` with a fresh event loop, closed at the end; return the script's exit status.

    0 when ``work`` returns; 1 when it raises one of ``failures``, after a line
    ``failed: <type>: <message>`` on stderr and, when ``server`` is given and no
    longer runs, its `ServerProcess.exit_description`; 130 on Ctrl-C, after
    ``interrupted``. Anything else propagates. ``work`` starts and stops its
    servers itself (``with server:``).
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a `kill` stops the servers too, as Ctrl-C does
    loop = new_event_loop()
    try:
        work(loop)
    except failures as exc:
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if server is not None and server.exit_description():
            print(server.exit_description(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        loop.close()
    return 0
