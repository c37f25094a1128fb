"""Triton glue for `<name>_score`: one decoder prompt + pooled passage states → scores (one request at a time:
each carries its own prompt; max_batch_size 1, so the leading dimension is 1)."""

import os
import site

for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

from nestrank.serving.rerank_config import RerankerConfig  # noqa: E402
from nestrank.serving.reranker import SCORER_FILE, Scorer, check_score_inputs, sigmoid, unstack  # noqa: E402
from nestrank.serving.runtime import create_session  # noqa: E402
from nestrank.serving.triton_glue import (  # noqa: E402
    error_response,
    input_array,
    model_parameters,
    one_row,
    request_error,
)


class TritonPythonModel:
    def initialize(self, args):
        config = RerankerConfig.from_parameters(model_parameters(json.loads(args["model_config"])))
        files = Path(args["model_repository"]) / args["model_version"]
        self.scorer = Scorer(config, create_session(files / SCORER_FILE, intra_op_threads=config.intra_op_threads))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                names = ("decoder_input_ids", "passage_states", "passage_counts")
                prompt, states, counts = (one_row(input_array(pb_utils, request, n), n) for n in names)
                check_score_inputs(self.scorer.config, prompt, states, counts)
            except Exception as err:
                responses.append(request_error(pb_utils, err))
                continue
            try:
                margins = self.scorer.margins(prompt, unstack(states, counts, ratio=0))
                outputs = [pb_utils.Tensor("scores", sigmoid(margins)[None]), pb_utils.Tensor("margins", margins[None])]
                responses.append(pb_utils.InferenceResponse(outputs))
            except Exception as err:
                responses.append(error_response(pb_utils, err))
        return responses
