"""Distributed load with locust, so one machine is not the limit of the load generator. Its users speak the
nestrank wire contract (`nestrank.protocol`) over `tritonclient.grpc`, whose blocking calls cooperate with locust's
gevent loop (the nestrank clients run asyncio, which gevent cannot drive). No retries: failures are reported.

One machine:   locust -f bench/locustfile.py EmbedUser --headless -u 64 -r 8 -t 60s --host 127.0.0.1:8001
Distributed:   locust -f bench/locustfile.py EmbedUser --master --headless -u 512 -r 32 -t 300s \\
                   --expect-workers 4 --host <server>:8001 --csv bench/out/locust
               locust -f bench/locustfile.py EmbedUser --worker --master-host <master address>   # each load machine

Knobs (environment): NESTRANK_MODEL, NESTRANK_BATCH_SIZE (texts or candidates per request),
NESTRANK_DIMENSIONS, NESTRANK_PRECISION; RerankUser reranks passages it warmed into the server cache.
"""

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists: gRPC must cooperate with locust's gevent loop

import gc  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402

from nestrank.clients.tensors import requested, text_input  # noqa: E402
from nestrank.clients.transport import Credentials  # noqa: E402
from nestrank.protocol.embedding import EMBEDDING_OUTPUTS, TEXT  # noqa: E402
from nestrank.protocol.reranking import DOCUMENTS, PASSAGE_IDS, QUERY, SCORES  # noqa: E402
from nestrank.texts import realistic_texts  # noqa: E402

BATCH = int(os.environ.get("NESTRANK_BATCH_SIZE", "32"))
_users: list = []


@events.test_stop.add_listener
def _close_clients(**_kwargs):
    # Close every gRPC channel while gevent's hub still runs: a channel left to tritonclient's __del__
    # at interpreter exit blocks forever in Channel.close.
    for user in _users:
        user.client.close()
        user.client = None
    _users.clear()
    gc.collect()


class _NestrankUser(User):
    abstract = True
    wait_time = constant(0)

    def on_start(self):
        credentials = Credentials.from_env()  # NESTRANK_API_KEY, as the nestrank clients read it
        self.headers = credentials.headers
        self.client = grpcclient.InferenceServerClient(self.host, **credentials.client_options())
        _users.append(self)

    def infer(self, inputs, output: str, parameters: dict) -> np.ndarray:
        result = self.client.infer(self.model, inputs, outputs=requested(output),
                                   parameters=parameters, headers=self.headers, client_timeout=120)  # fmt: skip
        return result.as_numpy(output)

    def _measure(self, name: str, call) -> None:
        start = time.perf_counter()
        error, size = None, 0
        try:
            size = len(call())
        except Exception as err:  # reported to locust by status, like any failed request
            error = err
        self.environment.events.request.fire(request_type="grpc", name=name, response_length=size, exception=error,
                                             response_time=(time.perf_counter() - start) * 1e3, context={})  # fmt: skip


class EmbedUser(_NestrankUser):
    def on_start(self):
        super().on_start()
        self.model = os.environ.get("NESTRANK_MODEL", "all-minilm-l6-v2")
        precision = os.environ.get("NESTRANK_PRECISION", "float32")
        dims = os.environ.get("NESTRANK_DIMENSIONS")
        self.output = EMBEDDING_OUTPUTS[precision]
        self.parameters = {"precision": precision, **({"dimensions": int(dims)} if dims else {})}
        self.texts = realistic_texts(BATCH * 64, seed=id(self) % 10_000)
        self.turn = 0

    @task
    def embed(self):
        start = (self.turn * BATCH) % (len(self.texts) - BATCH)
        self.turn += 1
        inputs = [text_input(TEXT, self.texts[start : start + BATCH], [BATCH, 1])]
        self._measure(f"embed {self.model}", lambda: self.infer(inputs, self.output, self.parameters))


class RerankUser(_NestrankUser):
    def on_start(self):
        super().on_start()
        self.model = os.environ.get("NESTRANK_MODEL", "kalm-reranker")
        documents = realistic_texts(BATCH * 4, seed=7)
        self.ids = []
        for s in range(0, len(documents), BATCH):  # warm the server's passage cache; rerank by id after
            chunk = documents[s : s + BATCH]
            ids = self.infer([text_input(DOCUMENTS, chunk, [1, len(chunk)])], PASSAGE_IDS, {"kind": "warm"})
            self.ids += [i.decode() for i in ids[0]]
        self.turn = 0

    @task
    def rerank(self):
        start = (self.turn * 7) % (len(self.ids) - BATCH + 1)
        self.turn += 1
        chosen = self.ids[start : start + BATCH]
        inputs = [
            text_input(QUERY, ["how do I read a file"], [1, 1]),
            text_input(PASSAGE_IDS, chosen, [1, len(chosen)]),
        ]
        self._measure(f"rerank {self.model}", lambda: self.infer(inputs, SCORES, {})[0])
