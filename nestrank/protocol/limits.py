"""The limits a served model enforces: one frozen dataclass per model kind, each limit with one name.

- Written at export into the model's config parameters, one parameter per limit (its value as JSON), like every
  field of the model's config: `EmbedderConfig` is an `EmbedLimits` and `RerankerConfig` a `RerankLimits`, so
  `config.max_candidates` and the clients' `info().max_candidates` read them, and `info().limits` has them all.
- `max_queue_wait_s` is also the model's Triton queue policy (`default_timeout_microseconds`), written from it at
  export and at serve time: one bound on how long a request may wait before its work starts.
- Overridden at serve time by `nestrank serve --limit [MODEL:]NAME=VALUE`, which writes them into the served copy of
  each model's config (serving/launcher/served.py): Triton's model-config endpoint and `info()` show what is in force.

Room to grow: a limit is a `_limit` field here (default, what it bounds, least value); validation, the launcher's
`--limit`, `info()` and the README's table pick it up by name.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20


def _limit(default: int | float, what: str, low: int | float = 1, inclusive: bool | None = None):
    """A limit: its default, what it bounds (the docs' table) and the least it may be (a float: more than it,
    unless `inclusive`)."""
    inclusive = not isinstance(default, float) if inclusive is None else inclusive
    return dataclasses.field(default=default, metadata={"what": what, "low": low, "inclusive": inclusive})


def _check(limits: Any) -> None:
    """Each limit of the right type (its default's) and range; ValueError naming the field and the limit."""
    for f in (f for f in dataclasses.fields(limits) if "low" in f.metadata):  # a model config's other fields: its own
        value, low, number = getattr(limits, f.name), f.metadata["low"], isinstance(f.default, float)
        if isinstance(value, bool) or not isinstance(value, (int, float) if number else int):
            raise ValueError(f"{f.name} must be {'a number' if number else 'an integer'}, got {value!r}")
        if value < low or (value == low and not f.metadata["inclusive"]):
            raise ValueError(f"{f.name} must be {'>=' if f.metadata['inclusive'] else '>'} {low:g}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class EmbedLimits:
    max_batch_tokens: int = _limit(16384, "tokens per execution of the embed scheduler (estimated from the texts' "
                                          "length on arrival); TEI's /info max_batch_tokens")  # fmt: skip
    max_queue_wait_s: float = _limit(60.0, "the longest a request may wait before its work starts (the embed "
                                           "scheduler's estimate; Triton's queue policy for every model): past it, "
                                           "refused at once as overloaded", low=0.0)  # fmt: skip
    max_run_tokens: int = _limit(8192, "padded tokens per ONNX Runtime run (each execution is cut into such runs)")
    max_run_sequences: int = _limit(64, "texts per ONNX Runtime run")
    intra_op_threads: int = _limit(0, "ONNX Runtime threads per session (0: one per physical core)", low=0)

    def __post_init__(self):
        _check(self)


@dataclass(frozen=True, kw_only=True)
class RerankLimits:
    max_candidates: int = _limit(1000, "documents or ids per rerank, warm or index request (clients split longer "
                                       "lists)")  # fmt: skip
    max_request_state_bytes: int = _limit(512 * MiB, "passage states one rerank request may hold: its candidates "
                                                     "at the request's ratio, counted at their longest; "
                                                     "client-sent states as sent")  # fmt: skip
    max_encode_documents: int = _limit(32, "documents per request to `_encode` (a rerank sends its chunks of it at "
                                           "once, under one admission group; the clients' encode_passages sends "
                                           "requests of it)")  # fmt: skip
    bulk_encode_documents: int = _limit(8, "documents per `_encode` request of bulk work (warm, index), sent one "
                                           "after another: interactive work waits behind at most one")  # fmt: skip
    encode_batch_tokens: int = _limit(16384, "passage tokens per execution of the `_encode` scheduler (whole "
                                             "requests, interactive first)")  # fmt: skip
    max_requests_in_flight: int = _limit(32, "requests each instance of the rerank model works on at once (bulk "
                                             "ones: at most half of them): past it, refused at once as "
                                             "overloaded")  # fmt: skip
    score_batch_tokens: int = _limit(65536, "work per execution of the `_score` scheduler (and per scorer run): "
                                            "prompt tokens x candidates + pooled groups; four reranks of 100 "
                                            "candidates and a 100-token prompt")  # fmt: skip
    score_batch_delay_s: float = _limit(0.005, "how long a busy `_score` waits for the score calls of concurrent "
                                               "reranks to join an execution (0: never)", low=0.0,
                                        inclusive=True)  # fmt: skip
    score_chunk_bytes: int = _limit(64 * MiB, "passage states per call from the rerank model to `_score` "
                                              "(through /dev/shm)")  # fmt: skip
    max_run_tokens: int = _limit(8192, "as the embedder's, for the passage encoder (padded tokens per run)")
    max_run_sequences: int = _limit(64, "as the embedder's, for the passage encoder (passages per run)")
    max_score_run_candidates: int = _limit(256, "candidates per ONNX Runtime run of the scorer")
    passage_cache_bytes: int = _limit(512 * MiB, "the rerank model's first level, an in-process LRU in front of "
                                                 "the passage store (0: none)", low=0)  # fmt: skip
    max_queue_wait_s: float = _limit(30.0, "as the embedder's: the `_encode` and `_score` schedulers' bound", low=0.0)
    intra_op_threads: int = _limit(0, "as the embedder's", low=0)

    def __post_init__(self):
        _check(self)


def limits_of(config: Any, kind: type) -> Any:
    """The limits part of a model config (an EmbedderConfig is an EmbedLimits, a RerankerConfig a RerankLimits)."""
    return kind(**{f.name: getattr(config, f.name) for f in dataclasses.fields(kind)})


LIMIT_NAMES = tuple(dict.fromkeys(f.name for kind in (EmbedLimits, RerankLimits) for f in dataclasses.fields(kind)))
_SIZE = re.compile(r"([0-9]+)\s*([KMGT])i?B?", re.IGNORECASE)


def parse_limit(name: str, text: str) -> str:
    """A flag's value → the parameter's JSON: integers (with KiB/MiB/GiB/TiB for `*_bytes`), numbers for `*_s`.
    ValueError naming the limit."""
    if name not in LIMIT_NAMES:
        raise ValueError(f"unknown limit {name!r}; known: {', '.join(LIMIT_NAMES)}")
    text = text.strip()
    size = _SIZE.fullmatch(text) if name.endswith("_bytes") else None
    if size:
        return json.dumps(int(size.group(1)) << (10 * ("KMGT".index(size.group(2).upper()) + 1)))
    try:
        value = float(text) if name.endswith("_s") else int(text)
    except ValueError:
        unit = " (units: KiB, MiB, GiB)" if name.endswith("_bytes") else ""
        raise ValueError(
            f"{name}: {text!r} is not {'a number' if name.endswith('_s') else 'an integer'}{unit}"
        ) from None
    return json.dumps(value)


def markdown_table() -> str:
    """The README's limits table: each limit, its default in each kind that has it, and what it bounds."""
    rows = ["| limit | embedder | reranker | what it bounds |", "| --- | --- | --- | --- |"]
    kinds = [{f.name: f for f in dataclasses.fields(kind)} for kind in (EmbedLimits, RerankLimits)]
    for name in LIMIT_NAMES:
        cells = [_shown(name, k[name].default) if name in k else "" for k in kinds]
        what = next(k[name].metadata["what"] for k in kinds if name in k)
        rows.append(f"| `{name}` | " + " | ".join(cells) + f" | {what} |")
    return "\n".join(rows)


def _shown(name: str, value: Any) -> str:
    if name.endswith("_bytes") and value and value % MiB == 0:
        return f"{value // MiB} MiB"
    return f"{value:g} s" if name.endswith("_s") else f"{value:,}"
