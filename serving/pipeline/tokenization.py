"""Tokenization (Rust `tokenizers`) with an explicit truncation rule, and padding: one core for every model.

`TextTokenizer` is the core: a tokenizer.json with a token limit, texts cut to a character cap before tokenizing,
and `truncate=False` refusing an over-long text by name and limit. The embedder uses it as it is, the HTTP front
counts usage tokens with it, and `RerankTokenizer` builds the official KaLM passage and prompt tokenization on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from nestrank.protocol.embedding import TRUNCATION_DIRECTIONS
from nestrank.protocol.errors import ValidationError
from nestrank.protocol.reranking import RerankerConfig

TOKENIZER_FILE = "tokenizer.json"
CUT_HINT = "(send truncate=true to cut it)"


def char_limit(tokenizer: Tokenizer, max_tokens: int) -> int:
    """Characters that hold at most `max_tokens` tokens: each token spans at most the longest vocabulary entry,
    plus room for what tokenizers drop around it (spaces, control characters). Texts are cut to this *before*
    tokenizing, so a 5 MB text costs what its first tokens cost; only a text made mostly of dropped characters
    could lose tokens it would otherwise have kept."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=16)
    return max_tokens * (longest + 8)


def cut(text: str, limit: int | None, direction: str = "right") -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] if direction == "right" else text[-limit:]


class TextTokenizer:
    """Turns texts into token-id arrays no longer than `max_length` (the tokenizer's special tokens included when
    `special_tokens`), or uncut when `max_length` is None.

    `truncate=False` refuses over-long texts instead of cutting them, naming the text (`field[i]`, or `field` alone
    when `indexed` is false) and the limit (`limit_name`)."""

    def __init__(self, tokenizer_json: str | Path, max_length: int | None, field: str = "text", *,
                 special_tokens: bool = True, limit_name: str = "max_length"):  # fmt: skip
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self._json = Path(tokenizer_json).read_text(encoding="utf-8")
        self.max_length = max_length
        self.field = field
        self.special_tokens = special_tokens
        self.limit_name = limit_name
        self._by_direction: dict[str, Tokenizer] = {}
        self.pad_id = pad_token_id(self._tokenizer("right"))
        self.max_chars = None if max_length is None else char_limit(self._tokenizer("right"), max_length)

    def _tokenizer(self, direction: str) -> Tokenizer:
        # Truncation is state of a Tokenizer object, so keep one per direction.
        if direction not in self._by_direction:
            tok = Tokenizer.from_str(self._json)
            tok.no_padding()
            if self.max_length is None:
                tok.no_truncation()
            else:
                tok.enable_truncation(self.max_length, direction=direction)
            self._by_direction[direction] = tok
        return self._by_direction[direction]

    def count_tokens(self, text: str) -> int:
        """Untruncated length (only for error messages)."""
        tok = Tokenizer.from_str(self._json)
        tok.no_truncation()
        tok.no_padding()
        return len(tok.encode(text, add_special_tokens=self.special_tokens).ids)

    def encodings(self, texts: Sequence[str], *, truncate: bool = True, direction: str = "right",
                  indexed: bool = True) -> list[Encoding]:  # fmt: skip
        if direction not in TRUNCATION_DIRECTIONS:
            raise ValidationError(
                "truncation_direction", f"must be one of {', '.join(TRUNCATION_DIRECTIONS)}, got {direction!r}"
            )
        name = (lambda i: f"{self.field}[{i}]") if indexed else (lambda i: self.field)
        limit = f"{self.limit_name} {self.max_length}"
        if not truncate and self.max_chars is not None:
            for i, text in enumerate(texts):
                if len(text) > self.max_chars:
                    raise ValidationError(name(i), f"{len(text)} characters exceed {self.max_chars}, more than "
                                          f"{limit} tokens can hold {CUT_HINT}")  # fmt: skip
        encodings = self._tokenizer(direction).encode_batch(
            [cut(t, self.max_chars, direction) for t in texts], add_special_tokens=self.special_tokens
        )
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    raise ValidationError(name(i), f"{self.count_tokens(texts[i])} tokens exceed {limit} {CUT_HINT}")
        return encodings

    def encode(self, texts: Sequence[str], *, truncate: bool = True, direction: str = "right") -> list[np.ndarray]:
        return [
            np.asarray(e.ids, dtype=np.int64) for e in self.encodings(texts, truncate=truncate, direction=direction)
        ]

    def decode(self, ids: Sequence[int]) -> str:
        """Special tokens kept, no clean-up: what the official KaLM code does with a cut query."""
        return self._tokenizer("right").decode(list(ids), skip_special_tokens=False)


class RerankTokenizer:
    """The official KaLM-Reranker-V1 tokenization, on the tokenizer the checkpoint's `AutoTokenizer` builds.

    Passages: the document template, with the tokenizer's special tokens only if the config says so (KaLM:
    no), cut at max_passage_tokens. Query: tokenized without special tokens, cut at max_query_tokens, decoded
    (special tokens kept, no clean-up) and put into the prompt template, which carries its own special tokens
    and is never cut: the answer position stays where training put it.
    """

    def __init__(self, tokenizer_json: str | Path, config: RerankerConfig):
        self.config = config
        self.passages = TextTokenizer(tokenizer_json, config.max_passage_tokens, "documents",
                                      special_tokens=config.passage_special_tokens,
                                      limit_name="max_passage_tokens")  # fmt: skip
        self.queries = TextTokenizer(tokenizer_json, config.max_query_tokens, "query", special_tokens=False,
                                     limit_name="max_query_tokens")  # fmt: skip
        self.prompts = TextTokenizer(tokenizer_json, None, "prompt", special_tokens=False)
        self.pad_id = self.passages.pad_id

    def encode_documents(self, documents: Sequence[str], field: str = "documents") -> list[np.ndarray]:
        for i, doc in enumerate(documents):
            if not doc:
                raise ValidationError(f"{field}[{i}]", "empty string; send at least one character")
        # Cut before templating: a 5 MB document costs what its first max_passage_tokens tokens cost.
        template, limit = self.config.document_template, self.passages.max_chars
        return self.passages.encode([template.format(document=cut(d, limit)) for d in documents])

    def encode_prompt(self, query: str, instruction: str, truncate: bool = True) -> np.ndarray:
        if not query.strip():
            raise ValidationError("query", "empty; send the query text")
        (encoded,) = self.queries.encodings([query], truncate=truncate, indexed=False)
        text = self.config.prompt_template.format(instruction=instruction, query=self.queries.decode(encoded.ids))
        start = [] if self.config.decoder_start_token_id is None else [self.config.decoder_start_token_id]
        return np.asarray(start + self.prompts.encodings([text])[0].ids, dtype=np.int64)


def pad_token_id(tok: Tokenizer) -> int:
    for name in ("[PAD]", "<pad>", "<|endoftext|>", "</s>"):
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id
    return 0


def pad(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest: (input_ids [B, L] int64, attention_mask [B, L] int64)."""
    longest = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask
