"""Triton glue for `<name>` (BLS): the rerank entry point. Reads passages through the first level and the passage
store (the config's `passage_store`; default: LMDB in the serving user's cache), encodes only the misses through
`<name>_encode`, scores through `<name>_score` (serving/triton/bls.py), and stores what warm / index requests send.

Many requests in flight per instance. Which thread does what:
- Triton's thread runs `execute`: it reads and checks each request, takes one of the instance's
  `max_requests_in_flight` slots for it (bulk requests at most half; past it, refused at once as overloaded: that
  refusal is sent here) and hands it to the request loop; it returns at once.
- A worker thread per request does its work (pure Python and numpy: the store, pooling, ranking).
- The request loop's thread (request_loop.py) makes its BLS requests and reads their answers (each `exec()` waits on
  a daemon thread of its own: bls.py), sends its answer, and asks Triton every WATCH_S whether each caller gave up
  (a cancellation or a passed gRPC deadline): an abandoned request stops at its next wait, and its queued
  sub-requests are cancelled.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from nestrank.protocol import reranking as r
from nestrank.protocol.errors import UnavailableError
from nestrank.protocol.parameters import BULK
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_store import configured_store, open_store
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.rerank_service import RequestSlots, RerankRequest, RerankService
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer
from nestrank.serving.triton.bls import BlsClient
from nestrank.serving.triton.glue import (
    decode_texts,
    input_array,
    log_error,
    one_row,
    read_model_args,
    request_parameters,
    send,
)
from nestrank.serving.triton.metrics import PassageMetrics
from nestrank.serving.triton.request_loop import InFlight, RequestLoop


def _texts(request, name, service):
    array = one_row(input_array(pb_utils, request, name, required=False), name)
    if array is None:
        return None
    if name != r.QUERY:
        service.check_count(name, array.size)  # before decoding a million texts on Triton's thread
    return decode_texts(array, name)


class TritonPythonModel:
    def initialize(self, args):
        model_config, config, version_dir = read_model_args(pb_utils, args, r.RerankerConfig,
                                                            lambda c: r.rerank_signature(c.hidden_size))  # fmt: skip
        name = model_config["name"]
        store = open_store(configured_store(config.passage_store))
        first_level = PassageCache(config.passage_cache_bytes)
        self.metrics = PassageMetrics(pb_utils, name, args["model_instance_name"], store.url)
        passages = Passages(config.passage_fingerprint, config.ratios, first_level, store, self.metrics.observe_fetch)
        tokenizer = RerankTokenizer(version_dir / TOKENIZER_FILE, config)
        self.service = RerankService(config, tokenizer, passages)
        self.slots = RequestSlots(config.max_requests_in_flight)
        self.loop = RequestLoop(name)
        self.bls = BlsClient(pb_utils, name, config, self.loop)
        self.workers = ThreadPoolExecutor(config.max_requests_in_flight, thread_name_prefix=f"nestrank-{name}")
        self.in_flight: set[InFlight] = set()  # touched on the loop's thread only
        self.abandoned = 0
        self.loop.watch(self.in_flight, self.bls.watch.refresh, log_error(pb_utils))

    def execute(self, requests):
        """Triton's thread: each request read, checked and handed to the loop, or answered at once."""
        for request in requests:
            sender = request.get_response_sender()
            try:
                read = self._read(request)
                self.slots.take(read.options.traffic_class == BULK)
            except Exception as err:
                send(pb_utils, sender, err)
                continue
            self.loop.submit(self._serve(InFlight(request, sender), read))
        return None

    def _read(self, request) -> RerankRequest:
        texts = {name: _texts(request, name, self.service) for name in (r.QUERY, r.DOCUMENTS, r.PASSAGE_IDS)}
        wire = tuple(one_row(input_array(pb_utils, request, n, required=False), n)
                     for n in (r.PASSAGE_STATES, r.PASSAGE_COUNTS, r.PASSAGE_GROUPS))  # fmt: skip
        return self.service.read(request_parameters(request), texts, wire)

    async def _serve(self, flight: InFlight, read: RerankRequest) -> None:
        """The loop's thread: the request's work on a worker thread, then its one answer."""
        self.in_flight.add(flight)
        calls = self.bls.for_request(read.options.traffic_class, flight.abandoned)
        try:
            done = await asyncio.get_running_loop().run_in_executor(self.workers, self.service.work, read, calls)
            outcome = lambda: [pb_utils.Tensor(k, v) for k, v in self.service.outputs(read, done).items()]  # noqa: E731
        except Exception as err:
            outcome = err
        finally:
            self.in_flight.discard(flight)
            self.slots.give_back(read.options.traffic_class == BULK)
            self.abandoned += flight.abandoned.reason is not None
        try:  # before the answer: a caller that reads the metrics next sees its own request counted
            passages = self.service.passages
            self.metrics.report(passages.first_level.stats, passages.stats, len(self.in_flight), self.abandoned)
        except Exception as err:  # noqa: BLE001 - metrics must not cost the answer
            pb_utils.Logger.log_warn(f"nestrank: reporting the rerank metrics failed: {err!r}")
        try:
            send(pb_utils, flight.sender, outcome)
        except Exception as err:  # noqa: BLE001 - the caller went away: nothing to answer any more
            pb_utils.Logger.log_warn(f"nestrank: answering a rerank request failed: {err!r}")

    def finalize(self):
        self.loop.drain(self.in_flight, UnavailableError("the model is unloading; retry on another replica"))
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.loop.stop()
