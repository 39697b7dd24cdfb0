"""A full disk under a server with a data directory, on a real, small file system (a tmpfs the test mounts):
the server stays up, the requests whose commit failed get `StoreUnavailable` (never a success), reads and
confirms go on, it recovers by itself when space returns, a start on a full disk serves what the store
holds, and nothing acknowledged is lost, across restarts and kill -9 alike.

Mounting needs root (or CAP_SYS_ADMIN): without it the tests skip and say so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dbqueue import Client, ConnectionLost, Message
from dbqueue.errors import StoreUnavailable
from dbqueue.store.room import RESERVE_BYTES, RESERVE_NAME
from server_process import ServerProcess

if TYPE_CHECKING:
    from conftest import ServerThread

Factory = Callable[..., "ServerThread"]

MIB = 1 << 20
DISK = 16 * MIB  # the reserve (4 MiB), the store's files, and some 8 MB of messages
PAYLOAD_SIZE = 1000


class Disk:
    """A tmpfs mounted at ``path``: made full, given more room, measured."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def free(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", "tmpfs", str(self.path)], check=True)

    def fill(self) -> None:
        """Take every byte left with a file of ballast."""
        with open(self.path / "ballast", "ab") as ballast, contextlib.suppress(OSError):
            while True:
                ballast.write(bytes(64 << 10))
                ballast.flush()

    def empty(self) -> None:
        (self.path / "ballast").unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        reason = mounted.stderr.decode(errors="replace").strip()
        pytest.skip(f"a small file system of its own is needed (mount -t tmpfs, as root): {reason}")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def payload(n: int) -> bytes:
    return b"%08d" % n + bytes(PAYLOAD_SIZE - 8)


def fill_queue(address: str, start: int = 0, limit: int = 50_000) -> tuple[list[tuple[int, bytes]], str]:
    """Send until a send is refused; return the acknowledged (id, payload) pairs and the refusal's text."""
    acked: list[tuple[int, bytes]] = []
    with Client.connect(address, timeout=10) as client:
        for n in range(start, start + limit):
            try:
                acked.append((client.send("q", payload(n)), payload(n)))
            except StoreUnavailable as exc:  # a failed commit (then the connection is cut), or refused up front
                return acked, str(exc)
    pytest.fail(f"{limit} messages fit on a disk of {DISK} bytes")


def connect(address: str) -> Client:
    """A client, retried while a failed commit cuts connections (a Hello answered in that batch is refused)."""
    for _ in range(50):
        try:
            return Client.connect(address, timeout=10)
        except (ConnectionLost, StoreUnavailable):
            time.sleep(0.05)
    pytest.fail(f"cannot connect to {address}")


def read_all(client: Client) -> list[tuple[int, bytes]]:
    found = []
    while (message := client.read("q")) is not None:
        found.append((message.id, message.data))
    return found


def test_a_full_disk_refuses_what_it_cannot_store_and_recovers_by_itself(server_factory: Factory, disk: Disk) -> None:
    data = disk.path / "data"
    server = server_factory(data_dir=data, reclaim_interval=0.1)
    with Client.connect(server.address) as client:
        client.create("q")
    started = time.monotonic()
    acked, refusal = fill_queue(server.address)
    filled = time.monotonic() - started
    assert "the disk is full" in refusal and str(data) in refusal
    assert len(acked) > 1000
    # What the failed commit gave back can be just enough for a probe to find room again and accept
    # sends: leave 2 MiB free (room for the confirms' log, not for the probe), and send until a send is
    # refused again (any accepted meanwhile count as acknowledged).
    with open(disk.path / "ballast", "wb") as ballast:
        ballast.write(bytes(max(0, disk.free() - 2 * MIB)))
    with connect(server.address) as producer:
        for n in range(10**7, 10**7 + 5000):
            try:
                acked.append((producer.send("q", payload(n)), payload(n)))
            except StoreUnavailable:
                break
            except ConnectionLost:
                break  # the failed commit cut the connection: its reply was StoreUnavailable or nothing
    # The server stays up, degraded: the reason is there for the admission checks to refuse sends with.
    state = server.call(lambda: server.server.store_unavailable)
    assert state is not None and "the disk is full" in state
    assert not (data / RESERVE_NAME).exists()  # its room given back for the confirms
    # Reads and confirms go on, and the confirms are stored.
    with Client.connect(server.address) as consumer:
        assert consumer.stats("q")["ready"] == len(acked)
        read: list[Message] = []
        for _ in range(300):
            message = consumer.read("q", visibility_timeout=60.0)
            assert message is not None
            read.append(message)
        assert [(m.id, m.data) for m in read] == acked[:300]
        for message in read:
            assert consumer.confirm(message.id) is None
        time.sleep(0.5)
        assert server.call(lambda: server.server.store_unavailable) is not None  # the disk is still full
        # Space returns: the probe takes the room back and sends are accepted again, without a restart.
        disk.resize(4 * DISK)
        grown = time.monotonic()
        server.wait_until(lambda: server.server.store_unavailable is None, timeout=5.0, what="the recovery")
        recovered = time.monotonic() - grown
        assert (data / RESERVE_NAME).stat().st_size == RESERVE_BYTES
        later = [(consumer.send("q", payload(n)), payload(n)) for n in range(10**6, 10**6 + 100)]
    server.stop()
    # After a restart: every acknowledged message not confirmed, in order; the confirmed ones gone.
    again = server_factory(data_dir=data)
    with Client.connect(again.address) as client:
        assert read_all(client) == acked[300:] + later
    print(
        f"{len(acked)} messages acknowledged in {filled:.1f} s before the first StoreUnavailable; 300 read and"
        f" confirmed while full; recovered {recovered:.2f} s after the disk grew; all {len(acked) - 300 + 100} left"
        " there after a restart, in order (lost: 0)"
    )


def test_sends_that_keep_coming_lose_nothing_acknowledged(server_factory: Factory, disk: Disk) -> None:
    # Producers that retry on every refusal: each send is acknowledged (and then kept) or refused,
    # through as many failed commits and reloads as it takes.
    data = disk.path / "data"
    server = server_factory(data_dir=data, reclaim_interval=0.1)
    with Client.connect(server.address) as client:
        client.create("q")
    acked: list[tuple[int, bytes]] = []
    refused = 0
    client = connect(server.address)
    try:
        n = 0
        while refused < 20:  # a failed commit reloads the store: a few dozen are enough to show it
            n += 1
            try:
                acked.append((client.send("q", payload(n)), payload(n)))
            except StoreUnavailable:
                refused += 1
            except ConnectionLost:
                client.close()
                client = connect(server.address)
    finally:
        client.close()
    assert refused and len(acked) > 1000
    disk.resize(4 * DISK)
    server.wait_until(lambda: server.server.store_unavailable is None, timeout=5.0, what="the recovery")
    server.stop()
    again = server_factory(data_dir=data)
    with Client.connect(again.address) as client:
        assert read_all(client) == acked
    print(f"{len(acked)} sends acknowledged, {refused} refused; after a restart all acknowledged there (lost: 0)")


def test_a_start_on_a_full_disk_serves_what_the_store_holds(tmp_path: Path, disk: Disk) -> None:
    server = ServerProcess(disk.path / "data")
    try:
        server.start()
        with server.client() as client:
            client.create("q")
            acked = [(client.send("q", payload(n)), payload(n)) for n in range(2000)]
        server.stop("sigterm")
        (disk.path / "data" / RESERVE_NAME).unlink()  # the worst case: no room kept either
        disk.fill()
        assert disk.free() < 64 << 10
        server.start()  # starts all the same
        with server.client() as client:
            assert client.stats("q")["ready"] == len(acked)
            message = client.read("q", visibility_timeout=60.0)
            assert message is not None and (message.id, message.data) == acked[0]
            with pytest.raises(StoreUnavailable):  # nothing can be written: the change is refused, not promised
                client.confirm(message.id)
        assert "sends refused until the store can write again" in server.log_tail(200)
        server.kill()  # kill -9 while degraded, and a start on the disk still full
        server.start()
        disk.empty()
        time.sleep(2.5)  # a probe or two
        assert "the store writes again" in server.log_tail(200)
        with server.client() as client:
            more = [(client.send("q", payload(n)), payload(n)) for n in range(2000, 2100)]
            found = read_all(client)
        assert found == acked + more
        server.check_log()
    finally:
        server.close()
