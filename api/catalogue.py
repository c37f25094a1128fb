"""The models the front serves: which names are embedders and which rerankers (read from each model's config, the
way the clients read it), one async client per model, and from the repository on this host each embedder's tokenizer
(for `usage`, /tokenize, /decode) and int8/uint8 calibration (to quantize in the front).

Names come from the model repository when the front runs on Triton's host (`nestrank serve` passes it), else from
`--model`; any other name a caller sends is looked up on first use, so a model loaded later is served too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nestrank.api.settings import FrontSettings
from nestrank.clients.embed import AsyncEmbedClient
from nestrank.clients.rerank import AsyncRerankClient
from nestrank.clients.transport import RetryPolicy
from nestrank.protocol.errors import ModelNotFoundError, UnsupportedError, ValidationError
from nestrank.protocol.parameters import ModelInfo, shown
from nestrank.serving.pipeline.embedder import CALIBRATION_FILE  # names of an export's files, no onnxruntime
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE

EMBEDDER, RERANKER = "embedding", "rerank"
SUB_MODELS = ("_encode", "_score")  # a reranker NAME is served by NAME_encode and NAME_score as well


class TokenCounter:
    """Counts tokens as the served embedder does (its own tokenizer.json, prompt, max_length cut), for `usage`.
    Runs in a worker thread while Triton embeds, so it adds no latency. `whole` is the same tokenizer uncut, for
    TEI's /tokenize and /decode."""

    def __init__(self, tokenizer_json: Path, max_length: int):
        from tokenizers import Tokenizer

        from nestrank.serving.pipeline.tokenization import TextTokenizer  # numpy and `tokenizers` only

        self.tokenizer = TextTokenizer(tokenizer_json, max_length)
        self.whole = Tokenizer.from_file(str(tokenizer_json))
        self.whole.no_truncation()
        self.whole.no_padding()

    def count(self, texts: Sequence[str], prompt: str = "", direction: str = "right") -> int:
        texts = [prompt + t for t in texts] if prompt else texts
        return sum(len(ids) for ids in self.tokenizer.encode(texts, truncate=True, direction=direction))


@dataclass
class ServedModel:
    name: str
    kind: str  # EMBEDDER or RERANKER
    client: AsyncEmbedClient | AsyncRerankClient
    info: ModelInfo
    created: int  # when this front first saw it (OpenAI's `created`)
    counter: TokenCounter | None = None
    ranges: dict[str, np.ndarray] | None = None  # the embedder's int8/uint8 calibration, when its files are here
    tokens: object = None  # its child of the front's tokens counter (`.inc(n)`), if the front counts them


class Catalogue:
    def __init__(self, settings: FrontSettings, tokens=None):
        """`tokens`: a Prometheus counter with a `model` label, for the tokens each embedder embeds."""
        self.settings = settings
        self.tokens = tokens
        self._models: dict[str, ServedModel] = {}
        self._not_ours: set[str] = set()  # names Triton serves that are neither (sub-models, other kinds)
        self._lock = asyncio.Lock()

    def _client_options(self) -> dict:
        s = self.settings
        tls = {"ssl": True, "root_certificates": str(s.triton_ca)} if s.triton_ca else {}
        # Each endpoint tried once: a failed one is failed over at once; overload goes back to the caller as a 429
        # with Retry-After (the SDKs retry it), instead of being retried here while it adds load.
        retry = RetryPolicy(attempts=len(s.triton_urls))
        return dict(timeout_s=s.timeout_s, retry=retry, concurrency=s.concurrency, api_key=s.api_key, **tls)

    def names(self) -> list[str]:
        """Candidate model names: the repository's directories, or the configured list."""
        s = self.settings
        if s.repository is not None and Path(s.repository).is_dir():
            names = [p.name for p in Path(s.repository).iterdir() if (p / "config.pbtxt").is_file()]
        else:
            names = list(s.models)
        return sorted(set(names) | set(self._models))

    async def _probe(self, name: str) -> ServedModel | None:
        """The model, if Triton serves it as an embedder or a reranker; None for other kinds. ModelNotFoundError
        when Triton has no such model; UnavailableError when Triton does not answer."""
        for kind, client_type in ((EMBEDDER, AsyncEmbedClient), (RERANKER, AsyncRerankClient)):
            client = client_type(list(self.settings.triton_urls), name, **self._client_options())
            try:
                info = await client.info()
            except UnsupportedError:  # not this kind of nestrank model
                await client.close()
                continue
            except BaseException:
                await client.close()
                raise
            model = ServedModel(name, kind, client, info, int(time.time()))
            if self.tokens is not None and kind == EMBEDDER:
                model.tokens = self.tokens.labels(model=name)
            if kind == EMBEDDER and (files := self._version_dir(name)) is not None:
                model.counter = TokenCounter(files / TOKENIZER_FILE, info.config.max_length)
                if (files / CALIBRATION_FILE).is_file():
                    with np.load(files / CALIBRATION_FILE) as stored:
                        model.ranges = {key: stored[key] for key in stored.files}
            return model
        return None

    def _version_dir(self, name: str) -> Path | None:
        """The newest version directory of an embedder in the repository on this host (its tokenizer, calibration)."""
        if self.settings.repository is None:
            return None
        versions = sorted((p.parent for p in (Path(self.settings.repository) / name).glob(f"*/{TOKENIZER_FILE}")),
                          key=lambda p: int(p.name) if p.name.isdigit() else -1)  # fmt: skip
        return versions[-1] if versions else None

    async def get(self, name: str) -> ServedModel | None:
        """The model called `name` (looked up on first use), None if Triton serves it but it is neither kind."""
        if name in self._models:
            return self._models[name]
        if name in self._not_ours or await self._is_sub_model(name):
            return None
        async with self._lock:
            if name not in self._models and name not in self._not_ours:
                model = await self._probe(name)
                if model is None:
                    self._not_ours.add(name)
                else:
                    self._models[name] = model
        return self._models.get(name)

    async def _is_sub_model(self, name: str) -> bool:
        for suffix in SUB_MODELS:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and base:
                try:
                    model = await self.get(base)
                except ModelNotFoundError:
                    continue
                if model is not None and model.kind == RERANKER:
                    self._not_ours.add(name)
                    return True
        return False

    async def served(self, kind: str | None = None) -> list[ServedModel]:
        """Every model the front can serve now."""
        models = []
        for name in self.names():
            try:
                model = await self.get(name)
            except ModelNotFoundError:  # in the repository, not loaded (failed, or being reloaded)
                continue
            if model is not None and (kind is None or model.kind == kind):
                models.append(model)
        return models

    async def model(self, name: str | None, kind: str, field: str = "model") -> ServedModel:
        """The `kind` model a request names (or the default one when it names none); errors name `field`."""
        if name is None:
            default = self.settings.embed_model if kind == EMBEDDER else self.settings.rerank_model
            if default is None:
                served = await self.served(kind)
                if not served:
                    raise ModelNotFoundError(f"no {kind} model is served here")
                return served[0]
            name = default
        if not isinstance(name, str) or not name:
            raise ValidationError(field, f"expected a model name, got {shown(name)}")
        try:
            model = await self.get(name)
        except ModelNotFoundError:
            model = None
        if model is None or model.kind != kind:
            served = ", ".join(m.name for m in await self.served(kind)) or "none"
            what = f"{shown(name)} is a {model.kind} model" if model else f"no model {shown(name)} is served here"
            raise ModelNotFoundError(f"{field}: {what}; {kind} models: {served}")
        return model

    async def close(self) -> None:
        for model in self._models.values():
            await model.client.close()
        self._models.clear()
