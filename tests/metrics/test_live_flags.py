"""Live flags (and so `apiscope_flags_active` on /metrics) judge by the run's thresholds."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from apiscope.analysis.thresholds import Thresholds
from apiscope.metrics import LiveFlags, MetricsExporter, session_flags
from tests.analysis.builder import healthy


def test_live_flags_use_the_thresholds_given(tmp_path: Path) -> None:
    session = healthy().write(tmp_path / "healthy.sqlite")
    assert session_flags(session, thresholds=Thresholds())() == []
    exporter = MetricsExporter()
    live = LiveFlags(exporter, session_flags(session, thresholds=Thresholds(slo_ms=1.0)))
    assert live.refresh()
    scrape = generate_latest(exporter.registry).decode()
    assert 'apiscope_flags_active{kind="slow_endpoint"' in scrape
