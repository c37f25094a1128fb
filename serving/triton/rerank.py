"""Triton glue for `<name>` (BLS): the rerank entry point. Reads passages through the first level and the passage
store (the config's `passage_store`; default: LMDB in the serving user's cache), encodes only the misses through
`<name>_encode`, scores through `<name>_score` (serving/triton/bls.py), and stores what warm / index requests send.

Many requests in flight per instance: `execute` (Triton's thread) reads and checks each request, takes one of the
instance's `max_requests_in_flight` slots for it (bulk requests at most half; past it, refused at once as
overloaded) and hands it to the request loop; it returns at once, and each request is answered through its response
sender when its work is done. The work itself runs on a worker thread per request; the loop's thread makes every
Triton object, and asks Triton every WATCH_S whether each caller gave up (a cancellation or a passed gRPC
deadline): an abandoned request stops at its next wait and its queued sub-requests are cancelled (bls.py).
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from nestrank.protocol import reranking as r
from nestrank.protocol.errors import UnavailableError, ValidationError
from nestrank.protocol.parameters import BULK
from nestrank.serving.pipeline.passage_cache import PassageCache
from nestrank.serving.pipeline.passage_store import configured_store, open_store
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.rerank_service import Candidates, RequestSlots, RerankService
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer
from nestrank.serving.triton.bls import WATCH_S, Abandoned, BlsClient, RequestLoop
from nestrank.serving.triton.glue import (
    decode_texts,
    input_array,
    one_row,
    read_model_args,
    request_parameters,
    send,
)
from nestrank.serving.triton.metrics import PassageMetrics


def _texts(request, name):
    array = one_row(input_array(pb_utils, request, name, required=False), name)
    return None if array is None else decode_texts(array, name)


def _bytes_tensor(name, values):
    return pb_utils.Tensor(name, np.array([[v.encode() for v in values]], dtype=object))


@dataclass
class Read:
    """One request as `execute` read it."""

    kind: str
    query: str | None
    candidates: Candidates
    options: r.RerankOptions


@dataclass(eq=False)
class InFlight:
    request: object
    sender: object
    abandoned: Abandoned


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
        self.watcher = self.loop.submit(self._watch())

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
            self.loop.submit(self._serve(InFlight(request, sender, Abandoned()), read))
        return None

    def _read(self, request) -> Read:
        """Every limit that needs no work checked here; the service checks the rest before any work."""
        config = self.service.config
        options = r.parse_rerank_options(request_parameters(request), config)
        documents, ids = _texts(request, r.DOCUMENTS), _texts(request, r.PASSAGE_IDS)
        kind = r.request_kind(options, ids is not None)
        if kind != r.RERANK:
            return Read(kind, None, Candidates(documents or [], ids), options)
        query = _texts(request, r.QUERY)
        if not query or len(query) != 1:
            raise ValidationError(r.QUERY, "send exactly one query")
        wire = [one_row(input_array(pb_utils, request, n, required=False), n)
                for n in (r.PASSAGE_STATES, r.PASSAGE_COUNTS, r.PASSAGE_GROUPS)]  # fmt: skip
        ratio = options.states_ratio or options.compression_ratio  # their fingerprint: checked by the service
        states = None if wire[0] is None else r.from_wire(*wire, ratio)
        return Read(kind, query[0], Candidates(documents, ids, states), options)

    async def _serve(self, flight: InFlight, read: Read) -> None:
        """The loop's thread: the request's work on a worker thread, then its one answer."""
        self.in_flight.add(flight)
        calls = self.bls.for_request(read.options.traffic_class, flight.abandoned)
        try:
            done = await asyncio.get_running_loop().run_in_executor(self.workers, self._work, read, calls)
            outcome = lambda: self._tensors(read, done)  # noqa: E731
        except Exception as err:
            outcome = err
        finally:
            self.in_flight.discard(flight)
            self.slots.give_back(read.options.traffic_class == BULK)
        try:
            send(pb_utils, flight.sender, outcome)
            self.metrics.report(self.service.passages.first_level.stats, self.service.passages.stats)
        except Exception as err:  # noqa: BLE001 - the caller went away, or the metrics: nothing to answer any more
            pb_utils.Logger.log_warn(f"nestrank: answering a rerank request failed: {err!r}")

    def _work(self, read: Read, calls):
        """A worker thread: pure Python and numpy; the BLS calls go through the loop (bls.py)."""
        if read.kind != r.RERANK:  # warm: documents only; index: documents and the user's ids for them
            return self.service.store(read.kind, read.candidates.documents, read.candidates.passage_ids,
                                      read.options, calls)  # fmt: skip
        return self.service.rerank(read.query, read.candidates, read.options, calls)

    def _tensors(self, read: Read, done):
        if read.kind != r.RERANK:
            return [_bytes_tensor(r.PASSAGE_IDS, done.content_ids),
                    pb_utils.Tensor(r.PASSAGE_TOKENS, done.tokens[None]),
                    pb_utils.Tensor(r.STORED_BYTES, done.stored_bytes[None])]  # fmt: skip
        out = [
            pb_utils.Tensor(r.SCORES, done.scores[None]),
            pb_utils.Tensor(r.MARGINS, done.margins[None]),
            pb_utils.Tensor(r.INDICES, done.indices[None]),
            _bytes_tensor(r.PASSAGE_IDS, done.passage_ids),
        ]
        if read.options.return_documents and read.candidates.documents is not None:
            out.append(_bytes_tensor(r.DOCUMENTS, [read.candidates.documents[i] for i in done.indices]))
        return out

    async def _watch(self) -> None:
        """The loop's thread, every WATCH_S: which sub-model processes are alive (bls.StubWatch), and which callers
        gave up (Triton's `is_cancelled`: a cancellation, or a gRPC deadline that passed)."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                self.bls.watch.refresh()
                for flight in list(self.in_flight):
                    if flight.abandoned.reason is None and flight.request.is_cancelled():
                        flight.abandoned.set(UnavailableError("cancelled by the caller"))
            except Exception as err:  # noqa: BLE001 - the watch goes on
                pb_utils.Logger.log_warn(f"nestrank: watching requests in flight failed: {err!r}")

    def finalize(self):
        self.watcher.cancel()
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.loop.stop()
