"""Triton glue for `<name>` (BLS): the rerank entry point. Holds the passage-state cache; encodes only
the misses through `<name>_encode` and scores through `<name>_score`. One request at a time (max_batch_size 1:
every tensor has a leading dimension of 1)."""

import os

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol.errors import BackendError, UnavailableError, ValidationError
from nestrank.protocol.reranking import (
    DECODER_INPUT_IDS,
    DOCUMENTS,
    INDICES,
    MARGINS,
    PASSAGE_COUNTS,
    PASSAGE_IDS,
    PASSAGE_STATES,
    PASSAGE_STATES_FP32,
    QUERY,
    SCORES,
    RerankerConfig,
    parse_rerank_options,
)
from nestrank.serving.passage_cache import PassageCache
from nestrank.serving.rerank_service import Candidates, RerankService
from nestrank.serving.reranker import TOKENIZER_FILE, RerankTokenizer, stack, unstack
from nestrank.serving.triton_glue import (
    CacheMetrics,
    decode_texts,
    error_response,
    input_array,
    one_row,
    read_model_args,
    request_error,
    request_parameters,
)

ENCODE_CHUNK = 32  # documents per BLS request to `<name>_encode` (within its max batch size)
SUB_CALL_ERRORS = {"UNAVAILABLE": UnavailableError, "INVALID_ARG": ValidationError}  # else BackendError (INTERNAL)


def _call(model, inputs, outputs, parameters=None):
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=inputs, requested_output_names=outputs, parameters=parameters or {}
    )
    response = request.exec()
    if response.has_error():  # keep the kind: a full queue below is still overload for the caller
        codes = {getattr(pb_utils.TritonError, name, None): name for name in SUB_CALL_ERRORS}
        kind = SUB_CALL_ERRORS.get(codes.get(response.error().code()), BackendError)
        message = f"{model}: {response.error().message()}"
        raise ValidationError(None, message) if kind is ValidationError else kind(message)
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


def _texts(request, name, limit):
    array = one_row(input_array(pb_utils, request, name, required=False), name)
    return None if array is None else decode_texts(array, name, max_count=limit)


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, version_dir = read_model_args(pb_utils, args, RerankerConfig)
        name = model_config["name"]
        tokenizer = RerankTokenizer(version_dir / TOKENIZER_FILE, config)
        cache = PassageCache(int(os.environ.get("NESTRANK_PASSAGE_CACHE_BYTES", config.passage_cache_bytes)))

        def encode(documents, ratio):
            passages = []
            for start in range(0, len(documents), ENCODE_CHUNK):
                chunk = np.array([d.encode() for d in documents[start : start + ENCODE_CHUNK]], dtype=object)
                states, counts = _call(
                    f"{name}_encode", [pb_utils.Tensor(DOCUMENTS, chunk.reshape(-1, 1))],
                    [PASSAGE_STATES_FP32, PASSAGE_COUNTS], {"compression_ratio": ratio},
                )  # fmt: skip
                passages += unstack(states, counts, ratio)
            return passages

        def score(prompt, passages):
            states, counts = stack(passages)
            tensors = {DECODER_INPUT_IDS: prompt, PASSAGE_STATES: states, PASSAGE_COUNTS: counts}
            inputs = [pb_utils.Tensor(key, value[None]) for key, value in tensors.items()]
            return _call(f"{name}_score", inputs, [MARGINS])[0][0]

        self.service = RerankService(config, tokenizer, cache, encode, score)
        self.metrics = CacheMetrics(pb_utils, name)

    def _read(self, request):
        """(query, candidates, options), every limit checked before any work."""
        config = self.service.config
        options = parse_rerank_options(request_parameters(request), config)
        documents = _texts(request, DOCUMENTS, config.max_candidates)
        if options.warm:
            return None, Candidates(documents or []), options
        query = _texts(request, QUERY, 1)
        if not query:
            raise ValidationError(QUERY, "send exactly one query")
        states = one_row(input_array(pb_utils, request, PASSAGE_STATES, required=False), PASSAGE_STATES)
        counts = one_row(input_array(pb_utils, request, PASSAGE_COUNTS, required=False), PASSAGE_COUNTS)
        ids = _texts(request, PASSAGE_IDS, config.max_candidates)
        return query[0], Candidates(documents, ids, states, counts), options

    def _respond(self, query, candidates, options):
        if options.warm:
            ids = self.service.warm(candidates.documents, options.compression_ratio)
            return [pb_utils.Tensor(PASSAGE_IDS, np.array([[i.encode() for i in ids]], dtype=object))]
        result = self.service.rerank(query, candidates, options)
        out = [
            pb_utils.Tensor(SCORES, result.scores[None]),
            pb_utils.Tensor(INDICES, result.indices[None]),
            pb_utils.Tensor(PASSAGE_IDS, np.array([[i.encode() for i in result.passage_ids]], dtype=object)),
        ]
        if options.return_documents and candidates.documents is not None:
            texts = [candidates.documents[i].encode() for i in result.indices]
            out.append(pb_utils.Tensor(DOCUMENTS, np.array([texts], dtype=object)))
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                read = self._read(request)
            except Exception as err:
                responses.append(request_error(pb_utils, err))
                continue
            try:
                responses.append(pb_utils.InferenceResponse(self._respond(*read)))
            except Exception as err:
                responses.append(error_response(pb_utils, err))
        self.metrics.report(self.service.cache.stats)
        return responses
