"""Triton glue for `<name>_encode`: documents → MEP passage states at a ratio (query-independent): ragged float16
states, per-group token counts and groups per passage, and the passage fingerprint of this model (the wire's
layout: nestrank/protocol/reranking.py).

`execute` (Triton's thread) reads each request, checks and tokenizes it (PassageEncoder.pre: an empty request is
refused here, before it can share an execution) and queues it in the token-budget scheduler
(serving/pipeline/scheduler.py: interactive parts first, within `encode_batch_tokens`; bulk parts one at a time
between them; a rerank's chunks, which share an `admission_group`, not counted against each other), whose worker
thread answers each through its response sender. A `cancel_group` request drops a group's queued parts. `execute`
itself returns nothing."""

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.parameters import BULK, as_int
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DOCUMENTS,
    ENCODE_RATIO,
    PASSAGE_FINGERPRINT,
    RerankerConfig,
    encode_signature,
    parse_sub_request,
    wire_tensors,
)
from nestrank.serving.pipeline.passage_encoder import ENCODER_FILE, PassageEncoder
from nestrank.serving.pipeline.scheduler import Admitted, TokenBudgetScheduler
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer
from nestrank.serving.triton.glue import (
    answerer,
    decode_texts,
    input_array,
    log_error,
    read_model_args,
    request_parameters,
)
from nestrank.serving.triton.metrics import SchedulerMetrics


def tensors(passages: PassageStates):
    """The answer: [1, ΣG, H], [1, ΣG], [1, N] and one fingerprint [1, 1]."""
    out = [pb_utils.Tensor(k, v[None]) for k, v in wire_tensors(passages).items()]
    return out + [pb_utils.Tensor(PASSAGE_FINGERPRINT, np.array([[passages.fingerprint.encode()]], dtype=object))]


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, files = read_model_args(pb_utils, args, RerankerConfig,
                                                      lambda c: encode_signature(c.hidden_size, 1))  # fmt: skip
        tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
        self.encoder = PassageEncoder(config, tokenizer, PassageEncoder.open_session(files / ENCODER_FILE, config))
        self.metrics = SchedulerMetrics(pb_utils, model_config["name"], args["model_instance_name"], "rerank_encode")
        self.scheduler = TokenBudgetScheduler(self.encoder, config.encode_batch_tokens, config.max_queue_wait_s,
                                              self.encoder.measure_tokens_per_s(), name="rerank-encode",
                                              max_group_parts=config.encode_parts_per_request,
                                              log=log_error(pb_utils),
                                              on_progress=lambda: self.metrics.report(self.scheduler))  # fmt: skip

    def execute(self, requests):
        config = self.encoder.config
        for request in requests:  # each on its own: a bad one is answered alone, at once
            answer = answerer(pb_utils, request, tensors)
            try:
                params = request_parameters(request)
                group, cancel, traffic_class = parse_sub_request(params, (ENCODE_RATIO,))
                if cancel is not None:  # its tensors are placeholders
                    self.scheduler.cancel(cancel)
                    answer(None)
                    continue
                documents = decode_texts(input_array(pb_utils, request, DOCUMENTS), DOCUMENTS,
                                         config.max_encode_documents)  # fmt: skip
                ratio = as_int(ENCODE_RATIO, params.get(ENCODE_RATIO, config.default_ratio))
                if ratio not in config.ratios:
                    raise ValidationError(ENCODE_RATIO, f"{ratio} was not exported; choose one of {config.ratios}")
                job = self.encoder.pre(documents, ratio)
            except Exception as err:
                answer(err)
                continue
            self.scheduler.submit(Admitted(job, job.tokens, answer, request.is_cancelled, group,
                                           traffic_class == BULK))  # fmt: skip
        self.scheduler.progress()  # the metrics, from Triton's thread too: the requests just queued
        return None

    def finalize(self):
        self.scheduler.stop()
