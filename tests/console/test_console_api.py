"""The console's API over real HTTP: who may call it, what each call does to the server, and the samples.

Every test starts a real `Server` with its HTTP listener (``http_port=0``) and
speaks to the console as its page does (`console_kit.Api`); what an action
did is checked with the native client, on the native port.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from console_kit import Api, figures, key, wait_for

from child_server import ChildServer, free_port
from dbqueue import Client
from dbqueue.server.console import BYTES_PER_QUEUE, Sampler
from dbqueue.server.console.sampler import COARSE_SAMPLES, COARSE_STEP, FINE_SAMPLES, History
from dbqueue.server.console.sessions import host_allowed
from dbqueue.server.http import HttpListener
from dbqueue.server.mover import MOVE_STEP

TOKEN = "console-secret-token"


@pytest.fixture
def served(server_factory: Callable[..., Any]) -> Any:
    """A server without a token, its HTTP listener on loopback."""
    return server_factory(http_port=0)


def api_of(thread: Any) -> Api:
    return Api(thread.server.http_port)


# --- who may call it ---------------------------------------------------------------------------------------------


def test_the_page_and_its_assets_with_strict_headers(served: Any) -> None:
    api = api_of(served)
    status, headers, body = api.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/console/static/console.js" in body
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    for asset, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        status, headers, _ = api.request("GET", f"/console/static/{asset}")
        assert status == 200 and headers["content-type"].startswith(kind)
    assert api.request("GET", "/console/static/../web.py")[0] == 404
    assert api.request("GET", "/console/static/nothing.js")[0] == 404


def test_without_a_token_on_loopback_a_session_is_given_and_every_call_needs_it(served: Any) -> None:
    api = api_of(served)
    status, _, answer = api.request("GET", "/console/api/overview")
    assert status == 401 and answer == {"error": "log in first"}
    status, headers, answer = api.request("GET", "/console/api/session")
    assert status == 200 and answer["authenticated"] and not answer["login_required"]
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    api.csrf = answer["csrf"]
    assert api.get("overview")["queues"] == []
    stranger = Api(api.port)
    for method, call in (("GET", "queue?q=00"), ("GET", "peek?q=00"), ("GET", "events"), ("POST", "purge")):
        assert stranger.request(method, f"/console/api/{call}", {} if method == "POST" else None)[0] == 401


def test_with_a_token_the_login_blocks_a_wrong_one_and_logout_ends_the_session(
    server_factory: Callable[..., Any],
) -> None:
    thread = server_factory(http_port=0, auth_token=TOKEN.encode())
    api = api_of(thread)
    status, headers, answer = api.request("GET", "/console/api/session")
    assert answer == {"authenticated": False, "login_required": True, "csrf": None, "server": None, "version": None}
    assert "set-cookie" not in headers
    began = time.monotonic()
    assert api.login("wrong") == 401
    assert time.monotonic() - began >= 0.9  # a guess a second
    assert api.cookie is None and api.request("GET", "/console/api/overview")[0] == 401
    assert api.login(TOKEN) == 200
    assert api.get("overview")["server"]
    status, headers, _ = api.request("POST", "/console/api/logout", {})
    assert status == 200 and "Max-Age=0" in headers["set-cookie"]
    # The session is over on the server, not only in the browser: its cookie, replayed, is refused.
    replay = Api(api.port)
    replay.cookie, replay.csrf = api.cookie, api.csrf
    assert replay.request("GET", "/console/api/overview")[0] == 401


def test_state_changing_calls_need_the_csrf_token_json_and_our_origin(served: Any) -> None:
    api = api_of(served)
    api.open()
    with Client.connect(served.address) as native:
        native.create("guarded")
        native.send("guarded", b"kept")
    body = {"q": key("guarded")}
    assert api.request("POST", "/console/api/purge", body, csrf=False)[0] == 403
    assert api.request("POST", "/console/api/purge", body, headers={"X-Dbqueue-Csrf": "forged"})[0] == 403
    origin = {"Origin": "https://evil.example"}
    assert api.request("POST", "/console/api/purge", body, headers=origin)[0] == 403
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert api.request("POST", "/console/api/purge", body, headers=form)[0] == 415
    assert api.request("GET", "/console/api/purge")[0] == 405
    with Client.connect(served.address) as native:
        assert native.stats("guarded")["ready"] == 1  # nothing refused changed anything
    own = {"Origin": f"http://127.0.0.1:{api.port}"}
    status, answer = api.request("POST", "/console/api/purge", body, headers=own)[:2]
    assert status == 200, answer


def test_never_off_loopback_without_a_token(server_factory: Callable[..., Any]) -> None:
    thread = server_factory()

    async def make() -> HttpListener:
        listener = HttpListener(thread.server, 0, host="0.0.0.0", insecure=True)
        await listener.start()
        return listener

    listener = asyncio.run_coroutine_threadsafe(make(), thread.loop).result(5)
    try:
        api = Api(listener.port)
        status, _, body = api.request("GET", "/")
        assert status == 403 and b"needs a token" in body
        assert api.request("GET", "/console/api/session")[0] == 403
    finally:
        asyncio.run_coroutine_threadsafe(listener.stop(), thread.loop).result(5)


def test_a_rebound_name_is_refused_without_a_token(served: Any) -> None:
    # DNS rebinding: another site's name pointed at 127.0.0.1 reaches the loopback listener as "same origin".
    api = api_of(served)
    assert api.request("GET", "/console/api/session", headers={"Host": f"evil.example:{api.port}"})[0] == 403
    assert api.request("GET", "/", headers={"Host": "evil.example"})[0] == 403
    assert host_allowed(f"127.0.0.1:{api.port}") and host_allowed("localhost:80") and host_allowed("[::1]:9")
    assert not host_allowed("127.0.0.1.evil.example") and not host_allowed(None)


def test_the_sqs_api_and_metrics_still_answer_beside_the_console(served: Any) -> None:
    api = api_of(served)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    connection.request("POST", "/", body=b"Action=CreateQueue&QueueName=viasqs&Version=2012-11-05", headers=form)
    assert connection.getresponse().read().count(b"viasqs") == 1
    connection.request("GET", "/?Action=ListQueues&Version=2012-11-05")
    assert b"viasqs" in connection.getresponse().read()
    connection.request("GET", "/metrics")
    assert b"dbqueue_queue_ready" in connection.getresponse().read()
    connection.close()


# --- what it does ------------------------------------------------------------------------------------------------


def test_create_with_every_option_send_purge_delete_as_the_native_client_sees_them(served: Any) -> None:
    api = api_of(served)
    api.open()
    assert api.post("create", {"name": "dlq"})[0] == 200
    status, answer = api.post(
        "create", {"name": "work", "capacity": 5, "max_deliveries": 2, "dead_letter_queue": "dlq"}
    )
    assert status == 200 and answer["created"] and answer["key"] == key("work")
    assert api.post("create", {"name": "work"})[1]["created"] is False
    with Client.connect(served.address) as native:
        stats = native.stats("work")
        assert (stats["capacity"], stats["max_deliveries"], stats["dead_letter_queue"]) == (5, 2, "dlq")
        for n in range(3):
            status, answer = api.post("send", {"q": key("work"), "text": f"message {n}"})
            assert status == 200, answer
        assert api.post("send", {"q": key("work"), "base64": "/w=="})[0] == 200
        message = native.read("work")
        assert message is not None and message.data == b"message 0"
        status, answer = api.post("purge", {"q": key("work")})
        assert (status, answer["purged"]) == (200, 3)
        stats = native.stats("work")
        assert (stats["ready"], stats["in_flight"], stats["purged"]) == (0, 1, 3)  # a native purge's very figures
        native.confirm(message.id)
        status, _ = api.post("delete", {"q": key("work")})
        assert status == 200
        assert "work" not in [queue["name"] for queue in native.list_queues()]


def test_refusals_carry_the_native_message(served: Any) -> None:
    api = api_of(served)
    api.open()
    status, answer = api.post("purge", {"q": key("nothing")})
    assert status == 404 and "no queue named 'nothing'" in answer["error"]
    status, answer = api.post("create", {"name": ""})
    assert status == 409 and "1-255 bytes" in answer["error"]
    status, answer = api.post("create", {"name": "a", "dead_letter_queue": "missing"})
    assert status == 404 and "missing" in answer["error"]
    api.post("create", {"name": "small", "capacity": 1})
    assert api.post("send", {"q": key("small"), "text": "one"})[0] == 200
    status, answer = api.post("send", {"q": key("small"), "text": "two"})
    assert status == 409 and "full" in answer["error"]
    assert api.post("send", {"q": "zz", "text": "x"})[0] == 400
    assert api.post("send", {"q": key("small"), "text": "x", "delay": -1})[0] == 409
    big = "x" * (served.server.max_message_size + 1)
    status, answer = api.post("send", {"q": key("small"), "text": big})
    assert status in (409, 413) and answer["error"]


def test_a_delayed_send_from_the_console(served: Any) -> None:
    api = api_of(served)
    api.open()
    api.post("create", {"name": "later"})
    assert api.post("send", {"q": key("later"), "text": "soon", "delay": 0.3})[0] == 200
    with Client.connect(served.address) as native:
        assert native.stats("later")["delayed"] == 1
        message = native.read("later", wait=3.0)
        assert message is not None and message.data == b"soon"


# --- figures and samples -----------------------------------------------------------------------------------------


def test_the_overview_counts_and_rates_under_load(served: Any) -> None:
    api = api_of(served)
    api.open()
    with Client.connect(served.address) as native:
        native.create("busy")
        for _ in range(10):
            native.send_batch("busy", [b"m"] * 20)
            time.sleep(0.1)
        message = native.read("busy")
        assert message is not None
        wait_for(lambda: figures(api, "busy")["rates"]["sent"] > 0, what="a sent rate")
        busy = figures(api, "busy")
        assert (busy["ready"], busy["in_flight"], busy["capacity"]) == (199, 1, busy["capacity"])
        wait_for(lambda: figures(api, "busy")["sparkline"][-1] == 200, what="the sparkline to hold the read")
        page = wait_for(
            lambda: (page := api.get(f"queue?q={key('busy')}"))["history"]["fine"]["in_flight"][-1] == 1 and page,
            what="the queue's samples to see the read",
        )
        assert page["queue"]["name"] == "busy" and page["history"]["fine"]["ready"][-1] == 199
        assert page["ring"]["bytes_per_queue"] == BYTES_PER_QUEUE


def test_server_sent_events_tick_once_a_second_with_the_same_bytes_for_every_viewer(served: Any) -> None:
    api = api_of(served)
    api.open()
    streams = []
    for _ in range(3):
        stream = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        stream.sendall(f"GET /console/api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {api.cookie}\r\n\r\n".encode())
        streams.append(stream)
    events: list[list[bytes]] = []
    for stream in streams:
        received = b""
        while received.count(b"\ndata: ") < 3:
            received += stream.recv(65536)
        events.append([line for line in received.split(b"\n") if line.startswith(b"data: ")])
        stream.close()
    assert all(json.loads(line[6:])["queues"] == [] for line in events[0])
    ticks = [[json.loads(line[6:])["tick"] for line in lines[1:3]] for lines in events]
    assert all(b - a == 1 for a, b in ticks)


def test_a_history_ring_is_bounded_and_keeps_the_last_hour() -> None:
    class FakeQueue:
        ready = in_flight = delayed = 0
        enqueued = confirmed = requeued = dead_lettered = 0

    queue: Any = FakeQueue()
    history = History(queue)
    for second in range(2 * COARSE_SAMPLES * COARSE_STEP):  # two hours
        history.add([second, 0, 0, 3, 2, 0, 0])
    assert len(history.fine) * 4 + len(history.coarse) * 4 == BYTES_PER_QUEUE
    fine = history.series("fine", "ready")
    assert len(fine) == FINE_SAMPLES and fine[-1] == 2 * COARSE_SAMPLES * COARSE_STEP - 1
    coarse = history.series("coarse", "sent")
    assert len(coarse) == COARSE_SAMPLES and set(coarse) == {3 * COARSE_STEP}
    assert history.rate("confirmed") == 2.0
    history.add([1 << 40, 0, 0, 0, 0, 0, 0])  # past 32 bits: shown as the ceiling, never an error
    assert history.series("fine", "ready")[-1] == 0xFFFFFFFF


def test_the_sampler_is_shared_and_bounded_in_queues(served: Any) -> None:
    with Client.connect(served.address) as native:
        for n in range(5):
            native.create(f"q{n}")

    def sample() -> tuple[int, bytes, bytes]:
        sampler = Sampler(lambda: served.server.broker, lambda: {"queues": []}, max_queues=3)
        sampler.tick()
        return len(sampler.histories), sampler.overview(), sampler.overview()

    sampled, first, second = served.call(sample)
    assert sampled == 3 and first is second  # one serialization per tick, whoever asks


def dead_letters(address: str, source: str, dead: str, payloads: list[bytes]) -> None:
    """Make ``payloads`` dead letters of ``source`` (one delivery allowed) in ``dead``, as a failing consumer does."""
    with Client.connect(address) as native:
        native.create(dead)
        native.create(source, max_deliveries=1, dead_letter_queue=dead)
        for payload in payloads:
            native.send(source, payload)
        for _ in payloads:
            message = native.read(source)
            assert message is not None
            native.release(message.id)
        assert native.stats(dead)["ready"] == len(payloads)


def test_peek_shows_ready_and_in_flight_marked_and_changes_nothing(served: Any) -> None:
    api = api_of(served)
    api.open()
    with Client.connect(served.address) as native:
        native.create("look")
        ids = [native.send("look", f"message {n}".encode()) for n in range(4)]
        held = native.read("look")
        assert held is not None and held.id == ids[0]
        before = {**native.stats("look"), "oldest_ready_age_ms": 0}
        messages = api.get(f"peek?q={key('look')}&count=10&in_flight=1")["messages"]
        assert [(m["id"], m["state"]) for m in messages] == [
            (ids[1], "ready"),
            (ids[2], "ready"),
            (ids[3], "ready"),
            (ids[0], "in_flight"),
        ]
        assert base64_text(messages[0]) == "message 1" and messages[3]["deliveries"] == 1
        assert all(m["age"] is not None and 0 <= m["age"] < 60 and m["origin"] is None for m in messages)
        assert [m["id"] for m in api.get(f"peek?q={key('look')}&count=2")["messages"]] == ids[1:3]
        assert {**native.stats("look"), "oldest_ready_age_ms": 0} == before  # nothing delivered, no count changed
        assert api.request("GET", f"/console/api/peek?q={key('look')}&count=x")[0] == 400


def base64_text(message: dict[str, Any]) -> str:
    import base64

    return base64.b64decode(message["data"]).decode()


def test_redrive_moves_dead_letters_back_with_their_origin(served: Any) -> None:
    api = api_of(served)
    api.open()
    dead_letters(served.address, "jobs", "jobs-dlq", [b"a", b"b", b"c"])
    page = api.get(f"queue?q={key('jobs-dlq')}")
    assert page["queue"]["sources"] == [{"key": key("jobs"), "name": "jobs"}]
    messages = api.get(f"peek?q={key('jobs-dlq')}")["messages"]
    assert [m["origin"]["queue"] for m in messages] == ["jobs"] * 3
    assert [m["origin"]["deliveries"] for m in messages] == [1, 1, 1]
    status, answer = api.post("redrive", {"q": key("jobs-dlq"), "to": key("jobs"), "count": 1})
    assert (status, answer["moved"]) == (200, 1)
    with Client.connect(served.address) as native:
        assert (native.stats("jobs")["ready"], native.stats("jobs-dlq")["ready"]) == (1, 2)
        status, answer = api.post("redrive", {"q": key("jobs-dlq"), "to": key("jobs"), "count": None})
        assert (status, answer["moved"]) == (200, 2)
        assert (native.stats("jobs")["ready"], native.stats("jobs-dlq")["ready"]) == (3, 0)
        assert [native.read("jobs").data for _ in range(3)] == [b"a", b"b", b"c"]  # type: ignore[union-attr]
    assert api.post("redrive", {"q": key("jobs-dlq"), "to": key("jobs"), "count": 0})[0] == 400
    assert api.post("redrive", {"q": key("jobs"), "to": key("jobs")})[0] == 409


def test_a_long_redrive_lets_the_others_in_between(tmp_path: Path) -> None:
    """A redrive of more than a step's worth (`server.mover.MOVE_STEP`) moves a step a turn of the loop: another
    connection is answered meanwhile and sees it partly done; the answer counts every message. (The server is a
    child process: in this one, its steps and the watcher would take turns at the interpreter lock instead.)"""
    http_port = free_port()
    served = ChildServer(tmp_path, "--http-port", str(http_port)).start()
    try:
        redrive_while_watching(served, Api(http_port))
    finally:
        served.stop()


def redrive_while_watching(served: ChildServer, api: Api) -> None:
    api.open()
    total = 50 * MOVE_STEP
    with Client.connect(served.address) as native:
        native.create("dead")
        native.create("jobs")
        for start in range(0, total, 5_000):
            native.send_batch("dead", [b"%d" % n for n in range(start, start + 5_000)])
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        with Client.connect(served.address) as watcher:
            while not stop.is_set():
                seen.append(int(watcher.stats("jobs")["ready"]))

    watching = threading.Thread(target=watch)
    watching.start()
    try:
        wait_for(lambda: seen, what="the watcher's first answer")
        status, answer = api.post("redrive", {"q": key("dead"), "to": key("jobs"), "count": None})
    finally:
        stop.set()
        watching.join(10)
    assert (status, answer["moved"]) == (200, total)
    assert any(0 < ready < total for ready in seen), sorted(set(seen))
    with Client.connect(served.address) as native:
        assert (native.stats("dead")["ready"], native.stats("jobs")["ready"]) == (0, total)


def test_create_with_a_visibility_timeout_or_never(served: Any) -> None:
    api = api_of(served)
    api.open()
    assert api.post("create", {"name": "quick", "visibility_timeout": "2.5"})[0] == 200
    assert api.post("create", {"name": "forever", "visibility_timeout": "never"})[0] == 200
    assert api.post("create", {"name": "bad", "visibility_timeout": "soon"})[0] == 400
    with Client.connect(served.address) as native:
        assert native.stats("quick")["visibility_timeout_ms"] == 2500
        assert native.stats("forever")["visibility_timeout_ms"] == 0xFFFFFFFF


def test_a_group_shows_every_member_and_the_totals(server_factory: Callable[..., Any]) -> None:
    threads = [server_factory(member_index=n, **({"http_port": 0} if n == 0 else {})) for n in range(3)]
    addresses = [thread.address for thread in threads]

    def join(thread: Any) -> None:
        thread.server.members = list(addresses)

    for thread in threads:
        thread.call(lambda thread=thread: join(thread))
    for n, thread in enumerate(threads):
        with Client.connect(thread.address) as native:
            native.create("shared")
            native.send_batch("shared", [b"m"] * (n + 1) * 10)
    threads[2].stop()  # a member down is shown with its error
    api = api_of(threads[0])
    api.open()

    def group() -> Any:
        overview = api.get("overview")["group"]
        members = overview["members"]
        return members[1]["queues"] and members[2]["error"] and overview

    overview = wait_for(group, what="the members' figures")
    assert [m["address"] for m in overview["members"]] == addresses
    assert overview["members"][0]["self"] and overview["members"][1]["error"] is None
    shared = overview["queues"][0]
    assert (shared["name"], shared["ready"], shared["members"]) == ("shared", 30, {"0": 10, "1": 20})


def test_a_queue_pages_stream_carries_its_page_and_says_when_it_is_gone(served: Any) -> None:
    api = api_of(served)
    api.open()
    api.post("create", {"name": "watched"})
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as stream:
        path = f"/console/api/events?q={key('watched')}"
        stream.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {api.cookie}\r\n\r\n".encode())
        received = b""
        marker = b"event: queue\ndata: "
        while marker not in received or b"\n" not in received.split(marker)[1]:
            received += stream.recv(65536)
        page = json.loads(received.split(marker)[1].split(b"\n")[0])
        assert page["queue"]["name"] == "watched" and page["ring"]["bytes_per_queue"] == BYTES_PER_QUEUE
        assert api.post("delete", {"q": key("watched")})[0] == 200
        received = b""
        while b'"gone":true' not in received:
            received += stream.recv(65536)


def test_with_a_store_actions_are_answered_once_committed_and_survive_a_restart(
    server_factory: Callable[..., Any], tmp_path: Any
) -> None:
    thread = server_factory(http_port=0, data_dir=str(tmp_path / "data"))
    api = api_of(thread)
    api.open()
    assert api.post("create", {"name": "kept", "max_deliveries": 3})[0] == 200
    assert api.post("create", {"name": "gone"})[0] == 200
    for n in range(3):
        assert api.post("send", {"q": key("kept"), "text": f"durable {n}"})[0] == 200
    assert api.post("send", {"q": key("gone"), "text": "x"})[0] == 200
    assert api.post("delete", {"q": key("gone")})[0] == 200
    assert api.get("overview")["store"] == "durable"
    thread.stop()
    again = server_factory(data_dir=str(tmp_path / "data"))
    with Client.connect(again.address) as native:
        assert [queue["name"] for queue in native.list_queues()] == ["kept"]
        stats = native.stats("kept")
        assert (stats["ready"], stats["max_deliveries"]) == (3, 3)
        assert native.read("kept").data == b"durable 0"  # type: ignore[union-attr]
