"""What every async client shares: endpoints and credentials, one deadline per call, the model's typed
description (`info()`, read once from its Triton config), and closing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from nestrank.clients.transport import DEFAULT_URL, AsyncEndpoints, Credentials, RetryPolicy
from nestrank.protocol.parameters import ModelInfo

C = TypeVar("C")


class AsyncModelClient(Generic[C]):
    """`url` may be a list of endpoints: requests rotate over them and fail over. `timeout_s` bounds each call, its
    retries included; `api_key` (default: $NESTRANK_API_KEY) and `tls` (ssl=True, root_certificates=,
    private_key=, certificate_chain=: PEM files) as the server needs."""

    config_type: type[C]
    default_model: str
    default_timeout_s: float = 60.0

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        model: str | None = None,
        *,
        timeout_s: float | None = None,
        retry: RetryPolicy = RetryPolicy(),
        concurrency: int = 4,
        api_key: str | None = None,
        **tls,
    ):
        self.model = model or self.default_model
        self.timeout_s = timeout_s or self.default_timeout_s
        self.concurrency = concurrency
        self._endpoints = AsyncEndpoints(url, retry, Credentials.from_env(api_key, **tls))
        self._info: ModelInfo[C] | None = None

    async def _infer(self, model: str, inputs: list, outputs: list, parameters: dict):
        return await self._endpoints.call(
            lambda ep, **o: ep.infer(model, inputs, outputs=outputs, parameters=parameters, **o), self.timeout_s
        )

    async def info(self) -> ModelInfo[C]:
        """The served model's description: its config's fields read through (`info().config` has them all) and
        its batch limit."""
        if self._info is None:
            config = await self._endpoints.call(
                lambda ep, **o: ep.get_model_config(self.model, as_json=True, **o), self.timeout_s
            )
            self._info = ModelInfo.read(config, self.config_type)
        return self._info

    async def close(self) -> None:
        await self._endpoints.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
