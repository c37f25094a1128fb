"""What the `<name>` rerank model does, free of Triton: resolve candidates (documents through the passage store,
stored passage ids, or client-sent states), score them against one prompt, rank; and index documents.

`encode` and `score` are injected: BLS calls inside Triton, in-process sessions in tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nestrank.protocol.errors import NotFoundError, ValidationError
from nestrank.protocol.parameters import shown
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import INDEX, WARM, RerankerConfig, RerankOptions, passage_id
from nestrank.serving.pipeline.mep import at_ratio
from nestrank.serving.pipeline.passage_tiers import Passages
from nestrank.serving.pipeline.scorer import rank, sigmoid, valid_groups
from nestrank.serving.pipeline.tokenization import RerankTokenizer

EncodeFn = Callable[[list[str], int], PassageStates]
ScoreFn = Callable[[np.ndarray, PassageStates], np.ndarray]
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
class RerankResult:
    indices: np.ndarray  # into the candidates, best first
    scores: np.ndarray  # aligned with indices
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


class RerankService:
    def __init__(self, config: RerankerConfig, tokenizer: RerankTokenizer, passages: Passages,
                 encode: EncodeFn, score: ScoreFn):  # fmt: skip
        self.config = config
        self.tokenizer = tokenizer
        self.passages = passages
        self.encode = encode
        self.score = score

    # -- candidates -------------------------------------------------------------------------------------------

    def _check_documents(self, documents: list[str]) -> None:
        if len(documents) > self.config.max_candidates:
            raise ValidationError("documents", f"{len(documents)} exceed max_candidates {self.config.max_candidates}")
        for i, doc in enumerate(documents):
            if not doc:
                raise ValidationError(f"documents[{i}]", "empty string; send at least one character")

    def _encode_and_put(self, texts: dict[str, str], ratio: int, pinned: bool):
        """Encodes {content id: document} and writes the passages through: ({content id: passage}, {content id:
        bytes written})."""
        if not texts:
            return {}, {}
        encoded = self.encode(list(texts.values()), ratio)
        written = self.passages.put(list(texts), encoded, pinned=pinned)
        scored = self.passages.as_stored(encoded)  # int8 states score now as they will once read back
        return {cid: scored.subset([k]) for k, cid in enumerate(texts)}, dict(zip(texts, written))

    def _from_documents(self, documents: list[str], ratio: int) -> tuple[PassageStates, list[str]]:
        """Stored passages where the store has them; the rest encoded now and written through."""
        self._check_documents(documents)
        ids = [passage_id(d) for d in documents]
        found = self.passages.get(ids, ratio, strict=False)
        encoded, _ = self._encode_and_put({cid: d for cid, d in zip(ids, documents) if cid not in found}, ratio, False)
        found.update(encoded)
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

    def _score_in_chunks(self, prompt: np.ndarray, passages: PassageStates) -> np.ndarray:
        """Margins, the candidates sent to the scorer in calls of at most score_chunk_bytes of ragged states (the
        one chunker between here and the scorer, which sorts and pads its own runs)."""
        margins = np.empty(len(passages), dtype=np.float32)
        sizes = passages.lengths * (2 * passages.width + 4)  # float16 rows and int32 counts, as they travel
        start = 0
        while start < len(passages):
            end, held = start + 1, int(sizes[start])
            while end < len(passages) and held + int(sizes[end]) <= self.config.score_chunk_bytes:
                held += int(sizes[end])
                end += 1
            margins[start:end] = self.score(prompt, passages.slice(start, end))
            start = end
        return margins

    # -- requests ---------------------------------------------------------------------------------------------

    def store(self, kind: str, documents: list[str], ratio: int, user_ids: list[str] | None = None) -> Stored:
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
        if not documents:
            raise ValidationError("documents", "nothing to store; send at least one document")
        self._check_documents(documents)
        self._check_state_bytes("documents", Candidates(documents=documents), RerankOptions(ratio, ""))
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
        encoded, written = self._encode_and_put({c: d for c, d in zip(ids, documents) if c not in have}, ratio, pinned)
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

    def rerank(self, query: str, candidates: Candidates, options: RerankOptions) -> RerankResult:
        given = [n for n, v in (("documents", candidates.documents), ("passage_ids", candidates.passage_ids),
                                ("passage_states", candidates.states)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise ValidationError(
                "documents", f"send exactly one of documents, passage_ids, passage_states; got {given}"
            )
        n = candidates.count()
        if n == 0:
            raise ValidationError(given[0], "no candidates; send at least one")
        if n > self.config.max_candidates:
            raise ValidationError(given[0], f"{n} candidates exceed max_candidates {self.config.max_candidates}")
        self._check_state_bytes(given[0], candidates, options)
        prompt = self.tokenizer.encode_prompt(query, options.instruction, options.truncate)  # validates the query first
        ratio = options.compression_ratio
        ids = [""] * n
        if candidates.documents is not None:
            passages, ids = self._from_documents(candidates.documents, ratio)
        elif candidates.passage_ids is not None:
            passages, ids = self._from_ids(candidates.passage_ids, ratio), list(candidates.passage_ids)
        else:
            passages = self._from_states(candidates.states, options)
        scores = sigmoid(self._score_in_chunks(prompt, passages))  # the one sigmoid: every model answers margins
        order = rank(scores, options.top_n)
        return RerankResult(order.astype(np.int32), scores[order].astype(np.float32), [ids[i] for i in order])
