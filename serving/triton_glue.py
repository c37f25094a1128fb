"""Helpers shared by the TritonPythonModel classes: inputs, parameters, and errors → TritonError.

Only the model files import `triton_python_backend_utils`; it is passed in here so this module
imports (and is tested) outside Triton.

Every model reads and answers each request inside its own `try`: whatever goes wrong with one request becomes that
request's error, never its batch-mates'. Bad input raises a typed error (INVALID_ARGUMENT naming the field and the
limit); any other exception is a server bug: INTERNAL, its traceback in the server log. Only a failure of the
shared model run fails the batch.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.protocol.errors import (
    OVERLOADED,
    TRITON_TO_GRPC,
    NestrankError,
    OverloadedError,
    ValidationError,
    from_triton_error,
)
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
        message = str(err)
        if isinstance(err, OverloadedError) and not message.startswith(OVERLOADED):
            message = OVERLOADED + message  # UNAVAILABLE is shared: this is how clients tell overload apart
    else:  # the traceback from the exception itself: this may run outside its `except` (the embed scheduler)
        pb_utils.Logger.log_error(f"nestrank: internal error:\n{''.join(traceback.format_exception(err))}")
        code = pb_utils.TritonError.INTERNAL
        message = f"internal error ({type(err).__name__}); the server log has the details"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(_bounded(message), code))


def bls_call(pb_utils, model: str, inputs, outputs: list[str], parameters: dict | None = None) -> list[np.ndarray]:
    """A request to another model of this server (BLS); its error keeps its kind, so a full queue below is still
    overload for the caller, and a dead sub-model is UNAVAILABLE, not the caller's bug."""
    request = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs,
                                        parameters=parameters or {})  # fmt: skip
    response = request.exec()
    if response.has_error():
        codes = {getattr(pb_utils.TritonError, name): name for name in TRITON_TO_GRPC
                 if hasattr(pb_utils.TritonError, name)}  # fmt: skip
        error = response.error()
        raise from_triton_error(codes.get(error.code(), "INTERNAL"), f"{model}: {error.message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


class PassageMetrics:
    """The passage states' counters on Triton's Prometheus endpoint, labelled by model and instance (each instance
    is a process with its own first level):
    nestrank_passage_cache_{hits, misses, evictions, bytes, entries} for the first level (this process), and
    nestrank_passage_store_{hits, misses, errors, corrupt, bytes_read, bytes_written} and the histogram
    nestrank_passage_store_fetch_seconds for the store (labelled with it too)."""

    CACHE = {"hits": ("COUNTER", "first-level hits (passages)"),
             "misses": ("COUNTER", "first-level misses (passages)"),
             "evictions": ("COUNTER", "first-level evictions"),
             "bytes": ("GAUGE", "bytes the first level holds (objects and index included)"),
             "entries": ("GAUGE", "passage-state values the first level holds")}  # fmt: skip
    STORE = {"hits": "passages found in the store", "misses": "passages the store did not have (corrupt included)",
             "errors": "store operations that failed (unreachable, full)",
             "corrupt": "store values that failed their header or checksum",
             "bytes_read": "bytes read from the store", "bytes_written": "bytes written to the store"}  # fmt: skip
    FETCH_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]

    def __init__(self, pb_utils, model: str, instance: str, store: str):
        family = pb_utils.MetricFamily
        # Families must outlive their metrics: keep both.
        self.families = {f"cache_{key}": family(name=f"nestrank_passage_cache_{key}", description=help_,
                                                kind=getattr(family, kind))
                         for key, (kind, help_) in self.CACHE.items()}  # fmt: skip
        for key, help_ in self.STORE.items():
            self.families[f"store_{key}"] = family(name=f"nestrank_passage_store_{key}", description=help_,
                                                   kind=family.COUNTER)  # fmt: skip
        self.families["fetch"] = family(name="nestrank_passage_store_fetch_seconds", kind=family.HISTOGRAM,
                                        description="seconds per batched fetch from the store")  # fmt: skip
        labels = {"model": model, "instance": instance}
        self.metrics = {key: f.Metric(labels=labels if key.startswith("cache") else {**labels, "store": store})
                        for key, f in self.families.items() if key != "fetch"}  # fmt: skip
        self.fetch = self.families["fetch"].Metric(labels={**labels, "store": store}, buckets=self.FETCH_BUCKETS)
        self.reported: dict[str, int] = {}

    def report(self, cache_stats, store_stats) -> None:
        for prefix, stats, keys in (("cache", cache_stats, ("hits", "misses", "evictions")),
                                    ("store", store_stats, tuple(self.STORE))):  # fmt: skip
            for key in keys:
                name, value = f"{prefix}_{key}", getattr(stats, key)
                self.metrics[name].increment(value - self.reported.get(name, 0))
                self.reported[name] = value
        self.metrics["cache_bytes"].set(cache_stats.bytes)
        self.metrics["cache_entries"].set(cache_stats.entries)


class SchedulerMetrics:
    """The embed scheduler on Triton's Prometheus endpoint, labelled by model and instance: counters
    nestrank_embed_{admitted, shed, expired, cancelled, batches, tokens}, the gauge nestrank_embed_tokens_per_s (its
    estimate), and histograms nestrank_embed_queue_seconds (per request) and nestrank_embed_batch_seconds."""

    COUNTERS = {"admitted": "requests queued", "shed": "requests refused at once: they would wait past the bound",
                "expired": "requests admitted but refused when they reached the worker past the bound",
                "cancelled": "requests their callers gave up before they ran", "batches": "executions",
                "tokens": "tokens embedded"}  # fmt: skip
    BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

    def __init__(self, pb_utils, model: str, instance: str):
        family, labels = pb_utils.MetricFamily, {"model": model, "instance": instance}
        self.families = {key: family(name=f"nestrank_embed_{key}", description=help_, kind=family.COUNTER)
                         for key, help_ in self.COUNTERS.items()}  # fmt: skip
        self.families["tokens_per_s"] = family(name="nestrank_embed_tokens_per_s", kind=family.GAUGE,
                                               description="the scheduler's estimate of its speed")  # fmt: skip
        for key in ("queue_seconds", "batch_seconds"):
            self.families[key] = family(name=f"nestrank_embed_{key}", kind=family.HISTOGRAM,
                                        description=f"{key.split('_')[0]} time in seconds")  # fmt: skip
        self.metrics = {key: f.Metric(labels=labels, **({"buckets": self.BUCKETS} if "seconds" in key else {}))
                        for key, f in self.families.items()}  # fmt: skip
        self.reported = dict.fromkeys(self.COUNTERS, 0)

    def report(self, scheduler) -> None:
        # Only what changed: each call is a round trip to the server, and this runs on the thread taking requests in.
        stats = scheduler.stats
        for key in self.COUNTERS:
            value = getattr(stats, key)
            if value != self.reported[key]:
                self.metrics[key].increment(value - self.reported[key])
                self.reported[key] = value
        if scheduler.tokens_per_s != self.reported.get("tokens_per_s"):
            self.metrics["tokens_per_s"].set(scheduler.tokens_per_s)
            self.reported["tokens_per_s"] = scheduler.tokens_per_s
        for key in ("queue_seconds", "batch_seconds"):
            drained, values = getattr(stats, key), []
            while drained:  # the worker appends while this drains
                values.append(drained.pop())
            for value in values:
                self.metrics[key].observe(value)
