"""Prometheus exposition of what a collecting command sees (see docs/metrics.md)."""

from __future__ import annotations

from apiscope.metrics.exporter import (
    LATENCY_BUCKETS,
    MetricsExporter,
    metrics_wsgi_app,
    serve_metrics,
)
from apiscope.metrics.live_flags import LiveFlags, session_flags

__all__ = ["LATENCY_BUCKETS", "LiveFlags", "MetricsExporter", "metrics_wsgi_app",
           "serve_metrics", "session_flags"]
