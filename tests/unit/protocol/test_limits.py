"""One limits config per model kind: each limit's name and default (written out here), validation naming the field
and the limit, exports from before the renames still read, the flag syntax, and the README's table."""

import json
from pathlib import Path

import pytest

from nestrank.protocol.embedding import EmbedderConfig
from nestrank.protocol.limits import EmbedLimits, RerankLimits, markdown_table, parse_limit
from nestrank.protocol.parameters import ModelInfo
from nestrank.protocol.reranking import RerankerConfig
from nestrank.serving.pipeline.kalm import templates

EMBEDDER = dict(width=8, max_length=16, pooling="mean")
RERANKER = dict(architecture="t5", hidden_size=8, yes_token_id=1, no_token_id=2, **templates("t5"))


def test_each_limit_has_one_name_and_its_default():
    assert vars(EmbedLimits()) == {"max_batch_tokens": 16384, "max_queue_wait_s": 60.0, "max_run_tokens": 8192,
                                   "max_run_sequences": 64, "intra_op_threads": 0}  # fmt: skip
    assert vars(RerankLimits()) == {"max_candidates": 1000, "max_request_state_bytes": 512 << 20,
                                    "max_encode_documents": 32, "bulk_encode_documents": 8,
                                    "encode_batch_tokens": 16384, "max_requests_in_flight": 32,
                                    "score_batch_tokens": 65536, "score_batch_delay_s": 0.005,
                                    "score_chunk_bytes": 64 << 20,
                                    "max_run_tokens": 8192, "max_run_sequences": 64, "max_score_run_candidates": 256,
                                    "passage_cache_bytes": 512 << 20, "max_queue_wait_s": 30.0,
                                    "intra_op_threads": 0}  # fmt: skip
    assert EmbedderConfig(**EMBEDDER).limits == EmbedLimits()
    assert RerankerConfig(**RERANKER, max_candidates=7).limits == RerankLimits(max_candidates=7)


@pytest.mark.parametrize(
    "kind, field, value, message",
    [
        (EmbedLimits, "max_batch_tokens", 0, "max_batch_tokens must be >= 1, got 0"),
        (EmbedLimits, "max_queue_wait_s", 0, "max_queue_wait_s must be > 0, got 0"),
        (EmbedLimits, "max_run_sequences", 2.5, "max_run_sequences must be an integer, got 2.5"),
        (EmbedLimits, "intra_op_threads", -1, "intra_op_threads must be >= 0, got -1"),
        (RerankLimits, "max_candidates", True, "max_candidates must be an integer, got True"),
        (RerankLimits, "score_chunk_bytes", 0, "score_chunk_bytes must be >= 1, got 0"),
        (RerankLimits, "max_queue_wait_s", "30", "max_queue_wait_s must be a number, got '30'"),
    ],
)
def test_limits_are_validated_on_construction_naming_the_field(kind, field, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        kind(**{field: value})
    config_type, required = (EmbedderConfig, EMBEDDER) if kind is EmbedLimits else (RerankerConfig, RERANKER)
    with pytest.raises(ValueError, match=f"^{message}$"):
        config_type(**required, **{field: value})


def test_an_embedders_batches_must_hold_its_longest_text():
    with pytest.raises(ValueError, match="max_run_tokens must be >= max_length 16, got 8"):
        EmbedderConfig(**EMBEDDER, max_run_tokens=8)
    with pytest.raises(ValueError, match="max_batch_tokens must be >= max_length 16, got 15"):
        EmbedderConfig(**EMBEDDER, max_batch_tokens=15)


def test_a_model_exported_before_the_renames_reads_its_limits_under_todays_names():
    old = {**EmbedderConfig(**EMBEDDER).to_parameters(), "max_tokens_per_batch": "4096", "max_sequences_per_batch": "8"}
    for name in ("max_run_tokens", "max_run_sequences"):
        del old[name]
    config = EmbedderConfig.from_parameters(old)
    assert (config.max_run_tokens, config.max_run_sequences) == (4096, 8)


def test_info_shows_every_limit_as_served():
    parameters = RerankerConfig(**RERANKER, max_candidates=200, passage_cache_bytes=0).to_parameters()
    assert json.loads(parameters["max_candidates"]) == 200 and json.loads(parameters["max_queue_wait_s"]) == 30.0
    info = ModelInfo.read({"name": "k", "parameters": {k: {"string_value": v} for k, v in parameters.items()}},
                          RerankerConfig)  # fmt: skip
    assert info.max_candidates == 200 and info.limits == RerankLimits(max_candidates=200, passage_cache_bytes=0)


@pytest.mark.parametrize(
    "name, text, value",
    [("passage_cache_bytes", "2GiB", 2 << 30), ("score_chunk_bytes", "64 MiB", 64 << 20),
     ("max_candidates", "200", 200), ("passage_cache_bytes", "0", 0), ("max_queue_wait_s", "2.5", 2.5),
     ("max_queue_wait_s", "30", 30.0)],
)  # fmt: skip
def test_flag_values_become_parameters(name, text, value):
    assert json.loads(parse_limit(name, text)) == value


def test_bad_flag_values_name_the_limit():
    with pytest.raises(ValueError, match="unknown limit 'max_candidate'; known: max_batch_tokens, "):
        parse_limit("max_candidate", "1")
    with pytest.raises(ValueError, match=r"max_candidates: '2GiB' is not an integer$"):
        parse_limit("max_candidates", "2GiB")  # sizes only where the limit is a size
    with pytest.raises(ValueError, match=r"passage_cache_bytes: 'lots' is not an integer \(units: KiB"):
        parse_limit("passage_cache_bytes", "lots")


def test_the_readme_lists_every_limit_with_its_default():
    readme = (Path(__file__).resolve().parents[3] / "docs" / "limits.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "docs/limits.md: paste limits.markdown_table() into the limits section"
    assert "| `max_queue_wait_s` | 60 s | 30 s | the longest a request may wait" in markdown_table()
    assert "| `passage_cache_bytes` |  | 512 MiB | the rerank model's first level" in markdown_table()
