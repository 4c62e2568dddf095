"""``/metrics`` in Prometheus' text format (``prometheus_client``, one registry per app).

HTTP side (from the request log middleware): ``biglm_http_requests_total{route, status}`` and
``biglm_http_request_duration_seconds{route}``. Model side (from the scheduler's ``stats``, read at each scrape):
``biglm_queue_depth``, ``biglm_active_requests``, ``biglm_requests_total{outcome}`` (submitted, finished,
failed, cancelled, rejected), ``biglm_generated_tokens_total``, ``biglm_decode_steps_total``,
``biglm_tokens_per_second`` (since the previous scrape, at least a second apart) and
``biglm_reply_latency_seconds`` (submit to reply of finished requests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from biglm.serve.scheduler import Scheduler

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class SchedulerCollector:
    """The scheduler's counters and gauges, read when scraped."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._last = (time.monotonic(), 0)
        self._rate = 0.0

    def collect(self) -> Iterator[Metric]:
        s = self.scheduler.stats
        now, tokens = time.monotonic(), s.tokens
        if now - self._last[0] >= 1.0:
            self._rate = (tokens - self._last[1]) / (now - self._last[0])
            self._last = (now, tokens)
        yield GaugeMetricFamily("biglm_queue_depth", "requests waiting for the model", self.scheduler.queue_depth)
        yield GaugeMetricFamily("biglm_active_requests", "requests being decoded (rows of the running batch)",
                                self.scheduler.active)
        outcomes = CounterMetricFamily("biglm_requests", "requests given to the model, by outcome", labels=["outcome"])
        for outcome in ("submitted", "finished", "failed", "cancelled", "rejected"):
            outcomes.add_metric([outcome], getattr(s, outcome))
        yield outcomes
        yield CounterMetricFamily("biglm_generated_tokens", "reply tokens generated", s.tokens)
        yield CounterMetricFamily("biglm_decode_steps", "decoding steps (passes or tokens) of the batch", s.steps)
        yield GaugeMetricFamily("biglm_tokens_per_second", "reply tokens per second since the previous scrape",
                                self._rate)


class Metrics:
    """One app's metrics (see the module docstring)."""

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self.scheduler = scheduler
        self.registry = CollectorRegistry()
        self.requests = Counter("biglm_http_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.duration = Histogram("biglm_http_request_duration_seconds", "HTTP request time by route", ["route"],
                                  buckets=BUCKETS, registry=self.registry)
        self.latency = Histogram("biglm_reply_latency_seconds", "seconds from a request's submission to its reply",
                                 buckets=BUCKETS, registry=self.registry)
        if scheduler is not None:
            self.registry.register(SchedulerCollector(scheduler))  # type: ignore[arg-type]

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def render(self) -> bytes:
        if self.scheduler is not None:  # the replies finished since the last scrape
            for seconds in self.scheduler.stats.take_latencies():
                self.latency.observe(seconds)
        return generate_latest(self.registry)


def parse_text(text: str) -> dict[str, Any]:
    """``{name{labels}: value}`` of a scrape (tests and tools)."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


__all__ = ["CONTENT_TYPE", "Metrics", "SchedulerCollector", "parse_text"]
