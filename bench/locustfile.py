"""Distributed load with locust: users built on the nestrank gRPC clients, so one machine is not the
limit of the load generator.

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

from locust import User, constant, events, task  # noqa: E402

from nestrank.clients.embed import EmbedClient  # noqa: E402
from nestrank.clients.rerank import RerankClient  # noqa: E402
from nestrank.clients.transport import RetryPolicy  # noqa: E402
from nestrank.texts import realistic_texts  # noqa: E402

BATCH = int(os.environ.get("NESTRANK_BATCH_SIZE", "32"))
NO_RETRIES = RetryPolicy(attempts=1)  # a load test reports failures; it does not paper over them
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
        self.model = os.environ.get("NESTRANK_MODEL", "all-minilm-l6-v2")
        dims = os.environ.get("NESTRANK_DIMENSIONS")
        self.options = {"dimensions": int(dims) if dims else None,
                        "precision": os.environ.get("NESTRANK_PRECISION", "float32")}  # fmt: skip
        self.client = EmbedClient(self.host, self.model, retry=NO_RETRIES, concurrency=1)
        _users.append(self)
        self.texts = realistic_texts(BATCH * 64, seed=id(self) % 10_000)
        self.turn = 0

    @task
    def embed(self):
        start = (self.turn * BATCH) % (len(self.texts) - BATCH)
        self.turn += 1
        self._measure(
            f"embed {self.model}", lambda: self.client.embed(self.texts[start : start + BATCH], **self.options)
        )


class RerankUser(_NestrankUser):
    def on_start(self):
        self.model = os.environ.get("NESTRANK_MODEL", "kalm-reranker")
        self.client = RerankClient(self.host, self.model, retry=NO_RETRIES)
        _users.append(self)
        self.ids = self.client.warm(realistic_texts(BATCH * 4, seed=7))
        self.turn = 0

    @task
    def rerank(self):
        start = (self.turn * 7) % (len(self.ids) - BATCH + 1)
        self.turn += 1
        chosen = self.ids[start : start + BATCH]
        self._measure(f"rerank {self.model}", lambda: self.client.rerank("how do I read a file", passages=chosen))
