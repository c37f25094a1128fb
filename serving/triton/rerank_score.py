"""Triton glue for `<name>_score`: one decoder prompt + pooled passage states (float16) → scores (one request at a
time: each carries its own prompt; max_batch_size 1, so the leading dimension is 1)."""

import triton_python_backend_utils as pb_utils

from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DECODER_INPUT_IDS,
    MARGINS,
    PASSAGE_COUNTS,
    PASSAGE_STATES,
    SCORES,
    RerankerConfig,
)
from nestrank.serving.pipeline.scorer import SCORER_FILE, Scorer, check_score_inputs, sigmoid
from nestrank.serving.triton.glue import error_response, input_array, one_row, read_model_args


class TritonPythonModel:
    def initialize(self, args):
        _, config, files = read_model_args(pb_utils, args, RerankerConfig)
        self.scorer = Scorer(config, Scorer.open_session(files / SCORER_FILE, config))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                names = (DECODER_INPUT_IDS, PASSAGE_STATES, PASSAGE_COUNTS)
                prompt, states, counts = (one_row(input_array(pb_utils, request, n), n) for n in names)
                check_score_inputs(self.scorer.config, prompt, states, counts)
                # ratio 0: the scorer needs none (counts only mark valid groups)
                passages = PassageStates.from_padded(states, counts, ratio=0)
            except Exception as err:
                responses.append(error_response(pb_utils, err))
                continue
            try:
                margins = self.scorer.margins(prompt, passages)
                outputs = [pb_utils.Tensor(SCORES, sigmoid(margins)[None]), pb_utils.Tensor(MARGINS, margins[None])]
                responses.append(pb_utils.InferenceResponse(outputs))
            except Exception as err:
                responses.append(error_response(pb_utils, err))
        return responses
