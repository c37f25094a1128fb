"""Triton glue for an embedder: texts → embeddings in the requested precision, each dtype in its own output.

`execute` (Triton's thread) reads each request and checks it (texts and options: Embedder.pre, which estimates its
tokens from their length), then queues it in the token-budget scheduler (serving/pipeline/scheduler.py: interactive
requests first; `traffic_class` bulk ones one at a time between them), whose worker thread tokenizes, runs and
answers each through its response sender: at once when it cannot be read or would wait past the queue bound, else
when its execution is done (a text refused at tokenization fails its own request only). `execute` itself returns
nothing."""

import triton_python_backend_utils as pb_utils

from nestrank.protocol.embedding import EMBEDDING_OUTPUTS, TEXT, EmbedderConfig, embed_signature, parse_options
from nestrank.protocol.errors import ValidationError
from nestrank.protocol.parameters import BULK
from nestrank.serving.pipeline.embedder import Embedder
from nestrank.serving.pipeline.scheduler import Admitted, TokenBudgetScheduler
from nestrank.serving.triton.glue import (
    answerer,
    decode_texts,
    input_array,
    log_error,
    read_model_args,
    request_parameters,
    wanted_outputs,
)
from nestrank.serving.triton.metrics import SchedulerMetrics


def read(request, config):
    """(texts, options, output name); a precision whose output was not asked for is refused."""
    texts = decode_texts(input_array(pb_utils, request, TEXT), TEXT)
    options = parse_options(request_parameters(request), config)
    output = EMBEDDING_OUTPUTS[options.precision]
    if output not in wanted_outputs(request, (output,)):
        asked = ", ".join(sorted(request.requested_output_names()))
        raise ValidationError("precision", f"{options.precision} embeddings come in output {output}; asked for {asked}")
    return texts, options, output


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, version_dir = read_model_args(pb_utils, args, EmbedderConfig,
                                                            lambda c: embed_signature(1))  # fmt: skip
        self.embedder = Embedder.load(version_dir, config)
        self.metrics = SchedulerMetrics(pb_utils, model_config["name"], args["model_instance_name"])
        self.scheduler = TokenBudgetScheduler(self.embedder, config.max_batch_tokens, config.max_queue_wait_s,
                                              self.embedder.measure_tokens_per_s(), log=log_error(pb_utils),
                                              on_progress=lambda: self.metrics.report(self.scheduler))  # fmt: skip

    def execute(self, requests):
        for request in requests:  # each on its own: a bad one is answered alone, at once
            try:
                texts, options, output = read(request, self.embedder.config)
                job = self.embedder.pre(texts, options)
            except Exception as err:
                answerer(pb_utils, request, None)(err)
                continue
            answer = answerer(pb_utils, request, lambda result, name=output: [pb_utils.Tensor(name, result)])
            self.scheduler.submit(Admitted(job, job.tokens, answer, request.is_cancelled,
                                           bulk=options.traffic_class == BULK))  # fmt: skip
        self.scheduler.progress()  # the metrics, from Triton's thread too: the requests just queued
        return None

    def finalize(self):
        self.scheduler.stop()
