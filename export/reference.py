"""FBNL scoring as the official KaLM-Reranker-V1 code defines it (`kalm_reranker.py` / `kalm_reranker_utils.py`),
on the `transformers` tokenizer and model: the export's parity gate and the benchmark's PyTorch path.

- passage: `document_template` tokenized with `add_special_tokens` as the config says (False for KaLM),
  truncated to `max_passage_tokens`, right-padded;
- query: tokenized without special tokens, cut to `max_query_tokens`, decoded with special tokens kept and
  no clean-up, put into the prompt template, which is tokenized without special tokens (never cut);
- encoder → mask-aware mean over chunks of `ratio` tokens (count clamped to ≥ 1; a chunk is valid if any
  token is) → decoder with the pooled states, their mask and the decoder mask (padded to a multiple of 8);
- score = softmax([logit_yes, logit_no])[0] at the last non-pad decoder position, in float32.

Pairs are length-sorted and batched like `KaLMReranker.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nestrank.protocol.reranking import RerankerConfig


def decoder_text(tokenizer, config: RerankerConfig, query: str, instruction: str) -> str:
    ids = tokenizer(query, add_special_tokens=False, truncation=True, max_length=config.max_query_tokens)["input_ids"]
    query = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return config.prompt_template.format(instruction=instruction, query=query)


def pool_chunks(hidden: torch.Tensor, mask: torch.Tensor, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, width = hidden.shape
    chunks = -(-length // ratio)
    pad = chunks * ratio - length
    hidden = torch.nn.functional.pad(hidden, (0, 0, 0, pad)).view(batch, chunks, ratio, width)
    mask = torch.nn.functional.pad(mask, (0, pad)).view(batch, chunks, ratio)
    sums = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=2)
    return sums / mask.sum(dim=2).clamp(min=1).unsqueeze(-1), (mask.sum(dim=2) > 0).to(mask.dtype)


def _decoder_batch(tokenizer, config: RerankerConfig, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(texts, padding=True, pad_to_multiple_of=8, add_special_tokens=False, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if config.decoder_start_token_id is not None:  # T5 convention: the decoder starts from its start token
        start = torch.full((ids.shape[0], 1), config.decoder_start_token_id, dtype=ids.dtype)
        ids, mask = torch.cat([start, ids], dim=1), torch.cat([torch.ones_like(start), mask], dim=1)
    return ids, mask


@torch.inference_mode()
def reference_scores(
    model,
    tokenizer,
    config: RerankerConfig,
    query: str,
    documents: Sequence[str],
    ratios: Sequence[int],
    instruction: str | None = None,
    batch_size: int = 32,
    full_logits: bool = True,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{ratio: (scores, margins)} in document order. The encoder runs once per batch for every ratio (its
    output does not depend on the chunk size). `full_logits=False` asks the model's own head for the scored
    decoder position only (same numbers, without the 262,144-wide rows the official code computes)."""
    from transformers.modeling_outputs import BaseModelOutput

    device = next(model.parameters()).device  # the CPU, or CUDA as the official code runs there
    tokenizer.padding_side = "right"  # the final-position indexing assumes right padding, as in training
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    instruction = config.default_instruction if instruction is None else instruction
    prompt = decoder_text(tokenizer, config, query, instruction)
    order = np.argsort([-(len(query) + len(d)) for d in documents], kind="stable")
    results = {r: (np.empty(len(documents), np.float32), np.empty(len(documents), np.float32)) for r in ratios}
    yes, no = config.yes_token_id, config.no_token_id
    for start in range(0, len(documents), batch_size):
        chunk = order[start : start + batch_size]
        passages = tokenizer([config.document_template.format(document=documents[i]) for i in chunk],
                             padding=True, truncation=True, max_length=config.max_passage_tokens,
                             add_special_tokens=config.passage_special_tokens,
                             return_tensors="pt").to(device)  # fmt: skip
        states = model.get_encoder()(input_ids=passages["input_ids"], attention_mask=passages["attention_mask"],
                                     return_dict=True).last_hidden_state  # fmt: skip
        decoder_ids, decoder_mask = (t.to(device) for t in _decoder_batch(tokenizer, config, [prompt] * len(chunk)))
        last = decoder_mask.sum(dim=1) - 1
        extra = {}
        if not full_logits and config.architecture == "t5gemma2":
            if len(set(last.tolist())) != 1:
                raise AssertionError("one prompt per call: every row ends at the same position")
            extra = {"logits_to_keep": last[:1]}
            last = torch.zeros_like(last)
        for ratio in ratios:
            pooled, pooled_mask = pool_chunks(states, passages["attention_mask"], ratio)
            logits = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=pooled),
                attention_mask=pooled_mask,
                decoder_input_ids=decoder_ids,
                decoder_attention_mask=decoder_mask,
                return_dict=True,
                **extra,
            ).logits
            final = logits[torch.arange(len(chunk), device=device), last]
            pair = torch.stack([final[:, yes], final[:, no]], dim=-1).float()
            if not torch.isfinite(pair).all():
                raise FloatingPointError("non-finite yes/no logits (the official code refuses float16 for this)")
            scores, margins = results[ratio]
            scores[chunk] = torch.softmax(pair, dim=-1)[:, 0].cpu().numpy()
            margins[chunk] = (pair[:, 0] - pair[:, 1]).cpu().numpy()
    return results
