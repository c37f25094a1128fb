"""Triton glue for `<name>_encode`: documents → MEP passage states at a ratio (query-independent)."""

import os
import site

for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from nestrank.errors import NestrankError, ValidationError  # noqa: E402
from nestrank.serving.parameters import as_int, as_str  # noqa: E402
from nestrank.serving.rerank_config import RerankerConfig  # noqa: E402
from nestrank.serving.reranker import ENCODER_FILE, TOKENIZER_FILE, PassageEncoder, RerankTokenizer, stack  # noqa: E402
from nestrank.serving.runtime import create_session  # noqa: E402
from nestrank.serving.triton_glue import decode_texts, error_response, model_parameters, request_parameters  # noqa: E402

STATES_DTYPES = {"float16": np.float16, "float32": np.float32}


def parse(params, config):
    unknown = sorted(set(params) - {"compression_ratio", "states_dtype"})
    if unknown:
        raise ValidationError(unknown[0], "unknown parameter; accepted: compression_ratio, states_dtype")
    ratio = as_int("compression_ratio", params.get("compression_ratio", config.default_ratio))
    if ratio not in config.ratios:
        raise ValidationError("compression_ratio", f"{ratio} was not exported; choose one of {config.ratios}")
    dtype = as_str("states_dtype", params.get("states_dtype", "float16"))
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
        for i, request in enumerate(requests):
            try:
                documents = decode_texts(
                    pb_utils.get_input_tensor_by_name(request, "documents").as_numpy(), "documents"
                )
                ratio, dtype = parse(request_parameters(request), self.encoder.config)
                ids = self.encoder.tokenizer.encode_documents(documents)
            except NestrankError as err:
                responses[i] = error_response(pb_utils, err)
                continue
            jobs.append((i, len(sequences), len(sequences) + len(ids), dtype))
            sequences += ids
            ratios += [ratio] * len(ids)
        try:
            passages = self.encoder.encode_ids(sequences, ratios)
        except Exception as err:  # the model itself failed: every request of this batch learns why
            for i, *_ in jobs:
                responses[i] = error_response(pb_utils, err)
            return responses
        for i, start, end, dtype in jobs:
            states, counts = stack(passages[start:end], dtype)
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor("passage_states", states), pb_utils.Tensor("passage_counts", counts)]
            )
        return responses
