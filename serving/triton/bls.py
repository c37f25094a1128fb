"""The rerank model's calls to its `_encode` and `_score` (BLS), per request, as the `SubModels` the rerank service
takes (serving/pipeline/rerank_service.py).

Which thread does what (one rerank model instance is one process):
- The request loop (`RequestLoop`: one asyncio loop on its own thread) makes every BLS request and its tensors,
  reads every BLS answer, sends every answer of the rerank model, and watches the requests in flight.
- Each BLS request's blocking `exec()` waits on a daemon thread of its own (what python_backend's `async_exec` does
  on the loop's default executor, whose few threads would cap the calls in flight; daemon, so that a call into a
  sub-model that died never holds the process at exit).
- Triton's thread runs `execute`: it reads and checks the requests, and hands them to the loop.
- The rerank service's work (pure Python and numpy) runs on a worker thread per request; it submits calls to the
  loop and waits for them in bounded steps (`POLL_S`), so that it stops as soon as its request is abandoned: its
  caller cancelled or passed its deadline, or a sub-model it waits on restarted (`StubWatch`). Then the parts it
  left queued are cancelled (a CANCEL_GROUP request: Triton 2.51 cannot cancel a BLS request) and it raises.

A request's chunks go out at once under one admission group (a fresh id per request), so that the sub-models'
schedulers count none of them against another and merge them with other requests' work; the first chunk that fails
fails the request, with its kind (an overloaded `_encode` is overload).
"""

from __future__ import annotations

import concurrent.futures
import os
import uuid
from pathlib import Path

import numpy as np

from nestrank.protocol import reranking as r
from nestrank.protocol.errors import TRITON_TO_GRPC, UnavailableError, from_triton_error
from nestrank.protocol.parameters import TRAFFIC_CLASS
from nestrank.protocol.passages import PassageStates
from nestrank.serving.triton.request_loop import Abandoned, RequestLoop, in_daemon_thread

POLL_S = 0.1  # how often a waiting request looks whether it was abandoned


class StubWatch:
    """Whether the sub-models' processes (their Python backend stubs, children of this stub's tritonserver) are the
    ones a request sent its parts to: a stub that died takes its requests with it (Triton 2.51 never answers them),
    so a request waiting on one is failed at once (UNAVAILABLE: retry) instead of waiting out its deadline.
    `generation[model]` grows each time a stub of `model` is seen gone. Off where /proc cannot tell."""

    def __init__(self, models: list[str]):
        self.models = models
        self.generation = dict.fromkeys(models, 0)
        self._pids: dict[str, set[int]] = {m: set() for m in models}
        self.enabled = Path(f"/proc/{os.getppid()}/task").is_dir()

    def refresh(self) -> None:
        if not self.enabled:
            return
        from nestrank.serving.launcher.process_tree import stub_models

        now: dict[str, set[int]] = {m: set() for m in self.models}
        for pid, model in stub_models(os.getppid()).items():
            if model in now:
                now[model].add(pid)
        for model in self.models:
            if self._pids[model] - now[model]:
                self.generation[model] += 1
            self._pids[model] = now[model]


class RequestCalls:
    """One rerank request's calls to `_encode` and `_score` (the service's `SubModels`), under its admission group
    and traffic class, abandoned as `abandoned` says."""

    def __init__(self, bls: BlsClient, traffic_class: str, abandoned: Abandoned):
        self.bls, self.traffic_class, self.abandoned = bls, traffic_class, abandoned
        self.group = uuid.uuid4().hex
        self.sent_to: set[str] = set()

    def encode(self, documents: list[str], ratio: int) -> PassageStates:
        config, name = self.bls.config, f"{self.bls.name}_encode"
        size = config.max_encode_documents
        chunks = [documents[start : start + size] for start in range(0, len(documents), size)]
        params = {r.ENCODE_RATIO: ratio}
        answers = self._all(name, [({r.DOCUMENTS: np.array([[d.encode() for d in chunk]], dtype=object)}, params)
                                   for chunk in chunks],
                            [r.PASSAGE_STATES, r.PASSAGE_COUNTS, r.PASSAGE_GROUPS])  # fmt: skip
        return PassageStates.concat([r.from_wire(*(a[0] for a in answer), ratio, config.passage_fingerprint)
                                     for answer in answers])  # fmt: skip

    def score(self, prompt: np.ndarray, chunks: list[PassageStates]) -> np.ndarray:
        name = f"{self.bls.name}_score"
        parts = [({r.DECODER_INPUT_IDS: prompt[None], **{k: v[None] for k, v in r.wire_tensors(chunk).items()}}, {})
                 for chunk in chunks]  # fmt: skip
        return np.concatenate([answer[0][0] for answer in self._all(name, parts, [r.MARGINS])])

    def _all(self, model: str, parts: list[tuple[dict, dict]], outputs: list[str]) -> list[list[np.ndarray]]:
        """Every part's outputs, the parts sent at once; waits in steps of POLL_S, and stops (cancelling what it
        left queued) when the request is abandoned or a part fails."""
        if self.abandoned.reason is not None:  # nothing more is sent for a request nobody waits for
            raise self.abandoned.reason
        generation = self.bls.watch.generation[model]
        self.sent_to.add(model)
        shared = {r.ADMISSION_GROUP: self.group, TRAFFIC_CLASS: self.traffic_class}
        futures = [self.bls.loop.submit(self.bls.call(model, inputs, outputs, {**params, **shared}))
                   for inputs, params in parts]  # fmt: skip
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(pending, POLL_S, concurrent.futures.FIRST_EXCEPTION)
                for future in done:
                    future.result()  # the first failure fails the request
                if self.abandoned.reason is not None:
                    raise self.abandoned.reason
                if self.bls.watch.generation[model] != generation:
                    raise UnavailableError(f"{model} restarted while this request waited on it; retry")
            return [future.result() for future in futures]
        except BaseException:
            if pending:
                self.cancel_queued()
            raise

    def cancel_queued(self) -> None:
        """Drops this request's parts still queued in the sub-models it sent to (fire and forget)."""
        for model in self.sent_to:
            self.bls.loop.submit(self.bls.cancel(model, self.group))


class BlsClient:
    """BLS requests from the rerank model `name` to its sub-models, made on `loop`'s thread."""

    def __init__(self, pb_utils, name: str, config: r.RerankerConfig, loop: RequestLoop):
        self.pb_utils, self.name, self.config, self.loop = pb_utils, name, config, loop
        self.watch = StubWatch([f"{name}_encode", f"{name}_score"])
        self.codes = {getattr(pb_utils.TritonError, code): code for code in TRITON_TO_GRPC
                      if hasattr(pb_utils.TritonError, code)}  # fmt: skip

    def for_request(self, traffic_class: str, abandoned: Abandoned) -> RequestCalls:
        return RequestCalls(self, traffic_class, abandoned)

    async def call(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                   parameters: dict) -> list[np.ndarray]:  # fmt: skip
        """One BLS request (on the loop): its outputs, copied out of Triton's memory; or its error, typed."""
        pb = self.pb_utils
        request = pb.InferenceRequest(model_name=model, inputs=[pb.Tensor(k, v) for k, v in inputs.items()],
                                      requested_output_names=outputs, parameters=parameters)  # fmt: skip
        response = await in_daemon_thread(request.exec)
        if response.has_error():
            error = response.error()
            raise from_triton_error(self.codes.get(error.code(), "INTERNAL"), f"{model}: {error.message()}")
        return [np.array(pb.get_output_tensor_by_name(response, name).as_numpy(), copy=True) for name in outputs]

    async def cancel(self, model: str, group: str) -> None:
        signature = (r.encode_signature(self.config.hidden_size, 1) if model.endswith("_encode")
                     else r.score_signature(self.config.hidden_size))  # fmt: skip
        try:
            await self.call(model, signature.placeholder_inputs(), [], {r.CANCEL_GROUP: group})
        except Exception:  # noqa: BLE001 - best effort: the parts run, and their answers are dropped
            pass
