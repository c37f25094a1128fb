"""Triton glue for `<name>_score`: one decoder prompt + pooled passage states → scores."""

import os
import site

for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

from nestrank.serving.rerank_config import RerankerConfig  # noqa: E402
from nestrank.serving.reranker import SCORER_FILE, Scorer, sigmoid, unstack  # noqa: E402
from nestrank.serving.runtime import create_session  # noqa: E402
from nestrank.serving.triton_glue import error_response, model_parameters  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = RerankerConfig.from_parameters(model_parameters(json.loads(args["model_config"])))
        files = Path(args["model_repository"]) / args["model_version"]
        self.scorer = Scorer(config, create_session(files / SCORER_FILE, intra_op_threads=config.intra_op_threads))

    def execute(self, requests):
        responses = []
        for request in requests:  # not batched: each request carries its own prompt
            try:
                prompt = pb_utils.get_input_tensor_by_name(request, "decoder_input_ids").as_numpy()
                states = pb_utils.get_input_tensor_by_name(request, "passage_states").as_numpy()
                counts = pb_utils.get_input_tensor_by_name(request, "passage_counts").as_numpy()
                margins = self.scorer.margins(prompt, unstack(states, counts, ratio=0))
                responses.append(
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor("scores", sigmoid(margins)), pb_utils.Tensor("margins", margins)]
                    )
                )
            except Exception as err:
                responses.append(error_response(pb_utils, err))
        return responses
