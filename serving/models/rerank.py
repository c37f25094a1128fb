"""Triton glue for `<name>` (BLS): the rerank entry point. Holds the passage-state cache; encodes only
the misses through `<name>_encode` and scores through `<name>_score`."""

import os
import site

for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from nestrank.errors import BackendError, ValidationError  # noqa: E402
from nestrank.serving.passage_cache import PassageCache  # noqa: E402
from nestrank.serving.rerank_config import RerankerConfig, parse_rerank_options  # noqa: E402
from nestrank.serving.rerank_service import Candidates, RerankService  # noqa: E402
from nestrank.serving.reranker import TOKENIZER_FILE, RerankTokenizer, stack, unstack  # noqa: E402
from nestrank.serving.triton_glue import decode_texts, error_response, model_parameters, request_parameters  # noqa: E402

ENCODE_CHUNK = 32  # documents per BLS request to `<name>_encode` (within its max batch size)


def _call(model, inputs, outputs, parameters=None):
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=inputs, requested_output_names=outputs, parameters=parameters or {}
    )
    response = request.exec()
    if response.has_error():
        raise BackendError(f"{model}: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        config = RerankerConfig.from_parameters(model_parameters(model_config))
        name = model_config["name"]
        tokenizer = RerankTokenizer(Path(args["model_repository"]) / args["model_version"] / TOKENIZER_FILE, config)
        cache = PassageCache(int(os.environ.get("NESTRANK_PASSAGE_CACHE_BYTES", config.passage_cache_bytes)))

        def encode(documents, ratio):
            passages = []
            for start in range(0, len(documents), ENCODE_CHUNK):
                chunk = np.array([d.encode() for d in documents[start : start + ENCODE_CHUNK]], dtype=object)
                states, counts = _call(
                    f"{name}_encode", [pb_utils.Tensor("documents", chunk.reshape(-1, 1))],
                    ["passage_states", "passage_counts"], {"compression_ratio": ratio, "states_dtype": "float32"},
                )  # fmt: skip
                passages += unstack(states, counts, ratio)
            return passages

        def score(prompt, passages):
            states, counts = stack(passages)
            inputs = [pb_utils.Tensor("decoder_input_ids", prompt), pb_utils.Tensor("passage_states", states),
                      pb_utils.Tensor("passage_counts", counts)]  # fmt: skip
            return _call(f"{name}_score", inputs, ["margins"])[0]

        self.service = RerankService(config, tokenizer, cache, encode, score)
        # Families must outlive their metrics: keep both.
        self.metric_families = {
            key: pb_utils.MetricFamily(name=f"nestrank_passage_cache_{key}", description=text, kind=kind)
            for key, text, kind in (
                ("hits", "passage-state cache hits", pb_utils.MetricFamily.COUNTER),
                ("misses", "passage-state cache misses (passages encoded)", pb_utils.MetricFamily.COUNTER),
                ("evictions", "passage-state cache evictions", pb_utils.MetricFamily.COUNTER),
                ("bytes", "bytes of passage states held", pb_utils.MetricFamily.GAUGE),
                ("entries", "passages held", pb_utils.MetricFamily.GAUGE),
            )
        }
        self.metrics = {key: family.Metric(labels={"model": name}) for key, family in self.metric_families.items()}
        self.reported = {"hits": 0, "misses": 0, "evictions": 0}

    def _texts(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else decode_texts(tensor.as_numpy(), name)

    def _array(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _respond(self, request):
        options = parse_rerank_options(request_parameters(request), self.service.config)
        documents = self._texts(request, "documents")
        if options.warm:
            ids = self.service.warm(documents or [], options.compression_ratio)
            return [pb_utils.Tensor("passage_ids", np.array([i.encode() for i in ids], dtype=object))]
        query = self._texts(request, "query")
        if not query or len(query) != 1:
            raise ValidationError("query", "send exactly one query")
        candidates = Candidates(
            documents,
            self._texts(request, "passage_ids"),
            self._array(request, "passage_states"),
            self._array(request, "passage_counts"),
        )
        result = self.service.rerank(query[0], candidates, options)
        ids = np.array([i.encode() for i in result.passage_ids], dtype=object)
        out = [
            pb_utils.Tensor("scores", result.scores),
            pb_utils.Tensor("indices", result.indices),
            pb_utils.Tensor("passage_ids", ids),
        ]
        if options.return_documents and documents is not None:
            texts = np.array([documents[i].encode() for i in result.indices], dtype=object)
            out.append(pb_utils.Tensor("documents", texts))
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._respond(request)))
            except Exception as err:
                responses.append(error_response(pb_utils, err))
        stats = self.service.cache.stats
        for key in self.reported:
            self.metrics[key].increment(getattr(stats, key) - self.reported[key])
            self.reported[key] = getattr(stats, key)
        self.metrics["bytes"].set(stats.bytes)
        self.metrics["entries"].set(stats.entries)
        return responses
