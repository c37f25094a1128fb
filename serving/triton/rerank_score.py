"""Triton glue for `<name>_score`: one decoder prompt + pooled passage states (ragged, float16) → margins
logit(yes) - logit(no) (the rerank model takes their sigmoid, once). One prompt per request (max_batch_size 1, so
the leading dimension is 1).

`execute` (Triton's thread) reads and checks each request (Scorer.pre) and queues it in the token-budget scheduler
(serving/pipeline/scheduler.py: interactive requests first, within `score_batch_tokens` of prompt tokens ×
candidates + groups, their candidates run together; a rerank's chunks share an `admission_group`), whose worker
thread answers each through its response sender. A `cancel_group` request drops a group's queued parts. `execute`
itself returns nothing."""

import triton_python_backend_utils as pb_utils

from nestrank.protocol.parameters import BULK
from nestrank.protocol.reranking import (
    DECODER_INPUT_IDS,
    MARGINS,
    PASSAGE_COUNTS,
    PASSAGE_GROUPS,
    PASSAGE_STATES,
    RerankerConfig,
    from_wire,
    parse_sub_request,
    score_signature,
)
from nestrank.serving.pipeline.scheduler import Admitted, TokenBudgetScheduler
from nestrank.serving.pipeline.scorer import SCORER_FILE, Scorer
from nestrank.serving.triton.glue import answerer, input_array, log_error, one_row, read_model_args, request_parameters
from nestrank.serving.triton.metrics import SchedulerMetrics

INPUTS = (DECODER_INPUT_IDS, PASSAGE_STATES, PASSAGE_COUNTS, PASSAGE_GROUPS)


def tensors(margins):
    return [pb_utils.Tensor(MARGINS, margins[None])]


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, files = read_model_args(pb_utils, args, RerankerConfig,
                                                      lambda c: score_signature(c.hidden_size))  # fmt: skip
        self.scorer = Scorer(config, Scorer.open_session(files / SCORER_FILE, config))
        self.metrics = SchedulerMetrics(pb_utils, model_config["name"], args["model_instance_name"], "rerank_score")
        self.scheduler = TokenBudgetScheduler(self.scorer, config.score_batch_tokens, config.max_queue_wait_s,
                                              self.scorer.measure_tokens_per_s(), name="rerank-score",
                                              max_group_parts=config.max_candidates, log=log_error(pb_utils),
                                              batch_delay_s=config.score_batch_delay_s,
                                              on_progress=lambda: self.metrics.report(self.scheduler))  # fmt: skip

    def execute(self, requests):
        for request in requests:  # each on its own: a bad one is answered alone, at once
            answer = answerer(pb_utils, request, tensors)
            try:
                group, cancel, traffic_class = parse_sub_request(request_parameters(request))
                if cancel is not None:  # its tensors are placeholders
                    self.scheduler.cancel(cancel)
                    answer(None)
                    continue
                prompt, states, counts, groups = (one_row(input_array(pb_utils, request, n), n) for n in INPUTS)
                # ratio 0: the scorer needs none (counts only mark valid groups)
                job = self.scorer.pre(prompt, from_wire(states, counts, groups, ratio=0))
            except Exception as err:
                answer(err)
                continue
            self.scheduler.submit(Admitted(job, job.tokens, answer, request.is_cancelled, group,
                                           traffic_class == BULK))  # fmt: skip
        self.scheduler.progress()  # the metrics, from Triton's thread too: the requests just queued
        return None

    def finalize(self):
        self.scheduler.stop()
