"""Both FBNL architectures compile with fp32 parity at every ratio, on a checkpoint shaped like the real
KaLM-Reranker-V1 (bf16 on disk, vocabulary 262,144, a Gemma-like tokenizer that prepends <bos>); the
tokenization follows the official rules; graphs carry only what the score needs."""

import json
import math

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open

from nestrank.export.checkpoint import resolve_checkpoint
from nestrank.export.reranker import (
    INT8_STATES_MAX_SCORE_DIFF,
    answer_token_ids,
    load_checkpoint,
    load_tokenizer,
    parity_cases,
    parity_documents,
)
from nestrank.export.triton_config import read_config, string_parameters
from nestrank.protocol.reranking import RerankerConfig
from nestrank.serving.pipeline.passage_encoder import passage_fingerprint
from nestrank.serving.pipeline.reranker import FBNLReranker
from nestrank.serving.pipeline.scorer import sigmoid
from nestrank.serving.pipeline.tokenization import RerankTokenizer
from tests.names import KALM, T5_MAX_PASSAGE_TOKENS, TINY_T5

pytestmark = pytest.mark.slow  # exports two rerankers (the session's shared fixture)


@pytest.fixture(scope="module")
def kalm(reranker_exports):
    export = reranker_exports[KALM]
    return export, RerankTokenizer(export.model_dirs[0] / "1" / "tokenizer.json", export.config)


@pytest.mark.parametrize("name, architecture", [(KALM, "t5gemma2"), (TINY_T5, "t5")])
def test_three_models_each_carrying_the_config_and_its_passage_fingerprint(reranker_exports, name, architecture):
    result = reranker_exports[name]
    assert result.config.architecture == architecture
    assert set(result.parity.exact) == set(result.parity.served) == set(result.parity.int8) == {1, 2, 4, 8, 16, 32}
    assert 0 < max(result.parity.int8.values()) <= INT8_STATES_MAX_SCORE_DIFF  # int8 states: measured, and gated
    assert "int8 passage states against float16: r=1: " in str(result.parity)
    encode_dir = result.model_dirs[0] / "1"
    assert result.config.passage_fingerprint == passage_fingerprint(encode_dir, result.config)
    # The three models, each config parseable and carrying the same reranker config.
    assert [d.name for d in result.model_dirs] == [f"{name}_encode", f"{name}_score", name]
    for model_dir in result.model_dirs:
        config = read_config(model_dir)
        assert config.name == model_dir.name
        assert RerankerConfig.from_parameters(string_parameters(config)) == result.config


@pytest.mark.parametrize("ratio", [1, 4, 32])
def test_the_exported_pipeline_scores_like_the_official_code(reranker_exports, official_kalm, ratio):
    """The exporter's gate, checked from outside: the exported files in-process against an independent transcription
    of the official code, exactly with float32 passage states, and within float16 rounding as served."""
    export = reranker_exports[KALM]
    reranker = FBNLReranker.from_repository(export.model_dirs[0].parent, KALM, export.config)
    documents = parity_documents(export.config.max_passage_tokens)
    query = "which documents explain how to read a file"
    prompt = reranker.tokenizer.encode_prompt(query, export.config.default_instruction)
    exact = sigmoid(reranker.scorer.margins(prompt, reranker.encoder.encode(documents, ratio, dtype=np.float32)))
    served = sigmoid(reranker.scorer.margins(prompt, reranker.encoder.encode(documents, ratio)))
    official = official_kalm.scores(query, documents, ratio)
    assert np.abs(exact - official).max() <= 1e-5
    assert np.abs(served - official_kalm.scores(query, documents, ratio, stored_as=torch.float16)).max() <= 1e-5
    drift = np.abs(served - official).max()
    assert 0 < drift <= 1e-3  # what float16 passage states cost (README), and that they are float16


def test_the_passage_fingerprint_follows_what_passages_depend_on(reranker_exports, tmp_path):
    import dataclasses
    import shutil

    export = reranker_exports[TINY_T5]
    encode_dir = tmp_path / "encode"
    shutil.copytree(export.model_dirs[0] / "1", encode_dir)
    base = passage_fingerprint(encode_dir, export.config)
    assert base == export.config.passage_fingerprint  # deterministic: the same files, the same fingerprint
    changed = {passage_fingerprint(encode_dir, dataclasses.replace(export.config, **field))
               for field in ({"max_passage_tokens": 128}, {"document_template": "Doc: {document}"},
                             {"passage_special_tokens": False})}  # fmt: skip
    weights = encode_dir / "encoder.onnx.data"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    changed.add(passage_fingerprint(encode_dir, export.config))
    (encode_dir / "tokenizer.json").write_text((encode_dir / "tokenizer.json").read_text().replace("yes", "yes!", 1))
    changed.add(passage_fingerprint(encode_dir, export.config))
    assert len(changed) == 5 and base not in changed


def test_the_test_checkpoint_is_shaped_and_stored_like_the_real_one(kalm_dir):
    config = json.loads((kalm_dir / "config.json").read_text())
    text = config["decoder"]
    assert (text["vocab_size"], text["hidden_size"], text["intermediate_size"]) == (262144, 640, 2048)
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (4, 1, 256)
    assert (text["query_pre_attn_scalar"], text["sliding_window"], text["final_logit_softcapping"]) == (256, 512, None)
    assert set(text["layer_types"]) == {"sliding_attention", "full_attention"}
    assert config["encoder"]["vision_config"]["model_type"] == "siglip_vision_model"
    with safe_open(kalm_dir / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}
    tokenizer = load_tokenizer(kalm_dir)
    assert type(tokenizer).__name__ == "GemmaTokenizer"
    assert tokenizer("hello")["input_ids"][0] == tokenizer.bos_token_id  # its post-processor adds <bos>


def test_bf16_checkpoints_load_in_float32_like_the_official_code(kalm_dir):
    model, _ = load_checkpoint(kalm_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    scale = model.get_encoder().text_model.embed_tokens.embed_scale
    assert scale.dtype == torch.float32 and float(scale) == pytest.approx(math.sqrt(640), rel=1e-7)


def test_passages_carry_no_special_tokens_and_are_cut_with_their_prefix(kalm, kalm_dir):
    export, tokenizer = kalm
    official = load_tokenizer(kalm_dir)
    documents = parity_documents(export.config.max_passage_tokens)
    ours = tokenizer.encode_documents(documents)
    for document, ids in zip(documents, ours):
        expected = official(f"<Document>: {document}", add_special_tokens=False, truncation=True, max_length=1024)
        assert ids.tolist() == expected["input_ids"]
    assert official.bos_token_id not in {int(ids[0]) for ids in ours}
    lengths = [len(ids) for ids in ours]
    assert min(lengths) < 16  # shorter than the coarsest ratios
    assert any(n % 4 for n in lengths)  # not a multiple of it
    assert any(512 < n < 1024 for n in lengths)  # past the sliding window
    assert max(lengths) == 1024  # cut at the limit, prefix included


def test_the_query_is_cut_before_it_enters_the_prompt(kalm, official_kalm):
    export, tokenizer = kalm
    long_query = parity_cases(export.config)[1].query
    assert len(official_kalm.tokenizer(long_query, add_special_tokens=False)["input_ids"]) > 512
    for query in ("which file", long_query):
        prompt = tokenizer.encode_prompt(query, "Given a query, retrieve documents that answer the query.")
        assert prompt.tolist() == official_kalm.decoder_ids(query)
    prompt = tokenizer.encode_prompt(long_query, "an instruction")
    assert len(prompt) > 512  # the template around the query is never cut
    tail = official_kalm.tokenizer("<end_of_turn>\n<start_of_turn>model\n\n\n\n", add_special_tokens=False)
    assert prompt[-len(tail["input_ids"]) :].tolist() == tail["input_ids"]
    with pytest.raises(Exception, match=r"query: \d+ tokens exceed max_query_tokens 512"):
        tokenizer.encode_prompt(long_query, "an instruction", truncate=False)


def test_yes_and_no_come_from_the_tokenizer(kalm, kalm_dir):
    tokenizer = load_tokenizer(kalm_dir)
    yes, no = answer_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens([yes, no]) == ["yes", "no"]
    assert (kalm[0].config.yes_token_id, kalm[0].config.no_token_id) == (yes, no)


def test_a_tokenizer_that_splits_yes_is_refused(tmp_path, tiny_t5_dir):
    data = json.loads((tiny_t5_dir / "tokenizer.json").read_text())
    del data["model"]["vocab"]["yes"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_t5_dir / name).exists():
            (tmp_path / name).write_text((tiny_t5_dir / name).read_text())
    with pytest.raises(ValueError, match="'yes'"):
        answer_token_ids(load_tokenizer(tmp_path))


def test_t5_keeps_its_own_conventions(reranker_exports):
    export = reranker_exports[TINY_T5]
    tokenizer = RerankTokenizer(export.model_dirs[0] / "1" / "tokenizer.json", export.config)
    prompt = tokenizer.encode_prompt("a query", "an instruction")
    assert prompt[0] == export.config.decoder_start_token_id
    assert export.config.passage_special_tokens
    (ids,) = tokenizer.encode_documents(["a document"])
    assert ids[-1] == 2  # </s>, as T5 encoders are trained
    lengths = [len(ids) for ids in tokenizer.encode_documents(parity_documents(T5_MAX_PASSAGE_TOKENS))]
    assert max(lengths) == T5_MAX_PASSAGE_TOKENS


def test_the_scorer_holds_two_answer_rows_not_the_vocabulary(reranker_exports):
    export = reranker_exports[KALM]
    graph = onnx.load(str(export.model_dirs[1] / "1" / "scorer.onnx"), load_external_data=False)
    vocab_sized = [t.name for t in graph.graph.initializer if t.dims and t.dims[0] == 262144]
    assert len(vocab_sized) == 1  # the decoder's input embedding; no 262,144-row output projection
    two_rows = [t for t in graph.graph.initializer if list(t.dims) in ([2, 640], [640, 2])]
    assert len(two_rows) == 1
    assert [o.name for o in graph.graph.output] == ["margins"]  # the sigmoid is the rerank service's, once


def test_both_graphs_map_one_embedding_file(reranker_exports):
    encode_dir, score_dir = (d / "1" for d in reranker_exports[KALM].model_dirs[:2])
    embedding = encode_dir / "embedding.data"
    assert embedding.stat().st_size == 262144 * 640 * 4
    assert embedding.stat().st_ino == (score_dir / "embedding.data").stat().st_ino  # one file, hard-linked
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in (*encode_dir.iterdir(), *score_dir.iterdir()))
    for graph in (encode_dir / "encoder.onnx", score_dir / "scorer.onnx"):  # the layers' weights beside each graph
        assert 0 < graph.with_name(graph.name + ".data").stat().st_size < embedding.stat().st_size


def test_model_ids_resolve_from_a_local_cache_offline(tmp_path, monkeypatch, tiny_t5_dir):
    cache = tmp_path / "hub"
    snapshot = cache / "models--KaLM-Embedding--KaLM-Reranker-V1-Test" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for path in tiny_t5_dir.iterdir():
        (snapshot / path.name).symlink_to(path)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_checkpoint("KaLM-Embedding/KaLM-Reranker-V1-Test") == snapshot
    assert resolve_checkpoint(tiny_t5_dir) == tiny_t5_dir
    with pytest.raises(FileNotFoundError, match="KaLM-Reranker-V1-Nano: not in .*HF_HUB_OFFLINE is set"):
        resolve_checkpoint("KaLM-Embedding/KaLM-Reranker-V1-Nano")
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        resolve_checkpoint(str(tmp_path / "missing"))


def test_reduced_precision_writes_external_data_when_needed(tmp_path, monkeypatch, reranker_exports):
    """fp16 and int8 conversions of a graph past the limit keep their weights in `<graph>.data` (the limit is
    lowered here so that the tiny T5 scorer crosses it) and still run."""
    import shutil

    import onnxruntime as ort

    from nestrank.export import precision

    source = reranker_exports[TINY_T5].model_dirs[1] / "1"
    monkeypatch.setattr(precision, "EXTERNAL_DATA_BYTES", 1024)
    feeds = {"decoder_input_ids": np.array([[0, 5, 6]], np.int64), "prompt_lengths": np.array([3], np.int64),
             "passage_states": np.random.default_rng(0).standard_normal((1, 3, 64), dtype=np.float32),
             "passage_mask": np.ones((1, 3), np.int64)}  # fmt: skip
    expected = ort.InferenceSession(str(source / "scorer.onnx")).run(["margins"], feeds)[0]
    for target in ("fp16", "int8"):
        folder = tmp_path / target
        shutil.copytree(source, folder)
        precision.convert_precision(folder / "scorer.onnx", target)
        assert (folder / "scorer.onnx.data").stat().st_size > 0
        got = ort.InferenceSession(str(folder / "scorer.onnx")).run(["margins"], feeds)[0]
        np.testing.assert_allclose(got, expected, atol=0.5)
