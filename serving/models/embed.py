"""Triton Python-backend glue for an embedder; the exporter copies it to `<model>/1/model.py`."""

import os
import site

# The backend stub runs its own interpreter: `nestrank serve` names the environment to import from.
for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

from nestrank.serving.embed_config import EmbedderConfig, parse_options  # noqa: E402
from nestrank.serving.embedder import Embedder, EmbedJob  # noqa: E402
from nestrank.serving.triton_glue import (  # noqa: E402
    decode_texts,
    error_response,
    input_array,
    model_parameters,
    request_error,
    request_parameters,
)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        config = EmbedderConfig.from_parameters(model_parameters(model_config))
        threads = os.environ.get("NESTRANK_ORT_THREADS")
        if threads:
            config = EmbedderConfig(**{**config.__dict__, "intra_op_threads": int(threads)})
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.embedder = Embedder.load(version_dir, config)

    def execute(self, requests):
        responses = [None] * len(requests)
        jobs = {}
        for i, request in enumerate(requests):  # each request read on its own: a bad one fails alone
            try:
                texts = decode_texts(input_array(pb_utils, request, "text"), "text")
                jobs[i] = EmbedJob(texts, parse_options(request_parameters(request), self.embedder.config))
            except Exception as err:
                responses[i] = request_error(pb_utils, err)
        try:
            self.embedder.run(list(jobs.values()))
        except Exception as err:  # the shared model run failed: every request in it learns (INTERNAL)
            for i in jobs:
                responses[i] = error_response(pb_utils, err)
            return responses
        for i, job in jobs.items():
            if isinstance(job.result, Exception):
                responses[i] = error_response(pb_utils, job.result)
            else:
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("embeddings", job.result)])
        return responses
