"""The ASGI app: the routes of each API family, health, the guard (key, body size) and the error envelopes.

`GET /health` is live while a Triton endpoint is live; `GET /ready` is ready while one is ready (Triton's
`--strict-readiness`: every model loaded). Both are open (no key), for probes and balancers, so Triton's own HTTP
can stay on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib

import tritonclient.grpc.aio as grpcclient_aio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from tritonclient.utils import InferenceServerException

import nestrank
from nestrank.api import errors, openai_routes, rerank_routes, tei_routes
from nestrank.api.catalogue import Catalogue
from nestrank.api.guard import Guard
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

        return any(await asyncio.gather(*(one(c) for c in self.clients)))

    async def live(self) -> bool:
        return await self._any("is_server_live")

    async def ready(self) -> bool:
        return await self._any("is_server_ready")

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def create_app(settings: FrontSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.health.open()  # gRPC channels belong to the serving loop: made here, not at import
        try:
            yield
        finally:
            await app.state.catalogue.close()
            await app.state.health.close()

    app = FastAPI(
        title="nestrank HTTP API",
        version=nestrank.__version__,
        description="OpenAI embeddings, Cohere/Jina rerank and TEI routes over nestrank's Triton models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalogue = Catalogue(settings)
    app.state.health = Health(settings)
    errors.install(app, settings.retry_after_s)
    app.include_router(openai_routes.router)
    app.include_router(rerank_routes.router)
    app.include_router(tei_routes.router)

    @app.get("/health", tags=["Health"], summary="Live: a Triton endpoint answers (TEI's /health)",
             responses={503: {"description": "no Triton endpoint is live"}})  # fmt: skip
    async def health(request: Request):
        if not await request.app.state.health.live():
            raise UnavailableError("no Triton endpoint is live")
        return Response(status_code=200)

    @app.get("/ready", tags=["Health"], summary="Ready: a Triton endpoint is ready (every model loaded)",
             responses={503: {"description": "no Triton endpoint is ready"}})  # fmt: skip
    async def ready(request: Request):
        if not await request.app.state.health.ready():
            raise UnavailableError("no Triton endpoint is ready (starting, or a model is loading)")
        return Response(status_code=200)

    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       retry_after_s=settings.retry_after_s)  # fmt: skip
    return app
