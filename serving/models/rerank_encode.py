"""Triton glue for `<name>_encode`: documents → MEP passage states at a ratio (query-independent), in float16
(`passage_states`) or float32 (`passage_states_fp32`), whichever outputs the request asks for."""

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.parameters import as_int, check_names
from nestrank.protocol.reranking import DOCUMENTS, PASSAGE_COUNTS, PASSAGE_STATES, PASSAGE_STATES_FP32, RerankerConfig
from nestrank.serving.reranker import ENCODER_FILE, TOKENIZER_FILE, PassageEncoder, RerankTokenizer, stack
from nestrank.serving.triton_glue import (
    decode_texts,
    error_response,
    input_array,
    read_model_args,
    request_error,
    request_parameters,
    wanted_outputs,
)

STATES = {PASSAGE_STATES: np.float16, PASSAGE_STATES_FP32: np.float32}


def read_ratio(params, config):
    check_names(params, ("compression_ratio",))
    ratio = as_int("compression_ratio", params.get("compression_ratio", config.default_ratio))
    if ratio not in config.ratios:
        raise ValidationError("compression_ratio", f"{ratio} was not exported; choose one of {config.ratios}")
    return ratio


class TritonPythonModel:
    def initialize(self, args):
        _, config, files = read_model_args(pb_utils, args, RerankerConfig)
        tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
        session = PassageEncoder.open_session(files / ENCODER_FILE, config)
        self.encoder = PassageEncoder(config, tokenizer, session)

    def execute(self, requests):
        responses = [None] * len(requests)
        jobs, sequences, ratios = [], [], []
        for i, request in enumerate(requests):  # each request read on its own: a bad one fails alone
            try:
                documents = decode_texts(input_array(pb_utils, request, DOCUMENTS), DOCUMENTS)
                ratio = read_ratio(request_parameters(request), self.encoder.config)
                ids = self.encoder.tokenizer.encode_documents(documents)
                wanted = [name for name in STATES if name in wanted_outputs(request, (PASSAGE_STATES,))]
            except Exception as err:
                responses[i] = request_error(pb_utils, err)
                continue
            jobs.append((i, len(sequences), len(sequences) + len(ids), wanted))
            sequences += ids
            ratios += [ratio] * len(ids)
        try:
            passages = self.encoder.encode_ids(sequences, ratios)
        except Exception as err:  # the shared model run failed: every request in it learns (INTERNAL)
            for i, *_ in jobs:
                responses[i] = error_response(pb_utils, err)
            return responses
        for i, start, end, wanted in jobs:
            outputs = []
            for name in wanted:
                states, counts = stack(passages[start:end], STATES[name])
                outputs.append(pb_utils.Tensor(name, states))
            outputs.append(pb_utils.Tensor(PASSAGE_COUNTS, stack(passages[start:end])[1]))
            responses[i] = pb_utils.InferenceResponse(outputs)
        return responses
