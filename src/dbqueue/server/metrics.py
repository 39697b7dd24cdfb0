"""Prometheus metrics: ``GET /metrics`` on its own port, served by the server's own loop.

Theory of operation
-------------------
Nothing is measured per request. Sessions add each batch's request count and
handling time to `RequestStats` (a few integer additions per batch); queue
figures are read from the broker only when Prometheus scrapes. The collector
runs on the event loop's thread (the HTTP endpoint is an asyncio server in the
same loop), so it never sees the broker half-way through a change.

The endpoint knows nothing of the `Server`: it is handed the `RequestStats`
and two callables, one returning every queue's figures (as `Queue.stats`
gives them) and one the number of open connections.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["RequestStats", "MetricsEndpoint"]

log = logging.getLogger("dbqueue.server")

# Seconds to handle one received batch of requests.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

_QUEUE_GAUGES = {
    "ready": "Messages waiting for a read",
    "in_flight": "Messages read and not yet confirmed",
    "delayed": "Messages whose delay has not ended",
    "waiting": "Reads waiting for a message",
    "consumers": "Open connections that have read from the queue",
    "capacity": "Most messages the queue may hold (0: unbounded)",
}
_QUEUE_COUNTERS = {
    "enqueued": "Messages accepted",
    "confirmed": "Messages confirmed",
    "requeued": "Messages put back after a timeout, a release or a disconnect",
    "dead_lettered": "Messages moved to the dead-letter queue or dropped after max_deliveries",
}


class RequestStats:
    """Request counts and a histogram of batch handling times, kept as plain integers."""

    __slots__ = ("requests", "batches", "seconds", "bucket_counts")

    def __init__(self) -> None:
        self.requests = 0
        self.batches = 0
        self.seconds = 0.0
        self.bucket_counts = [0] * (len(BUCKETS) + 1)

    def record(self, requests: int, seconds: float) -> None:
        self.requests += requests
        self.batches += 1
        self.seconds += seconds
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1


QueueFigures = Callable[[], list[dict[str, Any]]]


class _Collector:
    def __init__(self, stats: RequestStats, queue_figures: QueueFigures, connection_count: Callable[[], int]) -> None:
        self.stats = stats
        self.queue_figures = queue_figures
        self.connection_count = connection_count

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        queues = self.queue_figures()
        for field, help_text in _QUEUE_GAUGES.items():
            gauge = GaugeMetricFamily(f"dbqueue_queue_{field}", help_text, labels=["queue"])
            for queue in queues:
                gauge.add_metric([queue["name"]], queue[field])
            yield gauge
        for field, help_text in _QUEUE_COUNTERS.items():
            counter = CounterMetricFamily(f"dbqueue_queue_{field}", help_text, labels=["queue"])
            for queue in queues:
                counter.add_metric([queue["name"]], queue[field])
            yield counter
        yield GaugeMetricFamily("dbqueue_connections", "Open client connections", value=self.connection_count())
        yield CounterMetricFamily("dbqueue_requests", "Requests handled", value=stats.requests)
        cumulative = 0
        buckets = []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), stats.bucket_counts):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "dbqueue_batch_seconds",
            "Time to handle one received batch of pipelined requests",
            buckets=buckets,
            sum_value=stats.seconds,
        )


class MetricsEndpoint:
    """``GET /metrics`` in Prometheus's text format, on ``host:port`` (0: any free port, `port` after `start`).

    ``stats`` is what the sessions record into; ``queue_figures()`` returns every queue's figures
    and ``connection_count()`` the open connections, both called at scrape time on the loop's thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        stats: RequestStats,
        queue_figures: QueueFigures,
        connection_count: Callable[[], int],
    ) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(stats, queue_figures, connection_count))
        self._listener: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)).strip():
                pass  # headers: none matter here
            parts = request_line.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            else:
                status, content_type, body = "404 Not Found", "text/plain", b"try /metrics\n"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
