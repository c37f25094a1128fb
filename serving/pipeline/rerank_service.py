"""What the `<name>` rerank model does, free of Triton: resolve candidates (documents through the passage store,
stored passage ids, or client-sent states), score them against one prompt, rank by margin; and index documents.

Each call is given its `SubModels`: BLS calls to `_encode` and `_score` bound to the request (its admission group,
traffic class and cancellation) inside Triton (serving/triton/bls.py), in-process sessions in tests and benchmarks.
Bulk work (warm, index, a bulk rerank) is encoded `bulk_encode_documents` at a time, each chunk written through
before the next is sent: interactive work goes between chunks, and a caller that gives up keeps what was done.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from nestrank.protocol.errors import NotFoundError, OverloadedError, ValidationError, retry_hint
from nestrank.protocol.parameters import BULK, shown
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DOCUMENTS,
    INDEX,
    INDICES,
    MARGINS,
    PASSAGE_IDS,
    PASSAGE_TOKENS,
    QUERY,
    RERANK,
    SCORES,
    STORED_BYTES,
    WARM,
    RerankerConfig,
    RerankOptions,
    from_wire,
    parse_rerank_options,
    passage_id,
    request_kind,
)
from nestrank.serving.pipeline.mep import at_ratio
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.scorer import rank, sigmoid, valid_groups
from nestrank.serving.pipeline.tokenization import RerankTokenizer


class SubModels(Protocol):
    """The encode and score calls of one request."""

    def encode(self, documents: list[str], ratio: int) -> PassageStates: ...

    def score(self, prompt: np.ndarray, chunks: list[PassageStates]) -> np.ndarray:
        """Margins logit(yes) - logit(no) of every chunk's passages, in order (the chunks of one request are
        admitted together)."""


MAX_ID_CHARS = 512  # a user's passage id
SHOWN_IDS = 5  # missing ids a NOT_FOUND names


@dataclass(frozen=True)
class Candidates:
    """Exactly one of: documents, passage ids, or passage states sent by the client (read from the wire's layout,
    `from_wire`: their values are checked here)."""

    documents: list[str] | None = None
    passage_ids: list[str] | None = None
    states: PassageStates | None = None

    def count(self) -> int:
        for given in (self.documents, self.passage_ids, self.states):
            if given is not None:
                return len(given)
        return 0


@dataclass(frozen=True)
class RerankRequest:
    """One request to the rerank model, read (`RerankService.read`): its kind, query, candidates and options."""

    kind: str
    query: str | None
    candidates: Candidates
    options: RerankOptions


@dataclass(frozen=True)
class RerankResult:
    indices: np.ndarray  # into the candidates, by descending margin
    scores: np.ndarray  # aligned with indices: sigmoid(margin), float32
    margins: np.ndarray  # aligned with indices: logit(yes) - logit(no), what the order follows
    passage_ids: list[str]  # aligned with indices: content ids, the ids sent, or "" for client-sent states


@dataclass(frozen=True)
class Stored:
    """What a warm or index request did, per document."""

    content_ids: list[str]
    tokens: np.ndarray  # int32: tokens encoded for the document now (0: it was stored already)
    stored_bytes: np.ndarray  # int64: bytes written to the store for it (0: nothing was; skipped)


def _missing(field: str, ids: list[str], total: int, ratio: int) -> NotFoundError:
    first = ", ".join(shown(i, 60) for i in ids[:SHOWN_IDS])
    return NotFoundError(f"{field}: {len(ids)} of {total} ids are not stored for this model at ratio {ratio} or a "
                         f"divisor of it (first: {first}); index them with `nestrank index`, or send the "
                         "documents")  # fmt: skip


class RequestSlots:
    """The requests one rerank model instance works on at once: at most `limit`, bulk ones at most half of them (an
    indexing job never holds every slot). Past it, refused at once: OverloadedError, with a hint the clients wait
    out (interactive callers retry elsewhere or later; `nestrank index` waits for room)."""

    def __init__(self, limit: int):
        self.limit, self.bulk_limit = limit, max(1, limit // 2)
        self.taken = {False: 0, True: 0}  # by `bulk`
        self._lock = threading.Lock()

    def take(self, bulk: bool) -> None:
        with self._lock:
            total = self.taken[False] + self.taken[True]
            if total < self.limit and (not bulk or self.taken[True] < self.bulk_limit):
                self.taken[bulk] += 1
                return
        if bulk and total < self.limit:
            what = f"{self.taken[True]} bulk requests (at most {self.bulk_limit})"
        else:
            what = f"{total} requests (at most {self.limit})"
        raise OverloadedError(f"the rerank model works on {what} already; {retry_hint(1)}")

    def give_back(self, bulk: bool) -> None:
        with self._lock:
            self.taken[bulk] -= 1


class RerankService:
    def __init__(self, config: RerankerConfig, tokenizer: RerankTokenizer, passages: Passages):
        self.config = config
        self.tokenizer = tokenizer
        self.passages = passages

    # -- candidates -------------------------------------------------------------------------------------------

    def check_count(self, field: str, count: int) -> None:
        """The max_candidates check (the clients split longer lists): the rerank model runs it on a tensor's size
        before it decodes the texts, and `rerank` and `store` on what they are given."""
        if count == 0:
            raise ValidationError(field, "no candidates; send at least one")
        if count > self.config.max_candidates:
            raise ValidationError(field, f"{count} exceed max_candidates {self.config.max_candidates}")

    @staticmethod
    def _check_documents(documents: list[str]) -> None:
        """Before any work: an empty document is the request's mistake, not a sub-model's."""
        empty = next((i for i, d in enumerate(documents) if not d), None)
        if empty is not None:
            raise ValidationError(f"documents[{empty}]", "empty string; send at least one character")

    def _encode_and_put(self, texts: dict[str, str], ratio: int, pinned: bool, calls: SubModels, bulk: bool):
        """Encodes {content id: document} and writes the passages through: ({content id: passage}, {content id:
        bytes written}). Bulk work goes `bulk_encode_documents` at a time, each chunk stored before the next."""
        ids, documents = list(texts), list(texts.values())
        size = self.config.bulk_encode_documents if bulk else max(1, len(ids))
        found, written = {}, {}
        for start in range(0, len(ids), size):
            chunk_ids = ids[start : start + size]
            encoded = calls.encode(documents[start : start + size], ratio)
            written.update(zip(chunk_ids, self.passages.put(chunk_ids, encoded, pinned=pinned)))
            scored = self.passages.as_stored(encoded)  # int8 states score now as they will once read back
            found.update((cid, scored.subset([k])) for k, cid in enumerate(chunk_ids))
        return found, written

    def _from_documents(self, documents: list[str], ratio: int, calls: SubModels,
                        bulk: bool) -> tuple[PassageStates, list[str]]:  # fmt: skip
        """Stored passages where the store has them; the rest encoded now and written through."""
        ids = [passage_id(d) for d in documents]
        found = self.passages.get(ids, ratio, strict=False)
        missing = {cid: d for cid, d in zip(ids, documents) if cid not in found}
        found.update(self._encode_and_put(missing, ratio, False, calls, bulk)[0])
        return PassageStates.concat([found[cid] for cid in ids]), ids

    def _from_ids(self, passage_ids: list[str], ratio: int) -> PassageStates:
        content_ids = self.passages.resolve(passage_ids)
        unknown = [pid for pid, cid in zip(passage_ids, content_ids) if cid is None]
        if unknown:
            raise _missing("passage_ids", unknown, len(passage_ids), ratio)
        found = self.passages.get(content_ids, ratio, strict=True)
        missing = [pid for pid, cid in zip(passage_ids, content_ids) if cid not in found]
        if missing:
            raise _missing("passage_ids", missing, len(passage_ids), ratio)
        return PassageStates.concat([found[cid] for cid in content_ids])

    def _from_states(self, sent: PassageStates, options: RerankOptions) -> PassageStates:
        stored, hidden = options.states_ratio or options.compression_ratio, self.config.hidden_size
        if sent.width != hidden:
            raise ValidationError("passage_states", f"width {sent.width}; expected [groups, {hidden}]")
        most, lengths = -(-self.config.max_passage_tokens // stored), sent.lengths
        if lengths.max(initial=0) > most:
            raise ValidationError("passage_states", f"{int(lengths.max())} groups exceed {most}: max_passage_tokens "
                                  f"{self.config.max_passage_tokens} at ratio {stored}")  # fmt: skip
        if (sent.counts < 0).any() or (sent.counts > stored).any():
            raise ValidationError("passage_counts", f"each group holds 0..{stored} tokens at ratio {stored}")
        empty = np.flatnonzero(valid_groups(sent) == 0)
        if empty.size:
            raise ValidationError(f"passage_counts[{int(empty[0])}]", "no valid group; a passage needs tokens")
        if not np.isfinite(sent.states).all():
            raise ValidationError("passage_states", "holds NaN or infinity")
        mine = self.config.passage_fingerprint
        if not options.passage_fingerprint:
            raise ValidationError("passage_fingerprint", "the passage states carry no passage fingerprint (saved by "
                                  "an older nestrank); re-encode the documents with encode_passages against this "
                                  f"model (passage fingerprint {mine})")  # fmt: skip
        if options.passage_fingerprint != mine:
            raise ValidationError("passage_fingerprint", f"the states were made by the model with passage "
                                  f"fingerprint {shown(options.passage_fingerprint)}, and this model's is {mine}: "
                                  "re-encode the documents with encode_passages against this model")  # fmt: skip
        passages = dataclasses.replace(sent, ratio=stored, fingerprint=mine)
        return at_ratio(passages, options.compression_ratio)

    def _check_state_bytes(self, field: str, candidates: Candidates, options: RerankOptions) -> None:
        """Before any work: the passage states this request would hold stay within max_request_state_bytes."""
        limit, ratio = self.config.max_request_state_bytes, options.compression_ratio
        if candidates.states is not None:  # as sent
            held = candidates.states.states.nbytes + candidates.states.counts.nbytes
            if held > limit:
                raise ValidationError("passage_states", f"{held / 2**20:.1f} MiB of states exceed "
                                      f"max_request_state_bytes {limit / 2**20:.0f} MiB; send fewer per request (the "
                                      "clients split them)")  # fmt: skip
            return
        most = self.config.candidates_per_request(ratio)
        if candidates.count() > most:
            longest = self.config.state_bytes(-(-self.config.max_passage_tokens // ratio))
            raise ValidationError(field, f"{candidates.count()} candidates at ratio {ratio} may hold up to "
                                  f"{candidates.count() * longest / 2**20:.0f} MiB of passage states, over "
                                  f"max_request_state_bytes {limit / 2**20:.0f} MiB: send at most {most} per request "
                                  "at this ratio (the clients split for you), or use a coarser ratio")  # fmt: skip

    def score_chunks(self, passages: PassageStates) -> list[tuple[int, int]]:
        """(start, end) of the calls to the scorer: at most score_chunk_bytes of ragged states each (the one chunker
        between here and the scorer, which sorts and pads its own runs)."""
        sizes = passages.lengths * (2 * passages.width + 4)  # float16 rows and int32 counts, as they travel
        chunks, start = [], 0
        while start < len(passages):
            end, held = start + 1, int(sizes[start])
            while end < len(passages) and held + int(sizes[end]) <= self.config.score_chunk_bytes:
                held += int(sizes[end])
                end += 1
            chunks.append((start, end))
            start = end
        return chunks

    # -- requests ---------------------------------------------------------------------------------------------

    def read(self, parameters: dict, texts: dict[str, list[str] | None],
             wire: tuple[np.ndarray | None, ...]) -> RerankRequest:  # fmt: skip
        """A request from what it sent: its parameters, its texts by tensor name (query, documents, passage_ids;
        None where it sent none) and its passage-state tensors (states, counts, groups). What needs no work is
        checked here; the rest before any work (`rerank`, `store`)."""
        options = parse_rerank_options(parameters, self.config)
        documents, ids = texts[DOCUMENTS], texts[PASSAGE_IDS]
        kind = request_kind(options, ids is not None)
        if kind != RERANK:
            return RerankRequest(kind, None, Candidates(documents or [], ids), options)
        query = texts[QUERY]
        if not query or len(query) != 1:
            raise ValidationError(QUERY, "send exactly one query")
        ratio = options.states_ratio or options.compression_ratio  # their fingerprint: checked by `rerank`
        states = None if wire[0] is None else from_wire(*wire, ratio)
        return RerankRequest(kind, query[0], Candidates(documents, ids, states), options)

    def work(self, request: RerankRequest, calls: SubModels) -> RerankResult | Stored:
        if request.kind != RERANK:  # warm: documents only; index: documents and the user's ids for them
            candidates = request.candidates
            return self.store(request.kind, candidates.documents, candidates.passage_ids, request.options, calls)
        return self.rerank(request.query, request.candidates, request.options, calls)

    @staticmethod
    def outputs(request: RerankRequest, done: RerankResult | Stored) -> dict[str, np.ndarray]:
        """The answer's tensors, each with the leading dimension of 1 (BYTES as object arrays)."""

        def texts(values):
            return np.array([[v.encode() for v in values]], dtype=object)

        if request.kind != RERANK:
            return {PASSAGE_IDS: texts(done.content_ids), PASSAGE_TOKENS: done.tokens[None],
                    STORED_BYTES: done.stored_bytes[None]}  # fmt: skip
        out = {SCORES: done.scores[None], MARGINS: done.margins[None], INDICES: done.indices[None],
               PASSAGE_IDS: texts(done.passage_ids)}  # fmt: skip
        if request.options.return_documents and request.candidates.documents is not None:
            out[DOCUMENTS] = texts([request.candidates.documents[i] for i in done.indices])
        return out

    def store(self, kind: str, documents: list[str], user_ids: list[str] | None, options: RerankOptions,
              calls: SubModels) -> Stored:  # fmt: skip
        """A warm or index request: encodes what is not stored yet and writes it through. `warm` (documents only),
        as the documents path does: on-demand entries. `index` (one user id per document), each document kept for
        good under its user id; a document whose id already names its text and whose states are stored is skipped,
        so reruns are idempotent."""
        if kind == WARM and user_ids is not None:
            raise ValidationError("passage_ids", "a warm request takes documents only; send kind=index to keep "
                                  "them under your ids")  # fmt: skip
        if kind == INDEX and user_ids is None:
            raise ValidationError("passage_ids", "an index request sends one id per document")
        if kind not in (WARM, INDEX):
            raise ValidationError("kind", f"{kind!r} stores nothing; send kind=warm or kind=index")
        self.check_count("documents", len(documents))
        self._check_documents(documents)
        ratio = options.compression_ratio
        self._check_state_bytes("documents", Candidates(documents=documents), options)
        ids = [passage_id(d) for d in documents]
        unique_ids = list(dict.fromkeys(ids))
        pinned = user_ids is not None
        if pinned:
            self._check_user_ids(user_ids, documents)
            names = dict(zip(user_ids, ids))
            named = dict(zip(names, self.passages.aliases(list(names))))
            have = {cid for cid, there in zip(unique_ids, self.passages.pin(unique_ids, ratio)) if there}
        else:
            have = set(self.passages.get(unique_ids, ratio, strict=False))
        missing = {c: d for c, d in zip(ids, documents) if c not in have}
        encoded, written = self._encode_and_put(missing, ratio, pinned, calls, options.traffic_class == BULK)
        alias_bytes = {}
        if pinned:
            renamed = [u for u, cid in names.items() if named[u] != cid]
            alias_bytes = dict(zip(renamed, self.passages.set_aliases(renamed, [names[u] for u in renamed])))
        tokens, stored_bytes, done = [], [], set()
        for row, cid in enumerate(ids):
            first = cid not in done  # a document sent twice is encoded and written once
            done.add(cid)
            tokens.append(int(encoded[cid].counts.sum()) if first and cid in encoded else 0)
            alias = alias_bytes.pop(user_ids[row], 0) if pinned else 0
            stored_bytes.append((written.get(cid, 0) if first else 0) + alias)
        return Stored(ids, np.array(tokens, np.int32), np.array(stored_bytes, np.int64))

    def _check_user_ids(self, user_ids: list[str], documents: list[str]) -> None:
        if len(user_ids) != len(documents):
            raise ValidationError("passage_ids", f"{len(user_ids)} ids for {len(documents)} documents; send one each")
        seen: dict[str, str] = {}
        for i, (uid, doc) in enumerate(zip(user_ids, documents)):
            if not uid or len(uid) > MAX_ID_CHARS:
                raise ValidationError(f"passage_ids[{i}]", f"an id has 1..{MAX_ID_CHARS} characters, got {len(uid)}")
            if seen.setdefault(uid, doc) != doc:
                raise ValidationError(f"passage_ids[{i}]", f"{shown(uid)} appears twice with different documents")

    def rerank(self, query: str, candidates: Candidates, options: RerankOptions, calls: SubModels) -> RerankResult:
        given = [n for n, v in (("documents", candidates.documents), ("passage_ids", candidates.passage_ids),
                                ("passage_states", candidates.states)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise ValidationError(
                "documents", f"send exactly one of documents, passage_ids, passage_states; got {given}"
            )
        n = candidates.count()
        self.check_count(given[0], n)
        if candidates.documents is not None:
            self._check_documents(candidates.documents)
        self._check_state_bytes(given[0], candidates, options)
        prompt = self.tokenizer.encode_prompt(query, options.instruction, options.truncate)  # validates the query first
        ratio = options.compression_ratio
        ids = [""] * n
        if candidates.documents is not None:
            passages, ids = self._from_documents(candidates.documents, ratio, calls, options.traffic_class == BULK)
        elif candidates.passage_ids is not None:
            passages, ids = self._from_ids(candidates.passage_ids, ratio), list(candidates.passage_ids)
        else:
            passages = self._from_states(candidates.states, options)
        margins = calls.score(prompt, [passages.slice(start, end) for start, end in self.score_chunks(passages)])
        order = rank(margins, options.top_n)
        return RerankResult(order.astype(np.int32), sigmoid(margins[order]), margins[order].astype(np.float32),
                            [ids[i] for i in order])  # fmt: skip
