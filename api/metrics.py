"""Prometheus instruments of the API process."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

REGISTRY = CollectorRegistry()
HTTP_LATENCY = Histogram("secateurs_http_request_seconds", "HTTP request latency", ["method", "route", "status"],
                         registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
JOBS = Gauge("secateurs_jobs", "Jobs by status", ["status"], registry=REGISTRY)
QUEUE_WAIT = Histogram("secateurs_queue_wait_seconds", "Time from submission to running (jobs seen by this API)",
                       registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


class Timing:
    """ASGI middleware: HTTP_LATENCY by method, route template and status, up to the response's start (a
    Server-Sent Events stream counts its time to the headers, not its length)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")  # set by the router on this same scope
                HTTP_LATENCY.labels(scope["method"], getattr(route, "path", "unmatched"),
                                    str(message["status"])).observe(time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, timed_send)
