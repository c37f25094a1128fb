"""The reranking contract: what an exported FBNL reranker serves (its Triton `parameters`), one rerank request's
options, passage ids, and the tensors of its three models. The server and the client validate with the same rules.

Passage states travel in one layout across every hop (states [ΣG, H] float16, counts [ΣG], groups per passage
[N]), padded once, right before ONNX Runtime, in the scorer. `<name>_encode` answers them with the passage
fingerprint of the model that made them (states are float16 everywhere: `passages.py`). Every request to the three
models has a leading dimension of 1 (`<name>` and `<name>_score`: max_batch_size 1; `<name>_encode`: one chunk of
documents per request, which its scheduler merges with other requests': serving/pipeline/scheduler.py). A request
to `<name>` is of one kind (REQUEST_KINDS: rerank, warm, index) and of one traffic class (`traffic_class`:
interactive or bulk; parameters.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.limits import RerankLimits, limits_of
from nestrank.protocol.parameters import (
    BULK,
    INTERACTIVE,
    TRAFFIC_CLASS,
    as_bool,
    as_int,
    as_str,
    check_names,
    from_parameters,
    shown,
    to_parameters,
    traffic_class,
)
from nestrank.protocol.passages import STATE_DTYPE, PassageStates
from nestrank.protocol.tensors import Signature, Tensor

RATIOS = (1, 2, 4, 8, 16, 32)  # MEP compression ratios
# A `passage_store` URL's password, which the launcher keeps out of configs (they show as `:***@`), reaches the
# models in this environment variable, like every secret.
STORE_PASSWORD_VARIABLE = "NESTRANK_PASSAGE_STORE_PASSWORD"


def passage_id(document: str) -> str:
    """The id clients and server agree on: a hash of the document's text."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()[:32]


# Tensor names on the wire (the signatures below give their dtypes and dims).
QUERY = "query"
DOCUMENTS = "documents"
PASSAGE_IDS = "passage_ids"
PASSAGE_STATES = "passage_states"
PASSAGE_COUNTS = "passage_counts"
PASSAGE_GROUPS = "passage_groups"  # groups per passage of the ragged states
PASSAGE_FINGERPRINT = "passage_fingerprint"  # an `_encode` output, and a rerank request parameter
PASSAGE_TOKENS = "passage_tokens"  # tokens per passage, answered to a warm / index request
STORED_BYTES = "stored_bytes"  # bytes a warm / index request wrote to the store per passage (0: already there)
DECODER_INPUT_IDS = "decoder_input_ids"
SCORES = "scores"  # sigmoid(margin): the probability of "yes"
MARGINS = "margins"  # logit(yes) - logit(no): what candidates are ranked by (a sigmoid saturates at 1.0)
INDICES = "indices"

# Parameters of requests to `<name>_encode` and `<name>_score` (the rerank model sends them; both models are reachable
# from outside too). ADMISSION_GROUP: the request a part belongs to: the rerank model sends a request's chunks under
# one id, and the schedulers count none of them against another (serving/pipeline/scheduler.py). CANCEL_GROUP: a
# request that drops the queued parts of that group and refuses its later ones (the rerank model sends it when its
# caller gives up: Triton 2.51 cannot cancel a BLS request); its tensors are empty placeholders
# (Signature.placeholder_inputs), ignored. Both models also take TRAFFIC_CLASS.
ENCODE_RATIO = "compression_ratio"
ADMISSION_GROUP = "admission_group"
CANCEL_GROUP = "cancel_group"
MAX_GROUP_CHARS = 64

# How passage states travel between the clients, `<name>`, `<name>_encode` and `<name>_score`: states [ΣG, H]
# float16, per-group token counts [ΣG] int32 and groups per passage [N] int32 (`passage_groups`), each request's and
# answer's tensors with a leading dimension of 1; padded once, right before ONNX Runtime, in the scorer. The config's
# `passage_layout` says so; exports from before it (padded [N, G_max, H] states) are refused at load.
RAGGED = "ragged"
RE_EXPORT = ("this reranker was exported by a nestrank from before the one passage-state layout (ragged states); "
             "re-export it: `nestrank export reranker --checkpoint <dir or id> --name <name>`, or `nestrank serve "
             "--reranker <dir or id>`")  # fmt: skip


def encode_signature(hidden: int, max_batch_size: int) -> Signature:
    """One request is one chunk of documents ([1, n]); the dynamic batcher hands up to `max_batch_size` of them to
    one `execute`, whatever their n (ragged batching: the model reads each request on its own), and the model's
    scheduler forms the executions."""
    return Signature(
        inputs=(Tensor(DOCUMENTS, "BYTES", (-1,), ragged_batch=True),),
        outputs=(Tensor(PASSAGE_STATES, "FP16", (-1, hidden)), Tensor(PASSAGE_COUNTS, "INT32", (-1,)),
                 Tensor(PASSAGE_GROUPS, "INT32", (-1,)), Tensor(PASSAGE_FINGERPRINT, "BYTES", (1,))),
        max_batch_size=max_batch_size,
    )  # fmt: skip


def score_signature(hidden: int) -> Signature:
    """One prompt and its candidates a request ([1, ...])."""
    return Signature(
        inputs=(Tensor(DECODER_INPUT_IDS, "INT64", (-1,)), Tensor(PASSAGE_STATES, "FP16", (-1, hidden)),
                Tensor(PASSAGE_COUNTS, "INT32", (-1,)), Tensor(PASSAGE_GROUPS, "INT32", (-1,))),
        outputs=(Tensor(MARGINS, "FP32", (-1,)),),  # logit(yes) - logit(no); the rerank model takes the sigmoid
        max_batch_size=1,
    )  # fmt: skip


def wire_tensors(passages: PassageStates) -> dict[str, np.ndarray]:
    """The passages' tensors without a leading batch dimension (the caller adds the 1 its model takes): states
    [ΣG, H], counts [ΣG], groups [N] (views, no copies)."""
    return {PASSAGE_STATES: passages.states.astype(STATE_DTYPE, copy=False), PASSAGE_COUNTS: passages.counts,
            PASSAGE_GROUPS: passages.lengths.astype(np.int32)}  # fmt: skip


def from_wire(states: np.ndarray | None, counts: np.ndarray | None, groups: np.ndarray | None, ratio: int,
              fingerprint: str = "", ids: Sequence[str] = ()) -> PassageStates:  # fmt: skip
    """Passages from their tensors (no leading batch dimension); ValidationError naming the tensor whose shape does
    not fit. What the values may be (counts, finite) is the receiver's check."""
    if states is None:
        raise ValidationError(PASSAGE_STATES, "missing input tensor")
    if states.ndim != 2 or counts is None or counts.shape != states.shape[:1]:
        got = None if counts is None else list(counts.shape)
        raise ValidationError(PASSAGE_COUNTS, f"shape {got}; expected [{len(states)}], one count per state row")
    if groups is None or groups.ndim != 1 or (groups < 0).any() or int(groups.sum(dtype=np.int64)) != len(states):
        got = None if groups is None else list(groups.shape)
        raise ValidationError(PASSAGE_GROUPS, f"shape {got}; expected [N] groups per passage, >= 0, adding up to "
                              f"the {len(states)} state rows")  # fmt: skip
    offsets = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(groups, out=offsets[1:])
    return PassageStates(states.astype(STATE_DTYPE, copy=False), counts.astype(np.int32, copy=False), offsets,
                         ratio, tuple(ids), fingerprint)  # fmt: skip


def rerank_signature(hidden: int) -> Signature:
    return Signature(
        inputs=(Tensor(QUERY, "BYTES", (1,), optional=True), Tensor(DOCUMENTS, "BYTES", (-1,), optional=True),
                Tensor(PASSAGE_IDS, "BYTES", (-1,), optional=True),
                Tensor(PASSAGE_STATES, "FP16", (-1, hidden), optional=True),
                Tensor(PASSAGE_COUNTS, "INT32", (-1,), optional=True),
                Tensor(PASSAGE_GROUPS, "INT32", (-1,), optional=True)),
        outputs=(Tensor(SCORES, "FP32", (-1,)), Tensor(MARGINS, "FP32", (-1,)), Tensor(INDICES, "INT32", (-1,)),
                 Tensor(DOCUMENTS, "BYTES", (-1,)), Tensor(PASSAGE_IDS, "BYTES", (-1,)),
                 Tensor(PASSAGE_TOKENS, "INT32", (-1,)), Tensor(STORED_BYTES, "INT64", (-1,))),
        max_batch_size=1,
    )  # fmt: skip


def parse_sub_request(parameters: Mapping[str, Any], extra: tuple[str, ...] = ()) -> tuple[str | None, str | None, str]:
    """(admission group, cancel group, traffic class) of a request to `_encode` or `_score`; `extra` names the
    model's own parameters (checked by it)."""
    check_names(parameters, (ADMISSION_GROUP, CANCEL_GROUP, TRAFFIC_CLASS, *extra))
    groups = []
    for name in (ADMISSION_GROUP, CANCEL_GROUP):
        group = parameters.get(name)
        if group is not None and (not isinstance(group, str) or not 0 < len(group) <= MAX_GROUP_CHARS):
            raise ValidationError(name, f"a string of 1..{MAX_GROUP_CHARS} characters, got {shown(group)}")
        groups.append(group)
    if groups[1] is not None and set(parameters) - {CANCEL_GROUP}:
        raise ValidationError(CANCEL_GROUP, "a cancel request carries no other parameter")
    return groups[0], groups[1], traffic_class(parameters)


@dataclass(frozen=True)
class RerankerConfig(RerankLimits):
    """What an exported FBNL reranker serves (all three of its models); stored as their Triton `parameters`. Its
    limits (RerankLimits: `max_candidates`, `max_request_state_bytes`, ...) are keyword fields of it."""

    architecture: str
    hidden_size: int
    yes_token_id: int
    no_token_id: int
    # The model's own templates (its semantics: serving/pipeline/kalm.py has KaLM-Reranker-V1's), written at export.
    prompt_template: str  # holds {instruction} and {query}
    document_template: str  # holds {document}
    default_instruction: str
    ratios: tuple[int, ...] = RATIOS
    default_ratio: int = 4
    max_query_tokens: int = 512  # of the raw query, cut before it enters the prompt (the prompt itself is never cut)
    max_passage_tokens: int = 1024  # of the document template, prefix included
    decoder_start_token_id: int | None = None  # prepended to the prompt (T5); None when the template has <bos>
    passage_special_tokens: bool = False  # the tokenizer's own specials on passages: KaLM no, T5 yes (</s>)
    vocab_size: int = 0  # token ids a prompt may hold (0: not recorded, by exports before it was)
    weights: str = "fp32"
    # Where the passage states live (serving/pipeline/passage_store.py's URLs, passed through as they are); "": the
    # default store, LMDB in the serving user's cache directory. `nestrank serve --passage-store` sets it.
    passage_store: str = ""
    # How passage states travel between the models: RAGGED, the only one. Exports from before it say nothing (they
    # sent padded states) and are refused at load (`from_parameters`): re-export them.
    passage_layout: str = RAGGED
    # serving/pipeline/passage_encoder.py's passage_fingerprint (exports from before it also predate
    # `passage_layout`, so a served config has one)
    passage_fingerprint: str = ""

    def __post_init__(self):
        super().__post_init__()
        if self.architecture not in ("t5gemma2", "t5"):
            raise ValueError(f"architecture must be t5gemma2 or t5, got {self.architecture!r}")
        bad = [r for r in self.ratios if r not in RATIOS]
        if bad or not self.ratios:
            raise ValueError(f"ratios must be a non-empty subset of {RATIOS}, got {self.ratios}")
        if self.default_ratio not in self.ratios:
            raise ValueError(f"default_ratio {self.default_ratio} is not among the exported ratios {self.ratios}")
        for name in ("{instruction}", "{query}"):
            if name not in self.prompt_template:
                raise ValueError(f"prompt_template lacks {name}")
        if "{document}" not in self.document_template:
            raise ValueError("document_template lacks {document}")
        if self.passage_layout != RAGGED:
            raise ValueError(f"passage_layout {self.passage_layout!r}: {RE_EXPORT}")
        if self.max_query_tokens < 1 or self.max_passage_tokens < 2:
            raise ValueError("max_query_tokens >= 1 and max_passage_tokens >= 2")

    @property
    def limits(self) -> RerankLimits:
        return limits_of(self, RerankLimits)

    def state_bytes(self, groups: int) -> int:
        """Bytes of one passage's pooled states and counts: float16 [groups, H] and int32 [groups]."""
        return groups * (2 * self.hidden_size + 4)

    @property
    def encode_parts_per_request(self) -> int:
        """The most `_encode` chunks one rerank request sends (max_candidates in chunks of max_encode_documents):
        the most parts one admission group covers."""
        return -(-self.max_candidates // self.max_encode_documents)

    def candidates_per_request(self, ratio: int) -> int:
        """The most candidates one request may carry at `ratio` (documents or ids): max_candidates, or fewer where
        their longest states would pass max_request_state_bytes. Clients split longer lists into requests of it."""
        longest = self.state_bytes(-(-self.max_passage_tokens // ratio))
        return max(1, min(self.max_candidates, self.max_request_state_bytes // longest))

    def to_parameters(self) -> dict[str, str]:
        return to_parameters(self)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> RerankerConfig:
        if "passage_layout" not in parameters:
            raise ValueError(f"no passage_layout: {RE_EXPORT}")
        return from_parameters(cls, parameters)


# What a request to `<name>` asks for (its `kind` parameter): a ranking (the default); `warm`: encode its documents
# into the passage store (on-demand entries), score nothing; `index`: keep its documents for good under the user's
# ids it sends in `passage_ids` (one per document). Each kind says what its tensors mean; no flag changes that.
RERANK, WARM, INDEX = "rerank", "warm", "index"
REQUEST_KINDS = (RERANK, WARM, INDEX)
LEGACY_WARM = "warm"  # the last release's clients' boolean parameter: `warm=true` (+ passage_ids: an index request)


def request_kind(options: RerankOptions, ids_sent: bool) -> str:
    """The request's kind; a last-release client's `warm=true` is `index` when it sent ids, else `warm`."""
    if options.legacy_warm:
        return INDEX if ids_sent else WARM
    return options.kind


@dataclass(frozen=True)
class RerankOptions:
    compression_ratio: int
    instruction: str
    top_n: int | None = None
    return_documents: bool = False
    truncate: bool = True
    kind: str = RERANK  # REQUEST_KINDS
    legacy_warm: bool = False  # `warm=true` from a last-release client (request_kind reads it)
    states_ratio: int | None = None  # ratio of client-sent passage states (default: compression_ratio)
    passage_fingerprint: str | None = None  # of the model that made client-sent states (PassageStates.fingerprint)
    traffic_class: str = INTERACTIVE  # a ranking's default; warm and index are BULK unless they say otherwise


def parse_rerank_options(parameters: Mapping[str, Any], config: RerankerConfig) -> RerankOptions:
    check_names(parameters, (*(f for f in RerankOptions.__dataclass_fields__ if f != "legacy_warm"), LEGACY_WARM))
    kind = as_str("kind", parameters.get("kind", RERANK))
    if kind not in REQUEST_KINDS:
        raise ValidationError("kind", f"{shown(kind)} is not a request kind; one of {', '.join(REQUEST_KINDS)}")
    legacy_warm = as_bool(LEGACY_WARM, parameters.get(LEGACY_WARM, False))
    if legacy_warm and "kind" in parameters:
        raise ValidationError(LEGACY_WARM, "send kind alone (warm=true is the last release's spelling of it)")
    ratio = as_int("compression_ratio", parameters.get("compression_ratio", config.default_ratio))
    if ratio not in config.ratios:
        exported = ", ".join(map(str, config.ratios))
        raise ValidationError("compression_ratio", f"{ratio} was not exported; choose one of {exported}")
    instruction = as_str("instruction", parameters.get("instruction", config.default_instruction))
    if not instruction.strip():
        raise ValidationError("instruction", "empty; omit it to use the default instruction")
    top_n = parameters.get("top_n")
    if top_n is not None:
        top_n = as_int("top_n", top_n, 1, 2**31 - 1)
    states_ratio = parameters.get("states_ratio")
    if states_ratio is not None:
        states_ratio = as_int("states_ratio", states_ratio, 1, max(RATIOS))
        if ratio % states_ratio:
            raise ValidationError(
                "states_ratio", f"{states_ratio} must divide compression_ratio {ratio} (states re-pool to multiples)"
            )
    fingerprint = parameters.get("passage_fingerprint")
    if fingerprint is not None:
        fingerprint = as_str("passage_fingerprint", fingerprint, 64)
    return RerankOptions(
        passage_fingerprint=fingerprint,
        compression_ratio=ratio,
        kind=kind,
        legacy_warm=legacy_warm,
        states_ratio=states_ratio,
        instruction=instruction,
        top_n=top_n,
        return_documents=as_bool("return_documents", parameters.get("return_documents", False)),
        truncate=as_bool("truncate", parameters.get("truncate", True)),
        traffic_class=traffic_class(parameters, INTERACTIVE if kind == RERANK and not legacy_warm else BULK),
    )
