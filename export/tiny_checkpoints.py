"""Tiny random checkpoints of real architectures, built offline in a second, for tests and benchmarks.

Norm weights are randomised too: transformers initialises some to zero or one, and parity over a
model whose norms do nothing proves little.
"""

from __future__ import annotations

import json
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


def randomize_norms(model: torch.nn.Module, seed: int = 0, center: float = 1.0) -> None:
    """Norm scales of `center` ± 30%. Gemma's RMSNorm multiplies by (1 + weight): pass center=0 there, or
    every norm (the q/k norms too) doubles and a deep random model turns chaotic, its scores moved by
    float rounding alone."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() and param.ndim == 1:
                param.copy_(center + 0.3 * torch.randn(param.shape, generator=gen))


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

    from nestrank.serving.pipeline.kalm import DOCUMENT_TEMPLATE, KALM_PROMPT_TEMPLATE, PLAIN_PROMPT_TEMPLATE

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


# Gemma's reserved ids (pad, eos, bos, unk, mask; chat markers at 105/106; image markers near the top).
GEMMA_SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": 105,
                  "<end_of_turn>": 106, "<start_of_image>": 255999, "<end_of_image>": 256000}  # fmt: skip
GEMMA_VOCAB = 262144


def gemma_like_tokenizer(trained_tokens: int = 6000):
    """A tokenizer built like Gemma 3's: byte-fallback BPE over "▁"-joined words, <bos> prepended by the
    post-processor, Gemma's special ids, and a vocabulary of 262,144 (unused ids filled), saved so that
    transformers loads it as `GemmaTokenizer`, the class the real checkpoints name."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from nestrank.serving.pipeline.kalm import DOCUMENT_TEMPLATE, KALM_PROMPT_TEMPLATE

    corpus = [*realistic_texts(3000, seed=7), *PARITY_TEXTS, KALM_PROMPT_TEMPLATE, DOCUMENT_TEMPLATE]
    words = [" " + w for text in corpus for w in text.split()]  # merges stay inside words, as in Gemma
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=trained_tokens, special_tokens=["<unk>"], initial_alphabet=[],
                                  show_progress=False)  # fmt: skip
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.train_from_iterator(words + ["yes", "no"] * 200, trainer)  # the answer words are single tokens
    trained = json.loads(bpe.to_str())["model"]
    ordered = [t for t in sorted(trained["vocab"], key=trained["vocab"].get) if t != "<unk>"]

    vocab = dict(GEMMA_SPECIALS)
    free = (i for i in range(GEMMA_VOCAB) if i not in GEMMA_SPECIALS.values())
    for token in [*byte_tokens, *ordered]:
        vocab.setdefault(token, next(free))
    for i in free:  # ids the test texts never reach, as most of a real 262k vocabulary
        vocab[f"<unused{i}>"] = i
    model = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                                            for m in trained["merges"]],
                       unk_token="<unk>", byte_fallback=True, fuse_unk=True)  # fmt: skip
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>")  # fmt: skip


# T5Gemma 2 text shapes. Nano is the published t5gemma-2-270m-270m config (KaLM-Reranker-V1-Nano's base);
# Small and Large take the widths of Gemma 3 1B and 4B, which T5Gemma 2 1b-1b and 4b-4b adapt.
KALM_SHAPES = {
    "nano": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                 num_key_value_heads=1, sliding_window=512),
    "small": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                  num_key_value_heads=1, sliding_window=512),
    "large": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                  num_key_value_heads=4, sliding_window=1024),
}  # fmt: skip


def kalm_shaped_reranker(out_dir: Path, shape: str = "nano", layers: int | None = None, seed: int = 0,
                         tokenizer=None) -> Path:  # fmt: skip
    """A random KaLM-Reranker-V1-shaped checkpoint: T5Gemma 2 with the real vocabulary (262,144), widths,
    heads, GQA, head_dim 256, query_pre_attn_scalar 256, 5 sliding-window layers to 1 full layer with
    their own rope parameters, tied embeddings, no soft-capping, a (small) vision tower, saved in
    bfloat16 like the real ones, with a Gemma-like tokenizer. `layers` cuts the depth on both sides
    (each layer type kept at least once); every width stays real."""
    from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration

    torch.manual_seed(seed)
    dims = dict(KALM_SHAPES[shape])
    depth = layers or dims.pop("num_hidden_layers")
    dims.pop("num_hidden_layers", None)
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(depth)]
    if "full_attention" not in layer_types:
        layer_types[-1] = "full_attention"
    text = dict(vocab_size=GEMMA_VOCAB, num_hidden_layers=depth, layer_types=layer_types, head_dim=256,
                query_pre_attn_scalar=256, max_position_embeddings=32768, hidden_activation="gelu_pytorch_tanh",
                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10_000}},
                final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=True,
                pad_token_id=0, eos_token_id=1, bos_token_id=2, **dims)  # fmt: skip
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=32, patch_size=8, vision_use_head=False)  # fmt: skip
    config = T5Gemma2Config(encoder=dict(text_config=text, vision_config=vision, mm_tokens_per_image=16),
                            decoder=text, tie_word_embeddings=True)  # fmt: skip
    model = T5Gemma2ForConditionalGeneration(config).eval()
    randomize_norms(model, seed, center=0.0)
    with torch.no_grad():  # the end-of-image token has its own embedding; make it count
        model.get_encoder().text_model.embed_tokens.eoi_embedding.normal_(0, 0.05)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer = tokenizer or gemma_like_tokenizer()
    tokenizer.save_pretrained(out_dir)
    _name_tokenizer_class(Path(out_dir), "GemmaTokenizer")
    return Path(out_dir)


def _name_tokenizer_class(checkpoint: Path, name: str) -> None:
    path = checkpoint / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["tokenizer_class"] = name
    path.write_text(json.dumps(data, indent=2))


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
