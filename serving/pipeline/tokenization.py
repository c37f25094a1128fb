"""Tokenization with an explicit truncation rule (Rust `tokenizers`), and padding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from nestrank.protocol.embedding import TRUNCATION_DIRECTIONS
from nestrank.protocol.errors import ValidationError


def char_limit(tokenizer: Tokenizer, max_tokens: int) -> int:
    """Characters that hold at most `max_tokens` tokens: each token spans at most the longest vocabulary entry,
    plus room for what tokenizers drop around it (spaces, control characters). Texts are cut to this *before*
    tokenizing, so a 5 MB text costs what its first tokens cost; only a text made mostly of dropped characters
    could lose tokens it would otherwise have kept."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=16)
    return max_tokens * (longest + 8)


def cut(text: str, limit: int, direction: str = "right") -> str:
    return text if len(text) <= limit else (text[:limit] if direction == "right" else text[-limit:])


class TextTokenizer:
    """Turns texts into token-id arrays no longer than `max_length` (special tokens included).

    `truncate=False` refuses over-long texts instead of cutting them, naming the text and the limit.
    """

    def __init__(self, tokenizer_json: str | Path, max_length: int, field: str = "text"):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self._json = Path(tokenizer_json).read_text(encoding="utf-8")
        self.max_length = max_length
        self.field = field
        self._by_direction: dict[str, Tokenizer] = {}
        self.pad_id = pad_token_id(self._tokenizer("right"))
        self.max_chars = char_limit(self._tokenizer("right"), max_length)

    def _tokenizer(self, direction: str) -> Tokenizer:
        # Truncation is state of a Tokenizer object, so keep one per direction.
        if direction not in self._by_direction:
            tok = Tokenizer.from_str(self._json)
            tok.no_padding()
            tok.enable_truncation(self.max_length, direction=direction)
            self._by_direction[direction] = tok
        return self._by_direction[direction]

    def count_tokens(self, text: str) -> int:
        """Untruncated length, special tokens included (only for error messages)."""
        tok = Tokenizer.from_str(self._json)
        tok.no_truncation()
        tok.no_padding()
        return len(tok.encode(text).ids)

    def encode(self, texts: Sequence[str], *, truncate: bool = True, direction: str = "right") -> list[np.ndarray]:
        if direction not in TRUNCATION_DIRECTIONS:
            raise ValidationError(
                "truncation_direction", f"must be one of {', '.join(TRUNCATION_DIRECTIONS)}, got {direction!r}"
            )
        if not truncate:
            for i, text in enumerate(texts):
                if len(text) > self.max_chars:
                    raise ValidationError(
                        f"{self.field}[{i}]", f"{len(text)} characters exceed {self.max_chars}, more than "
                        f"max_length {self.max_length} tokens can hold (send truncate=true to cut it)",
                    )  # fmt: skip
        encodings = self._tokenizer(direction).encode_batch([cut(t, self.max_chars, direction) for t in texts])
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    raise ValidationError(
                        f"{self.field}[{i}]",
                        f"{self.count_tokens(texts[i])} tokens exceed max_length {self.max_length} "
                        "(send truncate=true to cut it)",
                    )
        return [np.asarray(enc.ids, dtype=np.int64) for enc in encodings]


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
