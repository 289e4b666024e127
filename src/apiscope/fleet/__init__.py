"""The fleet view: every apiscope instance a Prometheus server scrapes, side by side."""

from __future__ import annotations

from apiscope.fleet.app import create_fleet_app
from apiscope.fleet.data import (
    FleetSnapshot,
    InstanceFlag,
    RouteStat,
    fetch_snapshot,
    fleet_queries,
)
from apiscope.fleet.prometheus import PrometheusClient, PrometheusError, Sample

__all__ = ["FleetSnapshot", "InstanceFlag", "PrometheusClient", "PrometheusError",
           "RouteStat", "Sample", "create_fleet_app", "fetch_snapshot", "fleet_queries"]
