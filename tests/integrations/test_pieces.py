"""The integrations' pure parts: URLs, the share-out of a read, Celery's eta as a delay, and a kombu round trip
(bindings on the server, a fanout to two queues, a no-ack consumer, a reject that dead-letters) against a real
server without a worker."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import pytest

from dbqueue import Client
from dbqueue.integrations.address import parse_url
from dbqueue.integrations.reader import shares


def test_urls_give_host_port_token_and_tls() -> None:
    assert parse_url("dbqueue://example.org:4000") == parse_url("dbqueue://example.org:4000/")
    address = parse_url("dbqueue://:s%2Fecret@example.org:4000")
    assert (address.host, address.port, address.token, address.tls) == ("example.org", 4000, "s/ecret", None)
    assert parse_url("dbqueue://example.org").port == 3003
    assert parse_url("dbqueues://example.org").tls is True
    assert parse_url("dbqueue://example.org?tls=1").tls is True
    context = ssl.create_default_context()
    assert parse_url("dbqueue://h", {"tls": context, "token": "t"}).tls is context
    assert parse_url("dbqueue://:url@h", {"token": "option"}).token == "option"
    with pytest.raises(ValueError, match="dbqueue://"):
        parse_url("redis://h:6379")


def test_a_read_is_shared_out_among_queues_each_asked_first_in_turn() -> None:
    assert shares(["a", "b", "c"], 7, 0) == [("a", 3), ("b", 2), ("c", 2)]
    assert shares(["a", "b", "c"], 2, 1) == [("b", 1), ("c", 1)]
    assert shares(["a", "b", "c"], 2, 2) == [("c", 1), ("a", 1)]
    assert shares(["a"], 0, 0) == [] and shares([], 5, 0) == []
    for turn in range(5):
        assert sum(count for _, count in shares(["a", "b", "c"], 10, turn)) == 10


def test_celery_eta_becomes_a_delay() -> None:
    pytest.importorskip("kombu")
    from dbqueue.integrations.kombu_transport import delay_of

    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert delay_of({"headers": {"eta": (now + timedelta(seconds=2.5)).isoformat()}}, now) == 2.5
    assert delay_of({"headers": {"eta": "2030-01-01T00:00:04"}}, now) == 4.0  # naive: UTC, Celery's default
    assert delay_of({"headers": {"eta": (now - timedelta(seconds=1)).isoformat()}}, now) == 0.0
    assert delay_of({"headers": {"eta": None}}, now) == delay_of({}, now) == 0.0
    assert delay_of({"headers": {"eta": "not a date"}}, now) == 0.0


def test_kombu_routes_fans_out_and_dead_letters_through_the_server(address: str) -> None:
    pytest.importorskip("kombu")
    from kombu import Connection, Exchange, Queue

    import dbqueue.integrations.celery  # noqa: F401  # registers dbqueue://

    url = f"dbqueue://{address}"
    options = {"queue_options": {"work": {"dead_letter_queue": "work-dead"}}, "wait_time_seconds": 0.5}
    fanout = Exchange("news", type="fanout")
    direct = Exchange("jobs", type="direct")
    got: list[tuple[str, object]] = []
    with Connection(url, transport_options=options) as consumer, Connection(url) as producer:
        queues = [Queue("first", fanout), Queue("second", fanout), Queue("work", direct, routing_key="w")]
        with consumer.Consumer(queues, callbacks=[lambda body, message: got.append((message, body))]):
            # The producer declared nothing: it finds the bindings the consumer made, on the server.
            producer.Producer().publish({"n": 1}, exchange="news")
            producer.Producer().publish({"n": 2}, exchange="jobs", routing_key="w")
            while len(got) < 3:
                consumer.drain_events(timeout=5)
            bodies = sorted((message.delivery_info["dbqueue_queue"], body["n"]) for message, body in got)
            assert bodies == [("first", 1), ("second", 1), ("work", 2)]
            for message, body in got:
                if body["n"] == 1:
                    message.ack()
                else:
                    message.reject(requeue=False)  # to the dead-letter queue
    with Client.connect(address) as client:
        dead = client.read("work-dead")
        assert dead is not None and b"jobs" in dead.data
        # Moved by the server, not copied: it keeps its origin.
        assert dead.origin is not None and (dead.origin.queue, dead.origin.deliveries) == ("work", 1)
        figures = {entry["name"]: entry for entry in client.list_queues()}
    assert all(figures[name]["in_flight"] == figures[name]["ready"] == 0 for name in ("first", "second", "work"))
    assert (figures["work"]["dead_lettered"], figures["work"]["confirmed"]) == (1, 0)
    assert "_kombu.binding|fanout|news||first" in figures


def test_a_kombu_reject_without_a_dead_letter_queue_drops_the_message(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("kombu")
    from kombu import Connection, Exchange, Queue

    import dbqueue.integrations.celery  # noqa: F401  # registers dbqueue://

    got: list[object] = []
    with Connection(f"dbqueue://{address}", transport_options={"wait_time_seconds": 0.5}) as connection:
        queue = Queue("plain", Exchange("plain", type="direct"), routing_key="p")
        with connection.Consumer([queue], callbacks=[lambda body, message: got.append(message)]):
            connection.Producer().publish({"n": 1}, exchange="plain", routing_key="p")
            while not got:
                connection.drain_events(timeout=5)
            with caplog.at_level("INFO", logger="dbqueue"):
                got[0].reject(requeue=False)  # type: ignore[attr-defined]
    assert "rejected message" in caplog.text and "no dead-letter queue" in caplog.text
    with Client.connect(address) as client:
        figures = client.stats("plain")
    assert (figures["ready"], figures["in_flight"], figures["confirmed"], figures["dead_lettered"]) == (0, 0, 1, 0)


def test_dramatiq_dead_letters_through_the_server_and_drops_without_a_dead_letter_queue(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("dramatiq")
    from dbqueue.integrations.dramatiq import DbQueueBroker

    broker = DbQueueBroker(f"dbqueue://{address}")
    try:
        broker.declare_queue("jobs")
        consumer = broker.consume("jobs", prefetch=2, timeout=500)
        with Client.connect(address) as client:
            original = client.send("jobs", b"not a dramatiq message")
            assert next(consumer) is None  # it does not decode: the server moves it to jobs.XQ
            letter = client.read("jobs.XQ")
            assert letter is not None and letter.data == b"not a dramatiq message" and letter.origin is not None
            assert (letter.origin.queue, letter.origin.id, letter.origin.deliveries) == ("jobs", original, 1)
            figures = client.stats("jobs")
            assert (figures["dead_lettered"], figures["confirmed"], figures["in_flight"]) == (1, 0, 0)
            # A queue made elsewhere without a dead-letter queue: the reject is confirmed and logged.
            client.create("plain")
            plain = broker.consume("plain", prefetch=2, timeout=500)
            client.send("plain", b"garbage")
            with caplog.at_level("WARNING", logger="dbqueue"):
                assert next(plain) is None
            assert "dropped, not dead-lettered" in caplog.text and "no dead-letter queue" in caplog.text
            figures = client.stats("plain")
            assert (figures["confirmed"], figures["in_flight"], figures["ready"]) == (1, 0, 0)
            consumer.close()
            plain.close()
    finally:
        broker.close()
