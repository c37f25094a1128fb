"""Triton glue for `<name>` (BLS): the rerank entry point. Reads passages through the first level and the passage
store (the config's `passage_store`; default: LMDB in the serving user's cache), encodes only the misses through
`<name>_encode`, scores through `<name>_score`, and stores what warm / index requests send. One request at a time
(max_batch_size 1: every tensor has a leading dimension of 1)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol import reranking as r
from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import PassageStates
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_encoder import with_passage_fingerprint
from nestrank.serving.pipeline.passage_store import configured_store, open_store
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.rerank_service import Candidates, RerankService
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer
from nestrank.serving.triton.glue import (
    bls_call,
    decode_texts,
    error_response,
    input_array,
    one_row,  # fmt: skip
    read_model_args,
    request_parameters,
)
from nestrank.serving.triton.metrics import PassageMetrics

ENCODE_CHUNK = 32  # documents per BLS request to `<name>_encode` (within its max batch size)


def _texts(request, name, limit):
    array = one_row(input_array(pb_utils, request, name, required=False), name)
    return None if array is None else decode_texts(array, name, max_count=limit)


def _bytes_tensor(name, values):
    return pb_utils.Tensor(name, np.array([[v.encode() for v in values]], dtype=object))


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, version_dir = read_model_args(pb_utils, args, r.RerankerConfig)
        name = model_config["name"]
        config = with_passage_fingerprint(config, version_dir.parent.parent / f"{name}_encode" / "1")
        store = open_store(configured_store(config.passage_store))
        first_level = PassageCache(config.passage_cache_bytes)
        self.metrics = PassageMetrics(pb_utils, name, args["model_instance_name"], store.url)
        passages = Passages(config.passage_fingerprint, config.ratios, first_level, store, self.metrics.fetch.observe)

        def encode(documents, ratio):
            parts = []
            for start in range(0, len(documents), ENCODE_CHUNK):
                chunk = np.array([d.encode() for d in documents[start : start + ENCODE_CHUNK]], dtype=object)
                inputs = [pb_utils.Tensor(r.DOCUMENTS, chunk[:, None])]
                states, counts = bls_call(pb_utils, f"{name}_encode", inputs, [r.PASSAGE_STATES, r.PASSAGE_COUNTS],
                                          {"compression_ratio": ratio})  # fmt: skip
                parts.append(PassageStates.from_padded(states, counts, ratio, fingerprint=config.passage_fingerprint))
            return PassageStates.concat(parts)

        def score(prompt, passages):
            states, counts = passages.padded()
            tensors = {r.DECODER_INPUT_IDS: prompt, r.PASSAGE_STATES: states, r.PASSAGE_COUNTS: counts}
            inputs = [pb_utils.Tensor(key, value[None]) for key, value in tensors.items()]
            return bls_call(pb_utils, f"{name}_score", inputs, [r.MARGINS])[0][0]

        tokenizer = RerankTokenizer(version_dir / TOKENIZER_FILE, config)
        self.service = RerankService(config, tokenizer, passages, encode, score)

    def _read(self, request):
        """(query, candidates, options), every limit checked before any work."""
        config = self.service.config
        options = r.parse_rerank_options(request_parameters(request), config)
        documents = _texts(request, r.DOCUMENTS, config.max_candidates)
        ids = _texts(request, r.PASSAGE_IDS, config.max_candidates)
        if options.warm:
            return None, Candidates(documents or [], ids), options
        query = _texts(request, r.QUERY, 1)
        if not query:
            raise ValidationError(r.QUERY, "send exactly one query")
        states = one_row(input_array(pb_utils, request, r.PASSAGE_STATES, required=False), r.PASSAGE_STATES)
        counts = one_row(input_array(pb_utils, request, r.PASSAGE_COUNTS, required=False), r.PASSAGE_COUNTS)
        return query[0], Candidates(documents, ids, states, counts), options

    def _respond(self, query, candidates, options):
        if options.warm:  # passage_ids, if sent, are the user's ids for the documents: index them
            stored = self.service.store(candidates.documents, options.compression_ratio, candidates.passage_ids)
            return [_bytes_tensor(r.PASSAGE_IDS, stored.content_ids),
                    pb_utils.Tensor(r.PASSAGE_TOKENS, stored.tokens[None]),
                    pb_utils.Tensor(r.STORED_BYTES, stored.stored_bytes[None])]  # fmt: skip
        result = self.service.rerank(query, candidates, options)
        out = [pb_utils.Tensor(r.SCORES, result.scores[None]), pb_utils.Tensor(r.INDICES, result.indices[None]),
               _bytes_tensor(r.PASSAGE_IDS, result.passage_ids)]  # fmt: skip
        if options.return_documents and candidates.documents is not None:
            out.append(_bytes_tensor(r.DOCUMENTS, [candidates.documents[i] for i in result.indices]))
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                read = self._read(request)
            except Exception as err:
                responses.append(error_response(pb_utils, err))
                continue
            try:
                responses.append(pb_utils.InferenceResponse(self._respond(*read)))
            except Exception as err:
                responses.append(error_response(pb_utils, err))
        self.metrics.report(self.service.passages.first_level.stats, self.service.passages.stats)
        return responses
