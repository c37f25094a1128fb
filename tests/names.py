"""Names the tests share (model names and limits), kept out of conftest so that test modules import them plainly."""

MINILM = "all-minilm-l6-v2"
MINILM_INT8 = "all-minilm-l6-v2-int8"
MINILM_LAYERS = "all-minilm-l6-v2-layers"  # exported with the depth ladder 2,3,4,6
MINILM_LADDER = (2, 3, 4, 6)
TINY_DECODER = "tiny-decoder"
KALM = "kalm-shaped"  # T5Gemma 2 with KaLM-Reranker-V1-Nano's widths and vocabulary, 2 + 2 layers, bf16 on disk
KALM_LAYERS = 2
TINY_T5 = "tiny-t5-reranker"
T5_MAX_PASSAGE_TOKENS = 256


def reranker_config(architecture: str = "t5", hidden_size: int = 8, **fields):
    """A RerankerConfig for tests that need no checkpoint: the architecture's templates, small ids."""
    from nestrank.protocol.reranking import RerankerConfig
    from nestrank.serving.pipeline.kalm import templates

    fields = {"yes_token_id": 1, "no_token_id": 2, **templates(architecture), **fields}
    return RerankerConfig(architecture=architecture, hidden_size=hidden_size, **fields)
