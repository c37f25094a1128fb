"""Triton glue for an embedder: texts → embeddings in the requested precision, each dtype in its own output."""

import triton_python_backend_utils as pb_utils

from nestrank.protocol.embedding import EMBEDDING_OUTPUTS, TEXT, EmbedderConfig, parse_options
from nestrank.protocol.errors import ValidationError
from nestrank.serving.embedder import Embedder, EmbedJob
from nestrank.serving.triton_glue import (
    decode_texts,
    error_response,
    input_array,
    read_model_args,
    request_parameters,
    wanted_outputs,
)


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
        _, config, version_dir = read_model_args(pb_utils, args, EmbedderConfig)
        self.embedder = Embedder.load(version_dir, config)

    def execute(self, requests):
        responses = [None] * len(requests)
        jobs, outputs = {}, {}
        for i, request in enumerate(requests):  # each request read on its own: a bad one fails alone
            try:
                texts, options, outputs[i] = read(request, self.embedder.config)
                jobs[i] = EmbedJob(texts, options)
            except Exception as err:
                responses[i] = error_response(pb_utils, err)
        try:
            self.embedder.run(list(jobs.values()))
        except Exception as err:  # the shared model run failed: every request in it learns (INTERNAL)
            for i in jobs:
                responses[i] = error_response(pb_utils, err)
            return responses
        for i, job in jobs.items():
            try:
                if isinstance(job.result, Exception):
                    raise job.result
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(outputs[i], job.result)])
            except Exception as err:
                responses[i] = error_response(pb_utils, err)
        return responses
