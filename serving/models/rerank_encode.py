"""Triton glue for `<name>_encode`: documents → MEP passage states at a ratio (query-independent)."""

import os
import site

for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from nestrank.errors import ValidationError  # noqa: E402
from nestrank.serving.parameters import as_int, as_str, check_names  # noqa: E402
from nestrank.serving.rerank_config import RerankerConfig  # noqa: E402
from nestrank.serving.reranker import ENCODER_FILE, TOKENIZER_FILE, PassageEncoder, RerankTokenizer, stack  # noqa: E402
from nestrank.serving.runtime import create_session  # noqa: E402
from nestrank.serving.triton_glue import (  # noqa: E402
    decode_texts,
    error_response,
    input_array,
    model_parameters,
    request_error,
    request_parameters,
)

STATES_DTYPES = {"float16": np.float16, "float32": np.float32}


def parse(params, config):
    check_names(params, ("compression_ratio", "states_dtype"))
    ratio = as_int("compression_ratio", params.get("compression_ratio", config.default_ratio))
    if ratio not in config.ratios:
        raise ValidationError("compression_ratio", f"{ratio} was not exported; choose one of {config.ratios}")
    dtype = as_str("states_dtype", params.get("states_dtype", "float16"), max_chars=16)
    if dtype not in STATES_DTYPES:
        raise ValidationError("states_dtype", f"must be float16 or float32, got {dtype!r}")
    return ratio, STATES_DTYPES[dtype]


class TritonPythonModel:
    def initialize(self, args):
        config = RerankerConfig.from_parameters(model_parameters(json.loads(args["model_config"])))
        files = Path(args["model_repository"]) / args["model_version"]
        tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
        session = create_session(files / ENCODER_FILE, intra_op_threads=config.intra_op_threads)
        self.encoder = PassageEncoder(config, tokenizer, session)

    def execute(self, requests):
        responses = [None] * len(requests)
        jobs, sequences, ratios = [], [], []
        for i, request in enumerate(requests):  # each request read on its own: a bad one fails alone
            try:
                documents = decode_texts(input_array(pb_utils, request, "documents"), "documents")
                ratio, dtype = parse(request_parameters(request), self.encoder.config)
                ids = self.encoder.tokenizer.encode_documents(documents)
            except Exception as err:
                responses[i] = request_error(pb_utils, err)
                continue
            jobs.append((i, len(sequences), len(sequences) + len(ids), dtype))
            sequences += ids
            ratios += [ratio] * len(ids)
        try:
            passages = self.encoder.encode_ids(sequences, ratios)
        except Exception as err:  # the shared model run failed: every request in it learns (INTERNAL)
            for i, *_ in jobs:
                responses[i] = error_response(pb_utils, err)
            return responses
        for i, start, end, dtype in jobs:
            states, counts = stack(passages[start:end], dtype)
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor("passage_states", states), pb_utils.Tensor("passage_counts", counts)]
            )
        return responses
