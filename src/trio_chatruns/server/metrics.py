"""``GET /metrics``: the server's numbers in Prometheus text format.

Built on ``prometheus-client`` with one :class:`~prometheus_client.CollectorRegistry`
per :class:`~.app.ChatServer` (never the process-global one, so two servers in
one process, or two tests, never share a count). Two sources feed it:

- :class:`StatsCollector`, a custom collector that reads the run backend's
  ``stats()`` (``RegistryStats``, read by the route just before the scrape
  and handed to :meth:`ServerMetrics.exposition`) and ``server.stats()``
  (``ServerStats``) at scrape time: nothing is counted twice, and nothing
  runs on the hot path;
- instruments the HTTP layer updates as it goes: request counts and durations
  (the access-log middleware, :mod:`.accesslog`) and model failures by kind
  (the producer wrapper, through :meth:`ChatServer.run_failed`).

:data:`METRICS` lists every metric with its type and meaning; ``docs/server.md``
shows the same table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from .failures import FAILURE_KINDS

if TYPE_CHECKING:
    from .. import RegistryStats

__all__ = ["CONTENT_TYPE", "METRICS", "MetricsSource", "ServerMetrics", "StatsCollector"]


class MetricsSource(Protocol):
    """What the metrics read of a server at scrape time (``state.ServerState`` is one).

    A protocol here, so this module does not import the server state that
    holds a :class:`ServerMetrics`: no import cycle (STYLE.md).
    """

    @property
    def closing(self) -> bool:
        """A graceful shutdown began."""
        ...

    def stats(self) -> object:
        """The HTTP layer's counters (``ServerStats``), read field by field."""
        ...


CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of ``GET /metrics`` (Prometheus text format 0.0.4)."""

_P = "trio_chatruns_"

# (name without the _total suffix, type, source field or None, help)
_REGISTRY_GAUGES = [
    ("runs_active", "active", "Runs active now (running, waiting, queued)."),
    ("runs_queued", "queued", "Runs waiting behind another run of their conversation now."),
    ("runs_retained_terminal", "retained_terminal", "Finished runs kept for late reconnects."),
    ("subscribers", "subscribers", "Live subscriptions to runs now (registry side)."),
    ("buffered_bytes", "buffered_bytes", "Bytes buffered for replay now (with a byte budget)."),
]
_REGISTRY_COUNTERS = [
    ("subscribers_lagged", "lagged_subscribers", "Subscribers dropped for reading too slowly."),
    ("frames_pushed", "frames_pushed", "Frames pushed into runs."),
    ("run_end_failures", "run_end_failures", "Run-end hook calls that raised or timed out."),
]
_EVICTIONS = [("ttl", "evicted_ttl"), ("lru", "evicted_lru"), ("bytes", "evicted_bytes")]
_SERVER_GAUGES = [
    ("streams_open", "open_streams", "SSE and WebSocket streams open now."),
]
_SERVER_COUNTERS = [
    ("streams_opened", "streams_opened", "Streams accepted."),
    ("streams_resumed", "streams_resumed", "Streams opened with a cursor (a reconnect)."),
    ("streams_dropped", "streams_dropped", "Streams cut by the server (shutdown, or on demand)."),
    ("streams_lagged", "streams_lagged", "Streams closed because their client read too slowly."),
]

METRICS: list[tuple[str, str, str]] = [
    *((_P + n, "gauge", h) for n, _, h in _REGISTRY_GAUGES),
    (_P + "runs_evicted_total", "counter", "Finished runs evicted, by reason: ttl, lru, bytes."),
    *((_P + n + "_total", "counter", h) for n, _, h in _REGISTRY_COUNTERS),
    *((_P + n, "gauge", h) for n, _, h in _SERVER_GAUGES),
    *((_P + n + "_total", "counter", h) for n, _, h in _SERVER_COUNTERS),
    (_P + "shutting_down", "gauge", "1 once a graceful shutdown began, else 0."),
    (
        _P + "http_requests_total",
        "counter",
        "Requests answered, by method, route template and status (WebSocket: method WEBSOCKET).",
    ),
    (
        _P + "http_request_duration_seconds",
        "histogram",
        "Seconds from request to the end of the response, by method and route "
        "(a stream counts for as long as it is open).",
    ),
    (_P + "model_failures_total", "counter", "Runs that ended failed, by kind."),
]
"""Every metric ``GET /metrics`` exposes: ``(name, type, meaning)``.

A gauge or counter fed by a ``RegistryStats`` field that the installed core
does not have (or that is ``None``, as ``buffered_bytes`` without a byte
budget) is left out of the scrape.
"""


class StatsCollector:
    """A custom collector: ``RegistryStats`` and ``ServerStats`` read at scrape time."""

    def __init__(self, server: MetricsSource) -> None:
        self._server = server
        self.registry_stats: RegistryStats | None = None
        """The run backend's stats for the next scrape (``None``: left out)."""

    def collect(self) -> Iterator[Metric]:
        registry_stats = self.registry_stats
        server_stats = self._server.stats()

        def value(stats: Any, field: str) -> float | None:
            found = getattr(stats, field, None)
            return None if found is None else float(found)

        for name, field, help_text in _REGISTRY_GAUGES:
            if (v := value(registry_stats, field)) is not None:
                yield GaugeMetricFamily(_P + name, help_text, value=v)
        if registry_stats is not None:
            evicted = CounterMetricFamily(
                _P + "runs_evicted", "Finished runs evicted, by reason.", labels=["reason"]
            )
            for reason, field in _EVICTIONS:
                if (v := value(registry_stats, field)) is not None:
                    evicted.add_metric([reason], v)
            yield evicted
        for name, field, help_text in _REGISTRY_COUNTERS:
            if (v := value(registry_stats, field)) is not None:
                yield CounterMetricFamily(_P + name, help_text, value=v)
        for name, field, help_text in _SERVER_GAUGES:
            yield GaugeMetricFamily(_P + name, help_text, value=value(server_stats, field) or 0.0)
        for name, field, help_text in _SERVER_COUNTERS:
            yield CounterMetricFamily(_P + name, help_text, value=value(server_stats, field) or 0.0)
        yield GaugeMetricFamily(
            _P + "shutting_down",
            "1 once a graceful shutdown began, else 0.",
            value=1.0 if self._server.closing else 0.0,
        )


class ServerMetrics:
    """The metrics of one :class:`~.app.ChatServer`: its own registry and instruments.

    Attributes:
        registry (CollectorRegistry): what ``GET /metrics`` exposes.
        requests (Counter): ``trio_chatruns_http_requests_total{method,route,status}``.
        durations (Histogram): ``trio_chatruns_http_request_duration_seconds{method,route}``.
        model_failures (Counter): ``trio_chatruns_model_failures_total{kind}``,
            every kind of :data:`~.failures.FAILURE_KINDS` present from the start.
    """

    def __init__(self, server: MetricsSource) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            _P + "http_requests",
            "Requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            _P + "http_request_duration_seconds",
            "Seconds from request to the end of the response, by method and route.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0),
        )
        self.model_failures = Counter(
            _P + "model_failures",
            "Runs that ended failed, by kind.",
            ["kind"],
            registry=self.registry,
        )
        for kind in FAILURE_KINDS:
            self.model_failures.labels(kind)
        self._collector = StatsCollector(server)
        self.registry.register(self._collector)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        self.requests.labels(method, route, str(status)).inc()
        self.durations.labels(method, route).observe(seconds)

    def exposition(self, registry_stats: RegistryStats | None = None) -> bytes:
        """The Prometheus text format of every metric, now.

        Args:
            registry_stats: the run backend's ``stats()``, read by the caller
                (an ``async`` call with Redis); ``None`` leaves the run
                metrics out (the backend could not be read).
        """
        self._collector.registry_stats = registry_stats
        try:
            return generate_latest(self.registry)
        finally:
            self._collector.registry_stats = None
