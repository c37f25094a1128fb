"""The rerank model's calls to its `_encode` and `_score` (BLS), as the `encode` and `score` that RerankService
takes, in the wire's passage layout (the config's `passage_layout`: RAGGED, or PADDED for exports from before it). A
request's documents go to `_encode` in chunks of the served `max_encode_documents`, all sent at once (`async_exec`
on the model's event loop: glue.BlsLoop), so that Triton's dynamic batcher merges them (with other requests'
chunks) into executions of its scheduler. The chunks carry one admission group (a fresh id per call), so that
`_encode` counts none of them against another (they are one request); the first chunk that fails fails the
request, with its kind (an overloaded `_encode` is overload)."""

from __future__ import annotations

import uuid

import numpy as np

from nestrank.protocol import reranking as r
from nestrank.protocol.passages import PassageStates
from nestrank.serving.triton.glue import BlsLoop


class SubModels:
    def __init__(self, pb_utils, name: str, config: r.RerankerConfig):
        self.pb_utils, self.name, self.config = pb_utils, name, config
        self.bls = BlsLoop(pb_utils)

    def _send_chunk(self, documents: list[str], ratio: int, group: str):
        layout = self.config.passage_layout
        texts = np.array([[d.encode() for d in documents]], dtype=object)  # RAGGED: one chunk, [1, n]
        names = [r.PASSAGE_STATES, r.PASSAGE_COUNTS] + ([r.PASSAGE_GROUPS] if layout == r.RAGGED else [])
        inputs = {r.DOCUMENTS: texts if layout == r.RAGGED else texts.T}  # PADDED: [n, 1]
        return self.bls.submit(f"{self.name}_encode", inputs, names, {r.ENCODE_RATIO: ratio, r.ENCODE_GROUP: group})

    def _read_chunk(self, answer: list[np.ndarray], ratio: int) -> PassageStates:
        layout = self.config.passage_layout
        rows = answer + [None] if layout == r.PADDED else [a[0] for a in answer]
        return r.from_wire(layout, *rows, ratio, self.config.passage_fingerprint)

    def encode(self, documents: list[str], ratio: int) -> PassageStates:
        size, group = self.config.max_encode_documents, uuid.uuid4().hex
        futures = [self._send_chunk(documents[start : start + size], ratio, group)
                   for start in range(0, len(documents), size)]  # fmt: skip
        try:
            return PassageStates.concat([self._read_chunk(future.result(), ratio) for future in futures])
        finally:
            for future in futures:  # a chunk not sent yet is not worth sending once one failed
                future.cancel()

    def score(self, prompt: np.ndarray, passages: PassageStates) -> np.ndarray:
        """Margins logit(yes) - logit(no), in the passages' order."""
        tensors = {r.DECODER_INPUT_IDS: prompt, **r.wire_tensors(passages, self.config.passage_layout)}
        inputs = {key: value[None] for key, value in tensors.items()}
        return self.bls.submit(f"{self.name}_score", inputs, [r.MARGINS]).result()[0][0]
