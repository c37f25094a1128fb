"""Triton glue for `<name>` (BLS): the rerank entry point. Reads passages through the first level and the passage
store (the config's `passage_store`; default: LMDB in the serving user's cache), encodes only the misses through
`<name>_encode` (a request's chunks sent at once: serving/triton/bls.py), scores through `<name>_score`, and stores
what warm / index requests send. One request at a time per instance (max_batch_size 1: every tensor has a leading
dimension of 1); the export runs two instances, and Triton's queue for them holds `max_requests_in_flight` requests:
past it, refused at once as overloaded. `_encode` and `_score` admit the work itself (their schedulers).

`execute` is a coroutine: the request's work runs on a worker thread (pure Python and numpy), and every Triton call
(reading, BLS, answering) on the event loop's thread. Triton objects made and BLS calls sent from several threads of
one stub at once crashed tritonserver 2.51 (SIGSEGV in the Python backend; measured with 16 reranks at once)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol import reranking as r
from nestrank.protocol.errors import UnavailableError, ValidationError
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_encoder import with_passage_fingerprint
from nestrank.serving.pipeline.passage_store import configured_store, open_store
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.rerank_service import Candidates, RerankService
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer
from nestrank.serving.triton.bls import SubModels
from nestrank.serving.triton.glue import (
    decode_texts,
    error_response,
    input_array,
    one_row,
    read_model_args,
    request_parameters,
)
from nestrank.serving.triton.metrics import PassageMetrics


def _texts(request, name, limit):
    array = one_row(input_array(pb_utils, request, name, required=False), name)
    return None if array is None else decode_texts(array, name, max_count=limit)


def _bytes_tensor(name, values):
    return pb_utils.Tensor(name, np.array([[v.encode() for v in values]], dtype=object))


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, version_dir = read_model_args(pb_utils, args, r.RerankerConfig)
        name = model_config["name"]
        config = with_passage_fingerprint(config, version_dir.parent.parent / f"{name}_encode" / "1")
        store = open_store(configured_store(config.passage_store))
        first_level = PassageCache(config.passage_cache_bytes)
        self.metrics = PassageMetrics(pb_utils, name, args["model_instance_name"], store.url)
        passages = Passages(config.passage_fingerprint, config.ratios, first_level, store, self.metrics.fetch.observe)
        self.sub_models = SubModels(pb_utils, name, config)
        tokenizer = RerankTokenizer(version_dir / TOKENIZER_FILE, config)
        self.service = RerankService(config, tokenizer, passages, self.sub_models.encode, self.sub_models.score)
        self.workers = ThreadPoolExecutor(4, thread_name_prefix="nestrank-rerank")

    def _read(self, request):
        """(kind, query, candidates, options), every limit checked before any work."""
        config = self.service.config
        options = r.parse_rerank_options(request_parameters(request), config)
        documents = _texts(request, r.DOCUMENTS, config.max_candidates)
        ids = _texts(request, r.PASSAGE_IDS, config.max_candidates)
        kind = r.request_kind(options, ids is not None)
        if kind != r.RERANK:
            return kind, None, Candidates(documents or [], ids), options
        query = _texts(request, r.QUERY, 1)
        if not query:
            raise ValidationError(r.QUERY, "send exactly one query")
        wire = [one_row(input_array(pb_utils, request, n, required=False), n)
                for n in (r.PASSAGE_STATES, r.PASSAGE_COUNTS, r.PASSAGE_GROUPS)]  # fmt: skip
        ratio = options.states_ratio or options.compression_ratio  # their fingerprint: checked by the service
        states = None if wire[0] is None else r.from_wire(config.passage_layout, *wire, ratio)
        return kind, query[0], Candidates(documents, ids, states), options

    def _work(self, kind, query, candidates, options):
        """The request's work, on a worker thread: pure Python and numpy (the BLS calls go through the loop)."""
        if kind != r.RERANK:  # warm: documents only; index: documents and the user's ids for them
            return self.service.store(kind, candidates.documents, options.compression_ratio, candidates.passage_ids)
        return self.service.rerank(query, candidates, options)

    def _tensors(self, kind, candidates, options, done):
        if kind != r.RERANK:
            return [_bytes_tensor(r.PASSAGE_IDS, done.content_ids),
                    pb_utils.Tensor(r.PASSAGE_TOKENS, done.tokens[None]),
                    pb_utils.Tensor(r.STORED_BYTES, done.stored_bytes[None])]  # fmt: skip
        out = [pb_utils.Tensor(r.SCORES, done.scores[None]), pb_utils.Tensor(r.INDICES, done.indices[None]),
               _bytes_tensor(r.PASSAGE_IDS, done.passage_ids)]  # fmt: skip
        if options.return_documents and candidates.documents is not None:
            out.append(_bytes_tensor(r.DOCUMENTS, [candidates.documents[i] for i in done.indices]))
        return out

    async def _answer(self, request):
        try:
            kind, query, candidates, options = self._read(request)
        except Exception as err:
            return error_response(pb_utils, err)
        try:
            if request.is_cancelled():  # its caller gave up while it was handed over: not worth the compute
                raise UnavailableError("cancelled by the caller before it ran")
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(self.workers, self._work, kind, query, candidates, options)
            return pb_utils.InferenceResponse(self._tensors(kind, candidates, options, done))
        except Exception as err:
            return error_response(pb_utils, err)
        finally:
            self.metrics.report(self.service.passages.first_level.stats, self.service.passages.stats)

    async def execute(self, requests):
        self.sub_models.bls.attach(asyncio.get_running_loop())
        return list(await asyncio.gather(*(self._answer(request) for request in requests)))

    def finalize(self):
        self.workers.shutdown(wait=True, cancel_futures=False)
