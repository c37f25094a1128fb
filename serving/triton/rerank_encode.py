"""Triton glue for `<name>_encode`: documents → MEP passage states at a ratio (query-independent): ragged float16
states, per-group token counts and groups per passage, and the passage fingerprint of this model (the wire's
layout: nestrank/protocol/reranking.py).

Requests are read and tokenized as Triton hands them over, then queued in the token-budget scheduler
(serving/pipeline/scheduler.py: executions within `encode_batch_tokens`, whole requests, arrival order; refused at
once past `max_queue_wait_s`; skipped when their caller gave up; a rerank request's chunks, which share an
`admission_group`, not counted against each other), which answers each through its response sender.
`execute` itself returns nothing."""

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.parameters import as_int, check_names
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DOCUMENTS,
    ENCODE_GROUP,
    ENCODE_RATIO,
    PADDED,
    PASSAGE_FINGERPRINT,
    RAGGED,
    RerankerConfig,
    wire_tensors,
)
from nestrank.serving.pipeline.passage_encoder import ENCODER_FILE, EncodeJob, PassageEncoder, with_passage_fingerprint
from nestrank.serving.pipeline.scheduler import Admitted, TokenBudgetScheduler
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer
from nestrank.serving.triton.glue import answerer, decode_texts, input_array, read_model_args, request_parameters
from nestrank.serving.triton.metrics import SchedulerMetrics

MAX_GROUP_CHARS = 64


def read_parameters(params, config) -> tuple[int, str | None]:
    """(ratio, admission group) of one request."""
    check_names(params, (ENCODE_RATIO, ENCODE_GROUP))
    ratio = as_int(ENCODE_RATIO, params.get(ENCODE_RATIO, config.default_ratio))
    if ratio not in config.ratios:
        raise ValidationError(ENCODE_RATIO, f"{ratio} was not exported; choose one of {config.ratios}")
    group = params.get(ENCODE_GROUP)
    if group is not None and (not isinstance(group, str) or not 0 < len(group) <= MAX_GROUP_CHARS):
        raise ValidationError(ENCODE_GROUP, f"a string of 1..{MAX_GROUP_CHARS} characters")
    return ratio, group


def answer_tensors(layout):
    """The answer's tensors: RAGGED [1, ΣG, H], [1, ΣG], [1, N] and one fingerprint [1, 1]; PADDED (exports from
    before it, which batch documents): [N, G, H], [N, G] and a fingerprint per document."""

    def tensors(passages: PassageStates):
        wire, rows = wire_tensors(passages, layout), len(passages) if layout == PADDED else 1
        out = [pb_utils.Tensor(k, v if layout == PADDED else v[None]) for k, v in wire.items()]
        return out + [pb_utils.Tensor(PASSAGE_FINGERPRINT, np.array([[passages.fingerprint.encode()]] * rows,
                                                                    dtype=object))]  # fmt: skip

    return tensors


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, files = read_model_args(pb_utils, args, RerankerConfig)
        config = with_passage_fingerprint(config, files)
        tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
        self.encoder = PassageEncoder(config, tokenizer, PassageEncoder.open_session(files / ENCODER_FILE, config))
        self.scheduler = TokenBudgetScheduler(self.encoder.run, config.encode_batch_tokens, config.max_queue_wait_s,
                                              self.encoder.measure_tokens_per_s(), result=lambda job: job.result,
                                              name="rerank-encode",
                                              max_group_parts=config.encode_parts_per_request)  # fmt: skip
        self.metrics = SchedulerMetrics(pb_utils, model_config["name"], args["model_instance_name"], "rerank_encode")
        self.tensors = answer_tensors(config.passage_layout)
        # RAGGED: one chunk of documents a request, within max_encode_documents; PADDED: Triton's batch bounds it
        self.most = config.max_encode_documents if config.passage_layout == RAGGED else None

    def execute(self, requests):
        for request in requests:  # each on its own: a bad one is answered alone, at once
            answer = answerer(pb_utils, request, self.tensors)
            try:
                documents = decode_texts(input_array(pb_utils, request, DOCUMENTS), DOCUMENTS, self.most)
                ratio, group = read_parameters(request_parameters(request), self.encoder.config)
                job = EncodeJob(self.encoder.tokenizer.encode_documents(documents), ratio)
            except Exception as err:
                answer(err)
                continue
            self.scheduler.submit(Admitted(job, job.tokens, answer, request.is_cancelled, group))
        self.metrics.report(self.scheduler)
        return None

    def finalize(self):
        self.scheduler.stop()
