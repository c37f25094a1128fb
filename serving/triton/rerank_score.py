"""Triton glue for `<name>_score`: one decoder prompt + pooled passage states (ragged, float16) → margins
logit(yes) - logit(no) (the rerank model takes their sigmoid, once). One prompt per request (max_batch_size 1, so
the leading dimension is 1).

Requests are read as Triton hands them over, then queued in the token-budget scheduler
(serving/pipeline/scheduler.py: executions within `score_batch_tokens` of candidates × pooled length, whole
requests, arrival order; refused at once past `max_queue_wait_s`; skipped when their caller gave up), which answers
each through its response sender. `execute` itself returns nothing."""

import triton_python_backend_utils as pb_utils

from nestrank.protocol.reranking import (
    DECODER_INPUT_IDS,
    MARGINS,
    PASSAGE_COUNTS,
    PASSAGE_STATES,
    RerankerConfig,
    from_wire,
)
from nestrank.protocol.reranking import PASSAGE_GROUPS as GROUPS
from nestrank.serving.pipeline.scheduler import Admitted, TokenBudgetScheduler
from nestrank.serving.pipeline.scorer import SCORER_FILE, ScoreJob, Scorer, check_score_inputs
from nestrank.serving.triton.glue import answerer, input_array, one_row, read_model_args
from nestrank.serving.triton.metrics import SchedulerMetrics


def tensors(margins):
    return [pb_utils.Tensor(MARGINS, margins[None])]


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, files = read_model_args(pb_utils, args, RerankerConfig)
        self.scorer = Scorer(config, Scorer.open_session(files / SCORER_FILE, config))
        self.scheduler = TokenBudgetScheduler(self.scorer.run, config.score_batch_tokens, config.max_queue_wait_s,
                                              self.scorer.measure_tokens_per_s(), result=lambda job: job.result,
                                              name="rerank-score")  # fmt: skip
        self.metrics = SchedulerMetrics(pb_utils, model_config["name"], args["model_instance_name"], "rerank_score")

    def execute(self, requests):
        for request in requests:  # each on its own: a bad one is answered alone, at once
            answer = answerer(pb_utils, request, tensors)
            try:
                prompt, states, counts, groups = (
                    one_row(input_array(pb_utils, request, n, required=n != GROUPS), n)
                    for n in (DECODER_INPUT_IDS, PASSAGE_STATES, PASSAGE_COUNTS, GROUPS)
                )
                # ratio 0: the scorer needs none (counts only mark valid groups)
                passages = from_wire(self.scorer.config.passage_layout, states, counts, groups, ratio=0)
                check_score_inputs(self.scorer.config, prompt, passages)
                job = ScoreJob(prompt, passages)
            except Exception as err:
                answer(err)
                continue
            self.scheduler.submit(Admitted(job, job.tokens, answer, request.is_cancelled))
        self.metrics.report(self.scheduler)
        return None

    def finalize(self):
        self.scheduler.stop()
