"""Prometheus metrics: ``GET /metrics``, on the HTTP listener or a port of its own, served by the server's own loop.

Theory of operation
-------------------
Nothing is measured per request. Sessions add each batch's request count and
handling time to `RequestStats` (a few integer additions per batch), the SQS
listener adds one to a counter per action (`SqsStats`); queue figures are read
from the broker only when Prometheus scrapes. The collectors run on the event
loop's thread (the HTTP server is aiohttp in the same loop), so they never see
the broker half-way through a change.

One registry (`build_registry`) holds everything a scrape returns: the
server's collector, `dbqueue_build_info`, and prometheus_client's own
`ProcessCollector` (CPU seconds, resident memory, open file descriptors).
`serve_metrics` answers a request from it, in the format the scraper asks for
(prometheus_client's `choose_encoder`: OpenMetrics when the ``Accept`` header
names it, the text format otherwise), gzipped when ``Accept-Encoding`` allows,
for ``GET`` and ``HEAD`` alike. The SQS listener (`http.HttpListener`) serves it
at ``/metrics``; `MetricsEndpoint` serves it alone on ``--metrics-port``.

Neither knows the `Server`: they are handed the `RequestStats` and callables
returning every queue's figures (as `Queue.stats` gives them) and the number of
open connections.
"""

from __future__ import annotations

import asyncio
import bisect
import gzip
import logging
import platform
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .._version import __version__

__all__ = ["RequestStats", "SqsStats", "MetricsEndpoint", "build_registry", "serve_metrics"]

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
    "dropped": "Of those, messages dropped: no dead-letter queue took them (none, deleted, or full)",
    "purged": "Messages dropped by a purge",
    "moved": "Messages moved out to another queue by MOVE",
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


class SqsStats:
    """What the SQS listener counts: requests by action, refusals by error code, and its open connections."""

    __slots__ = ("actions", "errors", "connections")

    def __init__(self, connections: Callable[[], int]) -> None:
        self.actions: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        actions = CounterMetricFamily("dbqueue_sqs_requests", "SQS requests answered, by action", labels=["action"])
        for action, count in sorted(self.actions.items()):
            actions.add_metric([action], count)
        yield actions
        errors = CounterMetricFamily("dbqueue_sqs_errors", "SQS requests refused, by error code", labels=["code"])
        for code, count in sorted(self.errors.items()):
            errors.add_metric([code], count)
        yield errors
        yield GaugeMetricFamily("dbqueue_http_connections", "Open HTTP connections", value=self.connections())


QueueFigures = Callable[[], list[dict[str, Any]]]


class _Collector:
    def __init__(self, stats: RequestStats, queue_figures: QueueFigures, connection_count: Callable[[], int]) -> None:
        self.stats = stats
        self.queue_figures = queue_figures
        self.connection_count = connection_count

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        queues = self.queue_figures()
        yield InfoMetricFamily(
            "dbqueue_build",
            "The dbqueue version and the Python that runs it",
            value={
                "version": __version__,
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
            },
        )
        for field, help_text in _QUEUE_GAUGES.items():
            gauge = GaugeMetricFamily(f"dbqueue_queue_{field}", help_text, labels=["queue"])
            for queue in queues:
                gauge.add_metric([queue["name"]], queue[field])
            yield gauge
        # The age of the message a read would take next (0 when none is ready): kept by each queue, read
        # here without a scan (`core.queue`'s enqueue-time marks).
        age = GaugeMetricFamily(
            "dbqueue_queue_oldest_ready_age_seconds",
            "Age of the ready message a read would take next, since its first enqueue (0: none ready)",
            labels=["queue"],
        )
        for queue in queues:
            age.add_metric([queue["name"]], queue.get("oldest_ready_age_ms", 0) / 1000.0)
        yield age
        for field, help_text in _QUEUE_COUNTERS.items():
            counter = CounterMetricFamily(f"dbqueue_queue_{field}", help_text, labels=["queue"])
            for queue in queues:
                counter.add_metric([queue["name"]], queue.get(field, 0))
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


def build_registry(
    stats: RequestStats,
    queue_figures: QueueFigures,
    connection_count: Callable[[], int],
    sqs_stats: SqsStats | None = None,
) -> CollectorRegistry:
    """Return a registry of everything a scrape reports: the server's figures, build info, the process's own.

    ``stats`` is what the sessions record into; ``queue_figures()`` returns
    every queue's figures and ``connection_count()`` the open connections of
    dbqueue's own protocol, both called at scrape time on the loop's thread;
    ``sqs_stats``, when the SQS listener runs, its counters.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, queue_figures, connection_count))
    if sqs_stats is not None:
        registry.register(sqs_stats)
    ProcessCollector(registry=registry)
    return registry


def serve_metrics(request: web.BaseRequest, registry: CollectorRegistry) -> web.Response:
    """Answer ``GET`` or ``HEAD /metrics`` from ``registry``, as the request's headers ask.

    The format is prometheus_client's choice for the ``Accept`` header
    (OpenMetrics or the text format), the body gzipped if ``Accept-Encoding``
    allows; ``name[]`` query parameters restrict the answer to those metrics,
    as prometheus_client's own server does. Any other method gets 405.
    """
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="GET or HEAD /metrics\n", headers={"Allow": "GET, HEAD"})
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    names = request.query.getall("name[]", [])
    output = encoder(_Only(registry, frozenset(names)) if names else registry)
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if gzip_accepted(request.headers.get("Accept-Encoding", "")):
        output = gzip.compress(output)
        headers["Content-Encoding"] = "gzip"
    # Built as bytes with its own headers: aiohttp then sends them as they are (no compression of its own).
    return web.Response(body=output, headers=headers)


class _Only(Collector):
    """The metrics of a registry that ``name[]`` asks for: by a metric's name or any of its samples' names.

    (prometheus_client's own ``restricted_registry`` finds metrics by names its
    collectors describe; these collectors describe nothing, so that registering
    them collects nothing.)
    """

    def __init__(self, registry: CollectorRegistry, names: frozenset[str]) -> None:
        self.registry = registry
        self.names = names

    def collect(self) -> Iterator[Metric]:
        names = self.names
        for metric in self.registry.collect():
            if metric.name in names or any(sample.name in names for sample in metric.samples):
                yield metric


class MetricsEndpoint:
    """``GET /metrics`` on ``host:port`` of its own (0: any free port, `port` after `start`), with aiohttp.

    ``stats`` is what the sessions record into; ``queue_figures()`` returns every queue's figures
    and ``connection_count()`` the open connections, both called at scrape time on the loop's thread.
    Any other path gets 404. A connection idle for 5 seconds is closed.
    """

    IDLE_TIMEOUT = 5.0

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
        self.registry = build_registry(stats, queue_figures, connection_count)
        self._web: web.Server | None = None
        self._listener: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._web = web.Server(
            self._serve,
            handler_cancellation=True,
            keepalive_timeout=self.IDLE_TIMEOUT,
            lingering_time=0,
            access_log=None,
        )
        self._listener = await loop.create_server(self._web, self.host, self.port, reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._web is not None:
            await self._web.shutdown(1.0)
            self._web = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/metrics":
            return web.Response(status=404, text="try /metrics\n")
        return serve_metrics(request, self.registry)
