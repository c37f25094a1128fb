"""Tiny random checkpoints of real architectures, built offline in a second, for tests and benchmarks.

Norm weights are randomised too: transformers initialises some to zero or one, and parity over a
model whose norms do nothing proves little.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nestrank.texts import PARITY_TEXTS, realistic_texts


def word_level_tokenizer(eos: bool = True):
    """A WordLevel tokenizer over the words the tests use, wrapped for transformers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>", "<bos>"]
    words = sorted({w for t in (*PARITY_TEXTS, *realistic_texts(300, seed=7)) for w in t.lower().split()})
    vocab = {tok: i for i, tok in enumerate(specials + words[:400])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos:
        tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>", bos_token="<bos>"
    )


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() and param.ndim == 1:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))


def tiny_decoder_embedder(out_dir: Path, seed: int = 0) -> Path:
    """A Qwen3-style decoder embedder (last-token pooling, normalised, query prompt), in
    sentence-transformers layout."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tokenizer = word_level_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=2,
    )
    model = Qwen3Model(config).eval()
    randomize_norms(model, seed)
    hf_dir = Path(out_dir) / "hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=96)
    pooling = models.Pooling(64, pooling_mode="lasttoken")
    st = SentenceTransformer(
        modules=[transformer, pooling, models.Normalize()],
        prompts={"query": "instruct: find the answer query: ", "document": ""},
        device="cpu",
    )
    st_dir = Path(out_dir) / "st"
    st.save(str(st_dir))
    return st_dir


RERANK_SPECIALS = ["<pad>", "<unk>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]


def reranker_tokenizer(prefix_bos: bool):
    """WordLevel over the prompt template's words, the test texts, yes/no, and Gemma's chat markers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from nestrank.serving.rerank_config import DOCUMENT_TEMPLATE, KALM_PROMPT_TEMPLATE, PLAIN_PROMPT_TEMPLATE

    required = (KALM_PROMPT_TEMPLATE, PLAIN_PROMPT_TEMPLATE, DOCUMENT_TEMPLATE, "yes no long ok tiny doc",
                "which documents explain how to read a file", *PARITY_TEXTS)  # fmt: skip
    first = sorted({w for t in required for w in t.lower().split()} - {s.lower() for s in RERANK_SPECIALS})
    more = sorted({w for t in realistic_texts(300, seed=7) for w in t.lower().split()} - set(first))
    vocab = {tok: i for i, tok in enumerate(RERANK_SPECIALS + first + more[:600])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(RERANK_SPECIALS)
    if prefix_bos:  # Gemma prepends <bos>
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 3)])
    else:  # T5 appends </s>
        tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def tiny_t5gemma2_reranker(
    out_dir: Path, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, sliding_window: int = 8
) -> Path:
    """KaLM-Reranker-V1's architecture in miniature: sliding + full attention layers, GQA, a tiny SigLIP
    tower (T5Gemma2Encoder always builds one; text-only inputs never reach it), softcapped logits."""
    from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = reranker_tokenizer(prefix_bos=True)
    # Gemma 3's pattern: five sliding-window layers to one full-attention layer (at least one of each).
    layer_types = [
        "full_attention" if (i + 1) % 6 == 0 or i == layers - 1 else "sliding_attention" for i in range(layers)
    ]
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads,
                sliding_window=sliding_window, layer_types=layer_types, max_position_embeddings=4096,
                pad_token_id=0, eos_token_id=2, bos_token_id=3, final_logit_softcapping=30.0)  # fmt: skip
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=16, patch_size=8)  # fmt: skip
    config = T5Gemma2Config(encoder=dict(text_config=text, vision_config=vision, mm_tokens_per_image=4), decoder=text)
    model = T5Gemma2ForConditionalGeneration(config).eval()
    randomize_norms(model, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def tiny_t5_reranker(out_dir: Path, seed: int = 0) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = reranker_tokenizer(prefix_bos=False)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=2)  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    randomize_norms(model, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
