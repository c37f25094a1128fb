"""Triton glue for `<name>_encode`: documents → MEP passage states at a ratio (query-independent): float16 states,
per-group token counts, and the passage fingerprint of this model for each document."""

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.parameters import as_int, check_names
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import DOCUMENTS, PASSAGE_COUNTS, PASSAGE_FINGERPRINT, PASSAGE_STATES, RerankerConfig
from nestrank.serving.pipeline.passage_encoder import ENCODER_FILE, PassageEncoder, with_passage_fingerprint
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer
from nestrank.serving.triton.glue import (
    decode_texts,
    error_response,
    input_array,
    read_model_args,
    request_parameters,
)


def read_ratio(params, config):
    check_names(params, ("compression_ratio",))
    ratio = as_int("compression_ratio", params.get("compression_ratio", config.default_ratio))
    if ratio not in config.ratios:
        raise ValidationError("compression_ratio", f"{ratio} was not exported; choose one of {config.ratios}")
    return ratio


class TritonPythonModel:
    def initialize(self, args):
        _, config, files = read_model_args(pb_utils, args, RerankerConfig)
        config = with_passage_fingerprint(config, files)
        tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
        self.encoder = PassageEncoder(config, tokenizer, PassageEncoder.open_session(files / ENCODER_FILE, config))

    def _respond(self, passages: PassageStates):
        states, counts = passages.padded()
        fingerprint = np.array([[passages.fingerprint.encode()]] * len(passages), dtype=object)
        return pb_utils.InferenceResponse([pb_utils.Tensor(PASSAGE_STATES, states),
                                           pb_utils.Tensor(PASSAGE_COUNTS, counts),
                                           pb_utils.Tensor(PASSAGE_FINGERPRINT, fingerprint)])  # fmt: skip

    def execute(self, requests):
        responses = [None] * len(requests)
        jobs, sequences, ratios = [], [], []
        for i, request in enumerate(requests):  # each request read on its own: a bad one fails alone
            try:
                documents = decode_texts(input_array(pb_utils, request, DOCUMENTS), DOCUMENTS)
                ratio = read_ratio(request_parameters(request), self.encoder.config)
                ids = self.encoder.tokenizer.encode_documents(documents)
            except Exception as err:
                responses[i] = error_response(pb_utils, err)
                continue
            jobs.append((i, len(sequences), len(sequences) + len(ids)))
            sequences += ids
            ratios += [ratio] * len(ids)
        try:
            passages = self.encoder.encode_ids(sequences, ratios)
        except Exception as err:  # the shared model run failed: every request in it learns (INTERNAL)
            for i, *_ in jobs:
                responses[i] = error_response(pb_utils, err)
            return responses
        for i, start, end in jobs:
            try:
                responses[i] = self._respond(PassageStates.concat(passages[start:end]))
            except Exception as err:
                responses[i] = error_response(pb_utils, err)
        return responses
