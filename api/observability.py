"""What the front tells about itself: Prometheus metrics (`GET /metrics`, prometheus_client) and OpenTelemetry traces.

Metrics, per route template (never the raw path), method and status: requests, errors (status >= 400), latency;
requests in flight; tokens embedded per model (counted with the model's own tokenizer, as `usage` is).

Traces: every request continues the caller's W3C `traceparent` (a server span per request, a span per embed or
rerank call, a client span per gRPC call to Triton, whose metadata carries the `traceparent` on). Spans are exported
over OTLP/HTTP when `--otlp-endpoint` or the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`, ...) say where; without either nothing is recorded and
the gRPC calls are left as they are (`instrument`).
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)  # a rerank on CPUs: 40 s
UNMATCHED = "unmatched"  # the route label of a path no route serves (bounded: raw paths never become labels)
NOT_TRACED = "health,ready,metrics,ping,v1/health"  # probes and scrapes: no spans
disable_created_metrics()  # no `_created` series beside every counter and histogram


class FrontMetrics:
    """One registry per app, so that several fronts in one process (tests) keep their own counts."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nestrank_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)  # fmt: skip
        self.errors = Counter("nestrank_http_errors", "HTTP answers with a status >= 400",
                              ["route", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("nestrank_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS_S, registry=r)  # fmt: skip
        self.in_flight = Gauge("nestrank_http_requests_in_flight", "HTTP requests being answered", registry=r)
        self.tokens = Counter("nestrank_http_tokens", "Tokens embedded, counted with the model's tokenizer",
                              ["model"], registry=r)  # fmt: skip

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Measured:
    """ASGI middleware, outermost: counts every answer, the guard's refusals included. `spec` is the app, whose
    OpenAPI paths name the routes of requests refused before routing."""

    def __init__(self, app: ASGIApp, metrics: FrontMetrics, spec):
        self.app, self.metrics, self.spec = app, metrics, spec

    def route_of(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router on a match
        if route is not None:
            return route.path
        path = scope["path"]  # refused before routing (the guard): a route's own path, or not a route at all
        return path if path in self.spec.openapi()["paths"] else UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight.dec()
            labels = (self.route_of(scope), scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            if status >= 400:
                self.metrics.errors.labels(*labels).inc()


def traces_endpoint(base: str) -> str:
    """An OTLP/HTTP base URL (what OTEL_EXPORTER_OTLP_ENDPOINT holds) → its traces URL; a traces URL stays."""
    return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"


def start_tracing(otlp_endpoint: str | None):
    """An SDK tracer provider that exports over OTLP/HTTP, installed as the global one, when an endpoint is given
    or configured by OTEL_* variables; None otherwise (the API alone still carries the caller's context on)."""
    env = os.environ
    configured = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or not (otlp_endpoint or configured):
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over this default name.
    resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "nestrank-front"})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=traces_endpoint(otlp_endpoint)) if otlp_endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def instrument(app, grpc_calls: bool) -> None:
    """Server spans for the app's routes (the caller's traceparent continued); with `grpc_calls` (tracing is exported),
    client spans for the gRPC calls made on channels opened from now on: tritonclient opens them through grpc.aio,
    which the instrumentor patches once per process, and its interceptor writes the traceparent into each call's
    metadata. Only then: grpc.aio's interceptors keep a call running when the call that started it is cancelled
    (tests/unit/clients/test_client_calls.py catches it), so a default front keeps its cancellation exact."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

    FastAPIInstrumentor.instrument_app(app, excluded_urls=NOT_TRACED, exclude_spans=["receive", "send"])
    instrumentor = GrpcAioInstrumentorClient()
    if grpc_calls and not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
