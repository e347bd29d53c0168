"""Prometheus metrics (prometheus-client, one registry per app): requests by status, latency and
time-to-first-token histograms, completion tokens, and the engine's live numbers read at scrape time."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dsocr.runtime.engine import EngineStats

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _EngineCollector:
    def __init__(self, stats: Callable[[], EngineStats | None]):
        self._stats = stats

    def collect(self):
        st = self._stats()
        gauges = {
            "dsocr_queue_depth": ("pages waiting for a decode slot", st.queued if st else 0),
            "dsocr_active_slots": ("decode slots busy now", st.active if st else 0),
            "dsocr_slots": ("decode slots (--batch)", st.slots if st else 0),
            "dsocr_tokens_per_second": ("generated tokens per second of engine busy time",
                                        st.tokens_per_s if st else 0.0),
            "dsocr_ready": ("1 when the bundle is loaded", 1 if st else 0),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("dsocr_pages", "pages the engine finished", value=st.pages_done if st else 0)
        yield CounterMetricFamily("dsocr_generated_tokens", "tokens the engine generated",
                                  value=st.tokens_generated if st else 0)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats | None]):
        self.registry = CollectorRegistry()
        self.requests = Counter("dsocr_requests", "chat completion requests by HTTP status", ["status"],
                                registry=self.registry)
        self.latency = Histogram("dsocr_request_latency_seconds", "chat completion latency (arrival to last byte)",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("dsocr_time_to_first_token_seconds", "arrival to the first generated text",
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(stats))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
