"""The ASGI app: the routes of each API family, health, metrics, the guard (key, body size) and the error envelopes.

Health answers in every family's spelling: `GET /health`, `/ping` (SageMaker) and `GET /` (TEI), `/v1/health/live`
(NIM) are live while a Triton endpoint is live; `GET /ready` and `/v1/health/ready` (NIM) are ready while one is ready
(Triton's `--strict-readiness`: every model loaded). They and `GET /metrics` (Prometheus) are open (no key), for
probes, balancers and scrapers, so Triton's own HTTP can stay on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib

import tritonclient.grpc.aio as grpcclient_aio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.instrumentation.utils import suppress_instrumentation
from tritonclient.utils import InferenceServerException

import nestrank
from nestrank.api import cohere_embed_routes, errors, nim_routes, openai_routes, rerank_routes, tei_routes
from nestrank.api.catalogue import Catalogue
from nestrank.api.disconnect import CancelledWhenTheCallerLeaves
from nestrank.api.guard import Guard
from nestrank.api.observability import FrontMetrics, Measured, instrument, start_tracing
from nestrank.api.settings import FrontSettings
from nestrank.protocol.errors import UnavailableError

PROBE_TIMEOUT_S = 2.0


class Health:
    """Triton's live / ready over gRPC (open even when inference needs a key), any endpoint counting."""

    def __init__(self, settings: FrontSettings):
        self.settings = settings
        self.clients = []

    def open(self) -> None:
        tls = {}
        if self.settings.triton_ca:
            tls = {"ssl": True, "root_certificates": str(self.settings.triton_ca)}
        self.clients = [grpcclient_aio.InferenceServerClient(url, **tls) for url in self.settings.triton_urls]

    async def _any(self, probe: str) -> bool:
        async def one(client) -> bool:
            try:
                return await getattr(client, probe)(client_timeout=PROBE_TIMEOUT_S)
            except InferenceServerException:
                return False

        with suppress_instrumentation():  # probes and balancers' polls are no traces
            return any(await asyncio.gather(*(one(c) for c in self.clients)))

    async def live(self) -> bool:
        return await self._any("is_server_live")

    async def ready(self) -> bool:
        return await self._any("is_server_ready")

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def create_app(settings: FrontSettings) -> FastAPI:
    tracing = start_tracing(settings.otlp_endpoint)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.health.open()  # gRPC channels belong to the serving loop: made here, not at import
        try:
            yield
        finally:
            await app.state.catalogue.close()
            await app.state.health.close()
            if tracing is not None:
                tracing.shutdown()  # exports what is still buffered

    app = FastAPI(
        title="nestrank HTTP API",
        version=nestrank.__version__,
        description="OpenAI, Cohere/Jina, TEI and NIM routes over nestrank's Triton models.",
        lifespan=lifespan,
    )
    metrics = FrontMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.catalogue = Catalogue(settings, metrics.tokens)
    app.state.health = Health(settings)
    errors.install(app, settings.retry_after_s)
    for family in (openai_routes, rerank_routes, cohere_embed_routes, tei_routes, nim_routes):
        app.include_router(family.router)

    unhealthy = {503: {"description": "no Triton endpoint answers"}}

    async def live(request: Request):
        if not await request.app.state.health.live():
            raise UnavailableError("no Triton endpoint is live")
        return Response(status_code=200)

    async def ready(request: Request):
        if not await request.app.state.health.ready():
            raise UnavailableError("no Triton endpoint is ready (starting, or a model is loading)")
        return Response(status_code=200)

    for path, summary in (("/health", "Live: a Triton endpoint answers (TEI's /health)"), ("/ping", "Live (SageMaker)"),
                          ("/", "Live (TEI's GET /)")):  # fmt: skip
        app.add_api_route(path, live, methods=["GET"], tags=["Health"], summary=summary, responses=unhealthy)
    app.add_api_route("/ready", ready, methods=["GET"], tags=["Health"], responses=unhealthy,
                      summary="Ready: a Triton endpoint is ready (every model loaded)")  # fmt: skip

    @app.get("/v1/health/live", tags=["Health"], summary="Live (NIM)", responses=unhealthy)
    async def nim_live(request: Request):
        await live(request)
        return JSONResponse({"object": "health.response", "message": "Service is live."})

    @app.get("/v1/health/ready", tags=["Health"], summary="Ready (NIM)", responses=unhealthy)
    async def nim_ready(request: Request):
        await ready(request)
        return JSONResponse({"object": "health.response", "message": "Service is ready."})

    @app.get("/metrics", tags=["Health"], summary="Prometheus metrics of the front (Triton's are on its own port)")
    async def prometheus_metrics(request: Request):
        body, content_type = request.app.state.metrics.exposition()
        return Response(body, media_type=content_type)

    instrument(app, grpc_calls=tracing is not None)
    app.add_middleware(CancelledWhenTheCallerLeaves)  # innermost: the guard has bounded the body it reads
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       retry_after_s=settings.retry_after_s)  # fmt: skip
    app.add_middleware(Measured, metrics=metrics, spec=app)
    return app
