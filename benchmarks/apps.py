"""The app under benchmark: a minimal FastAPI item endpoint, with one middleware or none.

`BENCH_MIDDLEWARE` picks the variant, so every variant runs the very same handler:
bare, floor (a pure ASGI middleware that only awaits the app), apiscope, instrumentator
(prometheus-fastapi-instrumentator), exporter (starlette-exporter), otel (OpenTelemetry's ASGI
middleware with a batch span processor).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, HTTPException

ITEMS = {i: {"id": i, "name": f"item {i}", "price": i * 1.5} for i in range(1000)}


class Floor:
    """What any middleware costs before it does anything: one coroutine around the app's."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def build() -> Any:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, Any]:
        item = ITEMS.get(item_id)
        if item is None:
            raise HTTPException(status_code=404)
        return item

    variant = os.environ.get("BENCH_MIDDLEWARE", "bare")
    if variant == "floor":
        return Floor(app)
    if variant == "apiscope":
        import apiscope

        apiscope.instrument(app)
    elif variant == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app)
    elif variant == "exporter":
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware)
    elif variant == "otel":
        from opentelemetry import trace
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        class NullExporter(SpanExporter):
            def export(self, spans: Any) -> Any:
                from opentelemetry.sdk.trace.export import SpanExportResult

                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
        trace.set_tracer_provider(provider)
        return OpenTelemetryMiddleware(app)
    elif variant != "bare":
        raise SystemExit(f"unknown BENCH_MIDDLEWARE {variant!r}")
    return app


app = build()
