"""Helpers shared by the TritonPythonModel classes: inputs, parameters, and errors → TritonError.

Only the model files import `triton_python_backend_utils`; it is passed in here so this module
imports (and is tested) outside Triton.

Every model reads and answers each request inside its own `try`: whatever goes wrong with one request becomes that
request's error, never its batch-mates'. Bad input raises a typed error (INVALID_ARGUMENT naming the field and the
limit); any other exception is a server bug: INTERNAL, its traceback in the server log. A shared run that fails is
run again request by request (the scheduler), so that only the request that caused it fails.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.protocol.errors import NestrankError, ValidationError, marked
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


def read_model_args(pb_utils, args: dict, config_type, signature=None):
    """`initialize`'s arguments → (Triton's model config as a dict, the served config, the version directory).

    A model exported by another nestrank still loads (its model.py imports this glue), and the log says so, since
    re-exporting brings it the new exporter's fixes; unless its tensors are not the contract's `signature(config)`
    (an export from before a change of the wire): then it is refused, with what to do."""
    from nestrank import __version__

    model_config = json.loads(args["model_config"])
    parameters = string_parameters(model_config)
    exported = exported_version(parameters) or "an earlier version"
    config = config_type.from_parameters(parameters)  # its own checks first (an export from before the layout)
    if signature is not None:
        check_tensors(model_config, signature(config), exported)
    if exported != __version__:
        pb_utils.Logger.log_warn(f"nestrank: {model_config.get('name')} was exported by nestrank {exported}; this is "
                                 f"{__version__}. It serves; re-export it to pick up exporter changes.")  # fmt: skip
    version_dir = Path(args["model_repository"]) / args["model_version"]
    return model_config, config, version_dir


def check_tensors(model_config: dict, signature, exported: str) -> None:
    """ValueError (the model does not load) when the config's inputs and outputs are not the signature's."""

    def names(tensors, optional=False):
        return sorted(f"{t['name']}{' (optional)' if t.get('optional', False) and optional else ''}" for t in tensors)

    have = (names(model_config.get("input", []), True), names(model_config.get("output", [])))
    want = (names([{"name": t.name, "optional": t.optional} for t in signature.inputs], True),
            names([{"name": t.name} for t in signature.outputs]))  # fmt: skip
    if have != want:
        raise ValueError(f"{model_config.get('name')} was exported by nestrank {exported} with the tensors {have}, "
                         f"and this nestrank serves {want}: re-export the model (`nestrank export`, or "
                         "`nestrank serve --reranker <checkpoint>`)")  # fmt: skip


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
    output tensors) for a result, no tensors for None (a cancel request's answer), its error for an exception (or
    when building the tensors fails). Sending may raise (the caller went away): the scheduler that calls it logs
    that and goes on."""
    sender = request.get_response_sender()

    def answer(result):
        if isinstance(result, Exception):
            send(pb_utils, sender, result)
        else:
            send(pb_utils, sender, lambda: [] if result is None else tensors(result))

    return answer


def log_error(pb_utils):
    """A `log(message)` into Triton's log, for code that runs outside a request (the schedulers' workers)."""
    return lambda message: pb_utils.Logger.log_error(f"nestrank: {message}")


def send(pb_utils, sender, outcome) -> None:
    """One final response: an error for an exception, else the tensors `outcome()` builds (an error if that
    fails)."""
    try:
        if isinstance(outcome, Exception):
            raise outcome
        response = pb_utils.InferenceResponse(outcome())
    except Exception as err:
        response = error_response(pb_utils, err)
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
