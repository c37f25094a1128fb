"""A local gRPC server that speaks Triton's inference protocol (the real `inference.GRPCInferenceService` over real
gRPC on loopback), for the client tests whose subject is the wire: deadlines as the server sees them,
cancellations that reach it, requests in flight, statuses. It serves no model: each test says how it answers.
Behaviour that depends on Triton itself is tested against the real tritonserver in tests/integration."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from nestrank.protocol.embedding import EmbedderConfig
from tests.names import reranker_config

EMBEDDER = EmbedderConfig(width=8, max_length=16, pooling="mean", dimensions=(8, 4), precisions=("float32", "ubinary"))
RERANKER = reranker_config(max_candidates=4)
HOLD_LIMIT_S = 30.0  # a held request is let go after this, so that a broken test cannot hang


@dataclass
class Received:
    model: str
    texts: list[str]
    parameters: dict
    time_remaining: float | None  # what the client's deadline left when the request arrived
    outcome: str = "running"  # "answered", "failed" or "cancelled" (the client went away while it was held)


@dataclass
class LocalTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """`answer(server, received, request, context)` answers each ModelInfer (default: `embeddings`)."""

    models: dict = field(default_factory=lambda: {"m": (EMBEDDER, 4), "r": (RERANKER, 1), "r_encode": (RERANKER, 32)})
    answer: object = None
    ready: bool = True
    received: list = field(default_factory=list)
    readiness_probes: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self):
        self.lock = threading.Lock()
        self.answer = self.answer or embeddings
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        self.url = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

    def requests(self, outcome: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if outcome is None or r.outcome == outcome]

    def wait_for(self, condition, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "the local server did not see it happen"
            time.sleep(0.01)

    # -- the protocol ------------------------------------------------------------------------------------------

    def ServerReady(self, request, context):
        with self.lock:
            self.readiness_probes += 1
        return service_pb2.ServerReadyResponse(ready=self.ready)

    def ModelConfig(self, request, context):
        if request.name not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
        config, max_batch_size = self.models[request.name]
        parameters = {k: model_config_pb2.ModelParameter(string_value=v) for k, v in config.to_parameters().items()}
        return service_pb2.ModelConfigResponse(
            config=model_config_pb2.ModelConfig(name=request.name, max_batch_size=max_batch_size, parameters=parameters)
        )

    def ModelInfer(self, request, context):
        last = request.inputs[-1].datatype == "BYTES"  # texts, documents or passage ids (states are not texts)
        texts = [t.decode() for t in deserialize_bytes_tensor(request.raw_input_contents[-1])] if last else []
        parameters = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in request.parameters.items()}
        received = Received(request.model_name, texts, parameters, context.time_remaining())
        with self.lock:
            self.received.append(received)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = self.answer(self, received, request, context)
            received.outcome = "answered"
            return response
        except BaseException:
            received.outcome = "cancelled" if not context.is_active() else "failed"
            raise
        finally:
            with self.lock:
                self.in_flight -= 1


# -- ways to answer -----------------------------------------------------------------------------------------------


def embeddings(server, received, request, context):
    """Rows that hold each text's length, in the output the client asked for."""
    name = request.outputs[0].name
    dims = int(received.parameters.get("dimensions", EMBEDDER.width))
    if name == "embeddings":
        rows = np.array([[len(t)] * dims for t in received.texts], dtype=np.float32)
        return response(request, name, rows, "FP32")
    return response(request, name, np.full((len(received.texts), (dims + 7) // 8), 255, np.uint8), "UINT8")


def response(request, name: str, array: np.ndarray, datatype: str) -> service_pb2.ModelInferResponse:
    raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
    tensor = service_pb2.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=list(array.shape))
    return service_pb2.ModelInferResponse(model_name=request.model_name, outputs=[tensor], raw_output_contents=[raw])


def answering(name: str, array: np.ndarray, datatype: str):
    """Always the same output, whatever was asked."""
    return lambda server, received, request, context: response(request, name, array, datatype)


def hold(server, received, request, context):
    """Never answers: waits until the client cancels the request or its deadline passes."""
    deadline = time.monotonic() + HOLD_LIMIT_S
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.01)
    context.abort(grpc.StatusCode.INTERNAL, "held past the local server's limit")


def fail(code: grpc.StatusCode, message: str):
    def answer(server, received, request, context):
        context.abort(code, message)

    return answer
