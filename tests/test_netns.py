"""A group of three hosts on one network, one cut off mid-load and brought back.

Each member is a `dbqueue serve` in a network namespace of its own (its own
address, its own loopback), plugged by a veth pair into a bridge in the root
namespace, where the clients run: three hosts on one LAN, as far as the
servers and clients can tell. Mid-load, the cut-off host's port on the bridge
goes down (``ip link set ... down``): packets to and from it vanish, no RST,
no FIN, as when a cable is pulled. Then it comes back.

What must hold is the README's promise, at least once:

* every message whose send was answered (an id) is delivered and confirmed:
  at the end no member holds anything, and every member confirmed exactly
  the ids it handed out;
* a message is delivered twice only if the cut could have caused it: it was
  handed out by the cut-off member before the link came back (in flight when
  it went down, or read from a connection that was dying), or its send was
  under way while the host was cut off (sent again to another member after
  the first answer was lost).

Needs root and a working ``ip netns``; skipped otherwise. Names carry the pid,
so runs do not collide, and leftovers of a run that was killed are removed by
the next one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbqueue import NEVER, Client, ConnectionLost, DbQueueError
from dbqueue.client.group import GroupClient, member_of

HOSTS = 3
PORT = 3000
CLIENT_TIMEOUT = 1.0  # seconds a group client waits on a silent member before failing over
READ_TIMEOUT = 5.0  # seconds: the in-flight timeout: well above what a consumer may block on a cut-off member
PRODUCERS = 3
CONSUMERS = 3
BEFORE_CUT = 1.5
CUT = 2.5
AFTER_CUT = 3.0  # a reconnect attempt under way at the mend may take CLIENT_TIMEOUT, then RETRY_SECONDS
DRAIN_LIMIT = 15.0
HELD = 20  # messages in flight on the cut-off host when it goes
TOKEN = "netns-test-token"  # the servers listen on non-loopback addresses: they refuse to without one


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=10)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_leftovers() -> None:
    """Delete namespaces and links of earlier runs whose process is gone (a run killed before its cleanup)."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(r"dbqt-(\d+)-\d+", line)
        if match and not _alive(int(match.group(1))):
            ip("netns", "del", match.group(0), check=False)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        match = re.match(r"\d+: (dqb(\d+))[@:]", line)
        if match and not _alive(int(match.group(2))):
            ip("link", "del", match.group(1), check=False)


def free_subnet() -> ipaddress.IPv4Network:
    routes = ip("-4", "route", "show", "table", "all", check=False).stdout + ip("-4", "addr", check=False).stdout
    for third in [os.getpid() % 250, *range(250)]:
        subnet = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if f"10.213.{third}." not in routes:
            return subnet
    pytest.skip("no free 10.213.x.0/24 subnet for the test network")


class Lan:
    """A bridge in the root namespace and ``HOSTS`` namespaces plugged into it, each with a server."""

    def __init__(self, tmp_path: Path) -> None:
        pid = os.getpid()
        self.tmp_path = tmp_path
        self.bridge = f"dqb{pid}"
        self.namespaces = [f"dbqt-{pid}-{i}" for i in range(HOSTS)]
        self.ports = [f"dqh{pid}{i}" for i in range(HOSTS)]  # the hosts' ends, on the bridge
        subnet = free_subnet()
        hosts = list(subnet.hosts())
        self.hosts = [str(hosts[i]) for i in range(HOSTS)]
        self.gateway = f"{hosts[-1]}/{subnet.prefixlen}"
        self.addresses = [f"{host}:{PORT}" for host in self.hosts]
        self.servers: list[subprocess.Popen[bytes]] = []
        self.logs = [tmp_path / f"host-{i}.log" for i in range(HOSTS)]
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")

    def build(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", self.gateway, "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, (netns, port) in enumerate(zip(self.namespaces, self.ports)):
            inner = f"dqn{os.getpid()}{i}"
            ip("netns", "add", netns)
            ip("link", "add", port, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", netns)
            ip("link", "set", port, "master", self.bridge)
            ip("link", "set", port, "up")
            ip("addr", "add", f"{self.hosts[i]}/{self.gateway.split('/')[1]}", "dev", inner, netns=netns)
            ip("link", "set", inner, "up", netns=netns)
            ip("link", "set", "lo", "up", netns=netns)

    def start_servers(self) -> None:
        peers = ",".join(self.addresses)
        for netns, host, log_path in zip(self.namespaces, self.hosts, self.logs):
            with open(log_path, "wb") as log:
                self.servers.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", netns, sys.executable, "-m", "dbqueue.cli", "serve",
                         "--host", host, "--port", str(PORT), "--peers", peers, "--log-level", "info",
                         "--auth-token-file", str(self.token_file)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
        deadline = time.monotonic() + 10.0
        for address in self.addresses:
            while True:
                try:
                    Client.connect(address, timeout=0.5, token=TOKEN).close()
                    break
                except ConnectionLost:
                    if time.monotonic() > deadline or any(server.poll() is not None for server in self.servers):
                        pytest.fail(f"the servers did not come up:\n{self.log_tails()}")
                    time.sleep(0.05)

    def cut(self, index: int) -> None:
        ip("link", "set", self.ports[index], "down")

    def mend(self, index: int) -> None:
        ip("link", "set", self.ports[index], "up")

    def log_tails(self) -> str:
        return "\n".join(
            f"--- host {i}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for i, path in enumerate(self.logs)
            if path.exists()
        )

    def tear_down(self) -> None:
        for server in self.servers:
            if server.poll() is None:
                server.kill()
                server.wait(5)
        for netns in self.namespaces:
            ip("netns", "del", netns, check=False)  # takes each veth pair with it
        for port in self.ports:
            ip("link", "del", port, check=False)
        ip("link", "del", self.bridge, check=False)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, veth pairs and a bridge (ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` command (iproute2)")
    remove_leftovers()
    probe = f"dbqt-{os.getpid()}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` fails here: {made.stderr.strip()}")
    ip("netns", "del", probe, check=False)
    network = Lan(tmp_path)
    try:
        try:
            network.build()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot build the test network: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
        network.start_servers()
        yield network
    finally:
        network.tear_down()


class Load:
    """Producers and consumers, each a thread with a `GroupClient` of its own, and what they saw."""

    def __init__(self, first_address: str) -> None:
        self.first_address = first_address
        self.producing = threading.Event()
        self.consuming = threading.Event()
        self.lock = threading.Lock()
        self.sent: list[tuple[bytes, int, float, float]] = []  # payload, id, call start, call end
        self.unanswered: list[tuple[bytes, float, BaseException]] = []
        self.deliveries: list[tuple[bytes, int, float]] = []  # payload, id, read call start
        self.confirmed: list[int] = []
        self.refused: list[tuple[int, BaseException]] = []  # a confirm that raised or got an error back
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard, args=(self.produce, i)) for i in range(PRODUCERS)]
        self.threads += [threading.Thread(target=self._guard, args=(self.consume, i)) for i in range(CONSUMERS)]

    def start(self) -> None:
        self.producing.set()
        self.consuming.set()
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.producing.clear()
        self.consuming.clear()
        for thread in self.threads:
            thread.join(10)

    def _guard(self, target, index: int) -> None:  # type: ignore[no-untyped-def]
        try:
            target(index)
        except BaseException as exc:
            self.errors.append(exc)

    def produce(self, index: int) -> None:
        with GroupClient.connect(self.first_address, CLIENT_TIMEOUT, token=TOKEN) as group:
            sequence = 0
            while self.producing.is_set():
                payload = b"%d-%d" % (index, sequence)
                sequence += 1
                started = time.monotonic()
                try:
                    id_ = group.send("q", payload)
                except ConnectionLost as exc:  # every member failed it: maybe queued, maybe not
                    self.unanswered.append((payload, started, exc))
                    continue
                with self.lock:
                    self.sent.append((payload, id_, started, time.monotonic()))

    def consume(self, index: int) -> None:
        with GroupClient.connect(self.first_address, CLIENT_TIMEOUT, token=TOKEN) as group:
            while self.consuming.is_set():
                started = time.monotonic()
                got = group.read_batch("q", 16, visibility_timeout=READ_TIMEOUT)
                if not got:
                    time.sleep(0.005)
                    continue
                with self.lock:
                    self.deliveries.extend((message.data, message.id, started) for message in got)
                by_member: dict[int, list[int]] = defaultdict(list)
                for message in got:
                    by_member[member_of(message.id)].append(message.id)
                for ids in by_member.values():  # one member's trouble leaves the others' confirms alone
                    try:
                        results = group.confirm_batch(ids)
                    except DbQueueError as exc:
                        self.refused.extend((id_, exc) for id_ in ids)
                        continue
                    for id_, result in zip(ids, results):
                        if result is None:
                            self.confirmed.append(id_)
                        else:
                            self.refused.append((id_, result))


def test_a_host_cut_off_mid_load_loses_nothing(lan: Lan) -> None:
    started = time.monotonic()
    cut = 1
    with GroupClient.connect(lan.addresses[0], CLIENT_TIMEOUT, token=TOKEN) as admin:
        assert admin.addresses == lan.addresses  # discovered over the bridge
        admin.create("q")
    direct = [Client.connect(address, timeout=5.0, token=TOKEN) for address in lan.addresses]
    load = Load(lan.addresses[0])
    try:
        load.start()
        time.sleep(BEFORE_CUT)
        # A consumer connected to the host about to go takes messages with no timeout (they come back only when its
        # connection closes), and dies while the host is cut off: its FIN is lost with the link.
        stalled = Client.connect(lan.addresses[cut], timeout=5.0, token=TOKEN)
        pipeline = stalled.pipeline()
        pipeline.send_batch("q", [b"held-%d" % i for i in range(HELD)]).read_batch("q", HELD, visibility_timeout=NEVER)
        sent_ids, held = pipeline.execute(raise_on_error=True)
        now = time.monotonic()
        held_ids = [message.id for message in held]
        assert len(held_ids) == HELD  # the oldest ready there: maybe some of the load's, then these
        with load.lock:
            load.sent.extend((b"held-%d" % i, id_, now, now) for i, id_ in enumerate(sent_ids))
            load.deliveries.extend((message.data, message.id, now) for message in held)
        cut_at = time.monotonic()
        lan.cut(cut)
        time.sleep(0.2)
        stalled.close()
        time.sleep(CUT - 0.2)
        lan.mend(cut)
        mended_at = time.monotonic()
        time.sleep(AFTER_CUT)
        load.producing.clear()
        for thread in load.threads[:PRODUCERS]:
            thread.join(10)

        # Drain: until every answered send was delivered and no member holds anything.
        answered = {payload for payload, *_ in load.sent}
        deadline = time.monotonic() + DRAIN_LIMIT
        while True:
            delivered = {payload for payload, *_ in load.deliveries}
            if answered <= delivered:
                left = [client.stats("q") for client in direct]
                if all(s["ready"] == s["in_flight"] == s["delayed"] == 0 for s in left):
                    break
            if time.monotonic() > deadline or load.errors:
                break
            time.sleep(0.1)
    finally:
        load.join()
    assert load.errors == [], load.errors
    stats = [client.stats("q") for client in direct]
    for client in direct:
        client.close()
    elapsed = time.monotonic() - started

    sends_by_payload: dict[bytes, list[tuple[int, float, float]]] = defaultdict(list)
    for payload, id_, call_start, call_end in load.sent:
        sends_by_payload[payload].append((id_, call_start, call_end))
    deliveries_by_id: dict[int, list[float]] = defaultdict(list)
    ids_by_payload: dict[bytes, set[int]] = defaultdict(set)
    for payload, id_, read_start in load.deliveries:
        deliveries_by_id[id_].append(read_start)
        ids_by_payload[payload].add(id_)

    summary = (
        f"{len(load.sent)} sends answered, {len(load.unanswered)} unanswered, {len(load.deliveries)} deliveries "
        f"of {len(deliveries_by_id)} ids, {len(load.confirmed)} confirms answered, {len(load.refused)} refused; "
        f"left per member {[(s['ready'], s['in_flight'], s['delayed']) for s in stats]}; {elapsed:.1f}s\n"
        f"{lan.log_tails()}"
    )

    # The group kept working while a host was cut off, and used it again once it was back.
    during = [id_ for _, id_, call_start, _ in load.sent if cut_at + 2 * CLIENT_TIMEOUT < call_start < mended_at]
    assert during and all(member_of(id_) != cut for id_ in during), summary
    assert any(member_of(id_) == cut for _, id_, call_start, _ in load.sent if call_start > mended_at), summary

    # Nothing lost: every answered send delivered; nothing left; each member confirmed each id it handed out once.
    missing = set(sends_by_payload) - set(ids_by_payload)
    assert not missing, f"{len(missing)} answered sends never delivered, e.g. {sorted(missing)[:5]}\n{summary}"
    assert all(s["ready"] == s["in_flight"] == s["delayed"] == 0 for s in stats), summary
    for member in range(HOSTS):
        handed_out = {id_ for id_ in deliveries_by_id if member_of(id_) == member}
        assert stats[member]["confirmed"] == len(handed_out), f"member {member}\n{summary}"

    # The messages held on the cut-off host came back once it returned, and were delivered again.
    assert all(len(deliveries_by_id[id_]) >= 2 and max(deliveries_by_id[id_]) > mended_at for id_ in held_ids), summary

    # Duplicates only where the cut explains them.
    for id_, reads in deliveries_by_id.items():
        if len(reads) > 1:
            assert member_of(id_) == cut and min(reads) < mended_at, (
                f"message {id_} (member {member_of(id_)}) delivered {len(reads)} times, first read at "
                f"{min(reads) - cut_at:+.2f}s from the cut\n{summary}"
            )
    for payload, ids in ids_by_payload.items():
        if len(ids) > 1:  # the same payload queued under two ids: sent again after a lost answer
            assert any(start < mended_at and end > cut_at for _, start, end in sends_by_payload[payload]), (
                f"{payload!r} queued as {sorted(ids)} though its send did not overlap the cut\n{summary}"
            )
    assert elapsed < 30, summary
