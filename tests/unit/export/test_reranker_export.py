"""Both FBNL architectures compile with fp32 parity at every ratio; the gate's inputs are what they claim."""

import json

import numpy as np
import pytest

from nestrank.export.reranker import answer_token_ids, parity_documents
from nestrank.export.triton_config import read_config, string_parameters
from nestrank.serving.rerank_config import RerankerConfig
from nestrank.serving.reranker import RerankTokenizer
from tests.conftest import RERANK_MAX_PASSAGE_TOKENS, TINY_KALM, TINY_T5


@pytest.mark.parametrize("name, architecture", [(TINY_KALM, "t5gemma2"), (TINY_T5, "t5")])
def test_parity_at_every_ratio(reranker_exports, name, architecture):
    result = reranker_exports[name]
    assert result.config.architecture == architecture
    assert set(result.parity.max_score_diff) == {1, 2, 4, 8, 16, 32}
    assert max(result.parity.max_score_diff.values()) <= 1e-4
    # The three models, each config parseable and carrying the same reranker config.
    assert [d.name for d in result.model_dirs] == [f"{name}_encode", f"{name}_score", name]
    for model_dir in result.model_dirs:
        config = read_config(model_dir)
        assert config.name == model_dir.name
        assert RerankerConfig.from_parameters(string_parameters(config)) == result.config


def test_parity_documents_cover_short_odd_and_over_limit_lengths(reranker_exports):
    export = reranker_exports[TINY_KALM]
    tokenizer = RerankTokenizer(export.model_dirs[0] / "1" / "tokenizer.json", export.config)
    lengths = [len(ids) for ids in tokenizer.encode_documents(parity_documents(RERANK_MAX_PASSAGE_TOKENS))]
    assert min(lengths) < 4  # shorter than the default ratio
    assert any(n % 4 for n in lengths)  # not a multiple of it
    assert max(lengths) == RERANK_MAX_PASSAGE_TOKENS  # cut at the limit


def test_yes_and_no_come_from_the_tokenizer(reranker_exports, tiny_t5gemma2_dir):
    yes, no = answer_token_ids(tiny_t5gemma2_dir / "tokenizer.json")
    vocab = json.loads((tiny_t5gemma2_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert (yes, no) == (vocab["yes"], vocab["no"])
    assert reranker_exports[TINY_KALM].config.yes_token_id == yes


def test_a_tokenizer_without_yes_is_refused(tmp_path, tiny_t5gemma2_dir):
    data = json.loads((tiny_t5gemma2_dir / "tokenizer.json").read_text())
    del data["model"]["vocab"]["yes"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'yes'"):
        answer_token_ids(tmp_path / "tokenizer.json")


def test_t5_prompt_starts_with_the_decoder_start_token(reranker_exports):
    export = reranker_exports[TINY_T5]
    tokenizer = RerankTokenizer(export.model_dirs[0] / "1" / "tokenizer.json", export.config)
    prompt = tokenizer.encode_prompt("a query", "an instruction")
    assert prompt[0] == export.config.decoder_start_token_id
    assert np.issubdtype(prompt.dtype, np.integer)
