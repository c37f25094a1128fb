"""KaLM-Reranker-V1 scoring written out from its definition (the release's `kalm_reranker.py` and
`kalm_reranker_utils.py`), independently of nestrank: `transformers`' AutoTokenizer and
AutoModelForSeq2SeqLM in float32, one (query, document) pair at a time, no padding.

Tests compare what nestrank serves with this, so that nestrank's reading of the official code is checked
against the official code's own terms rather than against itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
INSTRUCTION = "Given a query, retrieve documents that answer the query."


class OfficialKaLM:
    def __init__(self, checkpoint: str | Path, query_max_length: int = 512, max_length: int = 1024):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        # As the official code on CPU: float32 whatever the checkpoint stores, the default attention.
        self.model = AutoModelForSeq2SeqLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
        self.query_max_length = query_max_length
        self.max_length = max_length
        self.yes = self._one_token("yes")
        self.no = self._one_token("no")
        self._states: dict[str, torch.Tensor] = {}

    def _one_token(self, word: str) -> int:
        (token,) = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        return token

    def decoder_ids(self, query: str, instruction: str = INSTRUCTION) -> list[int]:
        cut = self.tokenizer(query, add_special_tokens=False, truncation=True, max_length=self.query_max_length)
        query = self.tokenizer.decode(cut["input_ids"], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = (
            f"<bos><start_of_turn>user\n{SYSTEM}\n\n<Instruct>: {instruction}\n<Query>: {query}<end_of_turn>\n"
            "<start_of_turn>model\n\n\n\n"
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def passage_ids(self, document: str) -> list[int]:
        encoded = self.tokenizer(f"<Document>: {document}", add_special_tokens=False, truncation=True,
                                 max_length=self.max_length)  # fmt: skip
        return encoded["input_ids"]

    @torch.inference_mode()
    def _encoded(self, document: str) -> torch.Tensor:
        if document not in self._states:
            ids = torch.tensor([self.passage_ids(document)])
            self._states[document] = self.model.get_encoder()(input_ids=ids).last_hidden_state[0]
        return self._states[document]

    @torch.inference_mode()
    def scores(self, query: str, documents: list[str], chunk_size: int, instruction: str = INSTRUCTION,
               stored_as: torch.dtype | None = None) -> np.ndarray:  # fmt: skip
        """The official scores; `stored_as` rounds the pooled passage states to that dtype first, as nestrank holds
        them (float16), to check everything else exactly."""
        from transformers.modeling_outputs import BaseModelOutput

        decoder = torch.tensor([self.decoder_ids(query, instruction)])
        out = []
        for document in documents:
            states = self._encoded(document)
            chunks = [states[start : start + chunk_size].mean(dim=0) for start in range(0, len(states), chunk_size)]
            pooled = torch.stack(chunks)[None]
            if stored_as is not None:
                pooled = pooled.to(stored_as).float()
            logits = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=pooled),
                attention_mask=torch.ones(pooled.shape[:2], dtype=torch.long),
                decoder_input_ids=decoder,
                logits_to_keep=1,  # unpadded: the last position is the last non-pad one (and 262k-wide rows are slow)
            ).logits[0, -1]
            pair = torch.stack([logits[self.yes], logits[self.no]]).float()
            out.append(float(torch.softmax(pair, dim=0)[0]))
        return np.asarray(out)
