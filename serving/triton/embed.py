"""Triton glue for an embedder: texts → embeddings in the requested precision, each dtype in its own output.

Requests are read as Triton hands them over (texts and options checked; their tokens estimated from their length),
then queued in the token-budget scheduler (serving/pipeline/scheduler.py), which answers each through its response
sender: at once when it cannot be read or would wait past the queue bound, else when its execution is done (where
it is tokenized: a text refused there fails its own request only). `execute` itself returns nothing."""

import triton_python_backend_utils as pb_utils

from nestrank.protocol.embedding import EMBEDDING_OUTPUTS, TEXT, EmbedderConfig, parse_options
from nestrank.protocol.errors import ValidationError
from nestrank.serving.pipeline.embedder import Embedder, EmbedJob
from nestrank.serving.pipeline.scheduler import Admitted, TokenBudgetScheduler
from nestrank.serving.triton.glue import answerer as glue_answerer
from nestrank.serving.triton.glue import (
    decode_texts,
    input_array,
    read_model_args,  # fmt: skip
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


def answerer(request, output):
    """Sends the request's one response: its embeddings, or its error."""
    return glue_answerer(pb_utils, request, lambda result: [pb_utils.Tensor(output, result)])


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, version_dir = read_model_args(pb_utils, args, EmbedderConfig)
        self.embedder = Embedder.load(version_dir, config)
        self.scheduler = TokenBudgetScheduler(
            self.embedder.run,
            config.max_batch_tokens,
            config.max_queue_wait_s,
            self.embedder.measure_tokens_per_s(),
            result=lambda job: job.result,
        )
        self.metrics = SchedulerMetrics(pb_utils, model_config["name"], args["model_instance_name"])

    def execute(self, requests):
        for request in requests:  # each on its own: a bad one is answered alone, at once
            try:
                texts, options, output = read(request, self.embedder.config)
                tokens = self.embedder.estimate_tokens(texts)  # tokenized later, by the scheduler's worker
            except Exception as err:
                answerer(request, None)(err)
                continue
            job = EmbedJob(texts, options)
            self.scheduler.submit(Admitted(job, tokens, answerer(request, output), request.is_cancelled))
        self.metrics.report(self.scheduler)
        return None

    def finalize(self):
        self.scheduler.stop()
