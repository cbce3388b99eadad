"""Prometheus instruments of the API process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

REGISTRY = CollectorRegistry()
HTTP_LATENCY = Histogram("secateurs_http_request_seconds", "HTTP request latency", ["method", "route", "status"],
                         registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
JOBS = Gauge("secateurs_jobs", "Jobs by status", ["status"], registry=REGISTRY)
QUEUE_WAIT = Histogram("secateurs_queue_wait_seconds", "Time from submission to running (jobs seen by this API)",
                       registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
