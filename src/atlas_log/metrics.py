"""Prometheus metrics, one prefix (``atlas_log_exporter_``), units in the names.

Counts are of events actually stored (after de-duplication and filtering), taken when an object is committed.
Per-scope lag is computed at scrape time from the last committed checkpoint, so it keeps growing while a scope is
stuck, which is what an alert wants.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from atlas_log.high_watermark import Checkpoint

log = logging.getLogger(__name__)

PREFIX = "atlas_log_exporter_"


class _LagCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            PREFIX + "scope_lag_seconds",
            "Now minus the scope's committed watermark (min_date).",
            labels=["scope_kind", "scope_id", "scope_name"],
        )
        cp = self._metrics.checkpoint
        now = time.time()
        if cp is not None:
            for state in cp.scopes.values():
                if state.watermark.min_date_s is not None:
                    lag.add_metric([state.kind, state.id, state.name], max(0.0, now - state.watermark.min_date_s))
        yield lag


class Metrics:
    """Everything the exporter reports. One instance per process (or per test, with its own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            PREFIX + "events_exported", "Events stored in the destination.", ["scope_kind"], registry=r
        )
        self.objects = Counter(PREFIX + "objects_written", "Objects created in the destination.", registry=r)
        self.bytes = Counter(PREFIX + "bytes_written", "Bytes of objects created (compressed).", registry=r)
        self.requests = Counter(
            PREFIX + "atlas_requests",
            "Atlas API requests by route and status (0: no answer).",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            PREFIX + "atlas_request_duration_seconds",
            "Atlas API request latency.",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.retries = Counter(PREFIX + "atlas_retries", "Atlas requests retried.", registry=r)
        self.rate_limited = Counter(PREFIX + "atlas_rate_limited", "Atlas 429 answers.", registry=r)
        self.checkpoint_saves = Counter(
            PREFIX + "checkpoint_saves", "Checkpoint compare-and-swap saves.", ["step"], registry=r
        )
        self.checkpoint_conflicts = Counter(
            PREFIX + "checkpoint_conflicts", "Cycles stopped because another run committed first.", registry=r
        )
        self.adopted = Counter(
            PREFIX + "objects_adopted",
            "Objects written by an earlier or concurrent run and committed by this one.",
            registry=r,
        )
        self.cycles = Counter(PREFIX + "cycles", "Cycles by outcome.", ["outcome"], registry=r)
        self.cycle_duration = Histogram(
            PREFIX + "cycle_duration_seconds",
            "Wall time of one cycle.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time of the last cycle in which every scope succeeded.",
            registry=r,
        )
        self.scopes = Gauge(PREFIX + "scopes", "Scopes polled in the last cycle.", registry=r)
        self.scopes_failing = Gauge(PREFIX + "scopes_failing", "Scopes that failed in the last cycle.", registry=r)
        self.checkpoint: Checkpoint | None = None
        self._lock = threading.Lock()
        r.register(_LagCollector(self))

    # -- hooks -------------------------------------------------------------------------------------------------
    def on_request(self, route: str, status: int, elapsed_s: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(elapsed_s)
        if status == 429:
            self.rate_limited.inc()

    def on_commit(self, cp: Checkpoint, events_by_kind: dict[str, int], size: int, *, adopted: bool) -> None:
        self.checkpoint = cp
        for kind, count in events_by_kind.items():
            if count:
                self.events.labels(kind).inc(count)
        self.objects.inc()
        self.bytes.inc(size)
        self.checkpoint_saves.labels("commit").inc()
        if adopted:
            self.adopted.inc()

    def on_cycle(self, result: Any, *, retries: int) -> None:
        outcome = "conflict" if result.conflict else ("partial" if result.failures else "ok")
        self.cycles.labels(outcome).inc()
        self.cycle_duration.observe(result.duration_s)
        self.scopes.set(result.scopes)
        self.scopes_failing.set(result.scopes_failed)
        if retries:
            self.retries.inc(retries)
        if outcome == "ok":
            self.last_success.set(time.time())
        if result.conflict:
            self.checkpoint_conflicts.inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 (a scrape endpoint is meant to be reached)
        """Serve /metrics; returns the bound port (``port=0`` picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound
