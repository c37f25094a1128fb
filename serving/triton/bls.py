"""The rerank model's calls to its `_encode` and `_score` (BLS), as the `encode` and `score` that RerankService
takes, in the wire's passage layout (the config's `passage_layout`: RAGGED, or PADDED for exports from before it). A
request's documents go to `_encode` in chunks of the served `max_encode_documents`, all sent at once from
a small thread pool, so that Triton's dynamic batcher merges them (with other requests' chunks) into executions of
its scheduler; the first chunk that fails fails the request, with its kind (an overloaded `_encode` is overload)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nestrank.protocol import reranking as r
from nestrank.protocol.passages import PassageStates
from nestrank.serving.triton.glue import bls_call

CHUNKS_PER_REQUEST = 4  # encode threads per request the rerank model works on at once


class SubModels:
    def __init__(self, pb_utils, name: str, config: r.RerankerConfig):
        self.pb_utils, self.name, self.config = pb_utils, name, config
        workers = CHUNKS_PER_REQUEST * config.max_requests_in_flight
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nestrank-bls-encode")

    def _encode_chunk(self, documents: list[str], ratio: int) -> PassageStates:
        pb_utils, layout = self.pb_utils, self.config.passage_layout
        texts = np.array([[d.encode() for d in documents]], dtype=object)  # RAGGED: one chunk, [1, n]
        names = [r.PASSAGE_STATES, r.PASSAGE_COUNTS] + ([r.PASSAGE_GROUPS] if layout == r.RAGGED else [])
        inputs = [pb_utils.Tensor(r.DOCUMENTS, texts if layout == r.RAGGED else texts.T)]  # PADDED: [n, 1]
        answer = bls_call(pb_utils, f"{self.name}_encode", inputs, names, {"compression_ratio": ratio})
        rows = answer if layout == r.PADDED else [a[0] for a in answer]
        return r.from_wire(layout, *rows, *([None] * (3 - len(rows))), ratio, self.config.passage_fingerprint)

    def encode(self, documents: list[str], ratio: int) -> PassageStates:
        size = self.config.max_encode_documents
        futures = [self.pool.submit(self._encode_chunk, documents[start : start + size], ratio)
                   for start in range(0, len(documents), size)]  # fmt: skip
        try:
            return PassageStates.concat([future.result() for future in futures])
        finally:
            for future in futures:  # what has not started yet is not worth sending once one chunk failed
                future.cancel()

    def score(self, prompt: np.ndarray, passages: PassageStates) -> np.ndarray:
        """Margins logit(yes) - logit(no), in the passages' order."""
        tensors = {r.DECODER_INPUT_IDS: prompt, **r.wire_tensors(passages, self.config.passage_layout)}
        inputs = [self.pb_utils.Tensor(key, value[None]) for key, value in tensors.items()]
        return bls_call(self.pb_utils, f"{self.name}_score", inputs, [r.MARGINS])[0][0]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
