"""Helpers shared by the TritonPythonModel classes: inputs, parameters, and errors → TritonError.

Only the model files import `triton_python_backend_utils`; it is passed in here so this module
imports (and is tested) outside Triton.

Every model reads and answers each request inside its own `try`: whatever goes wrong with one request becomes that
request's error, never its batch-mates'. Bad input raises a typed error (INVALID_ARGUMENT naming the field and the
limit); any other exception is a server bug: INTERNAL, its traceback in the server log. Only a failure of the
shared model run fails the batch.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.protocol.errors import TRITON_TO_GRPC, NestrankError, ValidationError, from_triton_error, marked
from nestrank.protocol.parameters import exported_version, string_parameters

MAX_MESSAGE_CHARS = 1000  # gRPC trailers are small (16 KB): an error never carries a request's bulk back


def decode_texts(array: np.ndarray | None, field: str, max_count: int | None = None) -> list[str]:
    """A BYTES tensor ([N], [N, 1] or [1, N]) → N strings; invalid UTF-8 is refused with its index."""
    if array is None:
        raise ValidationError(field, "missing input tensor")
    values = array.reshape(-1)
    if max_count is not None and len(values) > max_count:
        raise ValidationError(field, f"{len(values)} texts exceed the limit of {max_count}")
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValidationError(f"{field}[{i}]", f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    return texts


def read_model_args(pb_utils, args: dict, config_type):
    """`initialize`'s arguments → (Triton's model config as a dict, the served config, the version directory).

    A model exported by another nestrank still loads (its model.py imports this glue); the log says so, since
    re-exporting brings it the new exporter's fixes."""
    from nestrank import __version__

    model_config = json.loads(args["model_config"])
    parameters = string_parameters(model_config)
    exported = exported_version(parameters) or "an earlier version"
    if exported != __version__:
        pb_utils.Logger.log_warn(f"nestrank: {model_config.get('name')} was exported by nestrank {exported}; this is "
                                 f"{__version__}. It serves; re-export it to pick up exporter changes.")  # fmt: skip
    version_dir = Path(args["model_repository"]) / args["model_version"]
    return model_config, config_type.from_parameters(parameters), version_dir


def wanted_outputs(request, default: tuple[str, ...]) -> set[str]:
    """The outputs this request asked for (all, when it named none)."""
    return set(request.requested_output_names()) or set(default)


def input_array(pb_utils, request, name: str, required: bool = True) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise ValidationError(name, "missing input tensor")
        return None
    return tensor.as_numpy()


def one_row(array: np.ndarray | None, name: str) -> np.ndarray | None:
    """The request's only row: models with max_batch_size 1 see a leading dimension of 1."""
    if array is None:
        return None
    if array.ndim < 1 or array.shape[0] != 1:
        raise ValidationError(name, f"shape {list(array.shape)}; expected a leading batch dimension of 1")
    return array[0]


def request_parameters(request) -> dict[str, Any]:
    raw = request.parameters()
    return json.loads(raw) if raw else {}


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "… (cut)"


def error_response(pb_utils, err: Exception):
    """InferenceResponse carrying `err` with its status code; unknown exceptions become INTERNAL, with their
    traceback in the server log rather than in the answer."""
    if isinstance(err, NestrankError):
        code = getattr(pb_utils.TritonError, err.triton_code)
        message = marked(err)  # UNAVAILABLE is shared: the marker is how clients tell overload, a full store apart
    else:  # the traceback from the exception itself: this may run outside its `except` (the embed scheduler)
        pb_utils.Logger.log_error(f"nestrank: internal error:\n{''.join(traceback.format_exception(err))}")
        code = pb_utils.TritonError.INTERNAL
        message = f"internal error ({type(err).__name__}); the server log has the details"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(_bounded(message), code))


def answerer(pb_utils, request, tensors):
    """The request's one answer, sent through its response sender (from any thread, once): `tensors(result)` (the
    output tensors) for a result, its error for an exception (or when building the tensors fails)."""
    sender = request.get_response_sender()

    def answer(result):
        try:
            if isinstance(result, Exception):
                raise result
            response = pb_utils.InferenceResponse(tensors(result))
        except Exception as err:
            response = error_response(pb_utils, err)
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    return answer


def _bls_request(pb_utils, model: str, inputs, outputs: list[str], parameters: dict | None):
    return pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs,
                                     parameters=parameters or {})  # fmt: skip


def _bls_outputs(pb_utils, model: str, response, outputs: list[str]) -> list[np.ndarray]:
    """The response's outputs; its error keeps its kind, so a full queue below is still overload for the caller,
    and a dead sub-model is UNAVAILABLE, not the caller's bug."""
    if response.has_error():
        codes = {getattr(pb_utils.TritonError, name): name for name in TRITON_TO_GRPC
                 if hasattr(pb_utils.TritonError, name)}  # fmt: skip
        error = response.error()
        raise from_triton_error(codes.get(error.code(), "INTERNAL"), f"{model}: {error.message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


def bls_call(pb_utils, model: str, inputs, outputs: list[str], parameters: dict | None = None) -> list[np.ndarray]:
    """A request to another model of this server (BLS), from the thread running `execute` (one at a time: for
    several in flight, `BlsLoop`)."""
    response = _bls_request(pb_utils, model, inputs, outputs, parameters).exec()
    return _bls_outputs(pb_utils, model, response, outputs)


class BlsLoop:
    """BLS requests in flight at once, asked for from any thread, each made and sent (`async_exec`) on the event
    loop the model's `async def execute` runs on, its outputs copied there: every Triton object of the process is
    touched by that one thread. (Triton objects made and BLS calls sent from several threads at once crashed
    tritonserver 2.51: SIGSEGV and `boost::interprocess::lock_exception` in the Python backend, measured with 16
    reranks at once.)"""

    def __init__(self, pb_utils):
        self.pb_utils = pb_utils
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def _call(self, model, inputs: dict, outputs, parameters):
        tensors = [self.pb_utils.Tensor(name, value) for name, value in inputs.items()]
        response = await _bls_request(self.pb_utils, model, tensors, outputs, parameters).async_exec()
        return [np.array(a, copy=True) for a in _bls_outputs(self.pb_utils, model, response, outputs)]

    def submit(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
               parameters: dict | None = None) -> Future:  # fmt: skip
        """From a worker thread: a future of the outputs (or of the error, typed as `bls_call`'s)."""
        return asyncio.run_coroutine_threadsafe(self._call(model, inputs, outputs, parameters), self.loop)
