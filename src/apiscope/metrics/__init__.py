"""Prometheus exposition of what a collecting command sees (see docs/metrics.md)."""

from __future__ import annotations

from apiscope.metrics.exporter import MetricsExporter, serve_metrics

__all__ = ["MetricsExporter", "serve_metrics"]
