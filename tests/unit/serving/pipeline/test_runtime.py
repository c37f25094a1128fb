import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nestrank.serving.pipeline.runtime import pick_providers
from tests.names import reranker_config


@pytest.mark.parametrize(
    "available, expected",
    [
        (["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (["CPUExecutionProvider", "CUDAExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
         ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    ],
)  # fmt: skip
def test_gpu_providers_first_and_cpu_always_last(monkeypatch, available, expected):
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    assert pick_providers() == expected
    assert pick_providers(("CPUExecutionProvider", "CUDAExecutionProvider")) == [
        p for p in expected[::-1] if p != "TensorrtExecutionProvider"
    ]


def test_unavailable_providers_are_reported():
    with pytest.raises(RuntimeError, match="none of"):
        pick_providers(("NoSuchExecutionProvider",))


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """input_ids [batch, length] int64 → token_states [batch, length, 4] float32, a real ONNX file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    table = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["token_states"])],
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("token_states", TensorProto.FLOAT, ["batch", "length", 4])],
        [helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel())],
    )
    path = tmp_path_factory.mktemp("graph") / "1" / "model.onnx"
    path.parent.mkdir()
    # IR 8: what every supported onnxruntime reads (a newer onnx than the runtime writes IR it refuses, seen on a GPU)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path, table


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime build has CUDA: tests/unit/serving/test_gpu.py covers it")  # fmt: skip
def test_a_session_on_this_cpu_build_runs_on_the_cpu(tiny_graph):
    import numpy as np

    from nestrank.serving.pipeline.runtime import create_session

    path, table = tiny_graph
    session = create_session(path, providers=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                              "CPUExecutionProvider"))  # fmt: skip
    assert session.get_providers() == ["CPUExecutionProvider"] and session.device is None  # the fallback, for real
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    np.testing.assert_array_equal(session.run(["token_states"], {"input_ids": ids})[0], table[ids])


def test_io_binding_returns_what_a_plain_run_does(tiny_graph):
    """The GPU path (bind inputs, outputs on the device, one copy back), exercised with the CPU as the device."""
    import numpy as np

    from nestrank.serving.pipeline.runtime import create_session, run_bound

    path, _ = tiny_graph
    session = create_session(path)
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::-1]  # not contiguous: binding must copy it first
    (bound,) = run_bound(session.session, ["token_states"], {"input_ids": ids}, "cpu")
    np.testing.assert_array_equal(bound, session.run(["token_states"], {"input_ids": ids})[0])


def test_tensorrt_keeps_engines_and_timing_cache_under_the_version(tmp_path):
    from nestrank.serving.pipeline.runtime import ShapeProfile, tensorrt_options

    profile = ShapeProfile.token_batches(("input_ids", "attention_mask"), 64, 256, 8192)
    options = tensorrt_options(tmp_path / "1", profile, fp16=True)
    assert options["trt_engine_cache_path"] == str(tmp_path / "1" / "trt_engines")
    assert options["trt_timing_cache_path"] == str(tmp_path / "1" / "trt_timing")
    assert (
        options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == options["trt_fp16_enable"] == "True"
    )
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert options["trt_profile_opt_shapes"] == "input_ids:64x128,attention_mask:64x128"
    assert options["trt_profile_max_shapes"] == "input_ids:64x256,attention_mask:64x256"
    assert tensorrt_options(tmp_path, None, fp16=False)["trt_fp16_enable"] == "False"
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile((("input_ids", (1, 1), (8, 300), (64, 256)),))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 512), min_size=1, max_size=300), max_batch=st.integers(1, 128),
       tokens=st.integers(512, 16384))  # fmt: skip
def test_every_bucket_shape_lies_inside_the_tensorrt_profile(lengths, max_batch, tokens):
    """So TensorRT never meets a shape outside its profile, and never rebuilds an engine while serving."""
    from nestrank.serving.pipeline.batching import length_buckets
    from nestrank.serving.pipeline.runtime import ShapeProfile

    ((_, low, _, high),) = ShapeProfile.token_batches(("input_ids",), max_batch, 512, tokens).shapes
    for bucket in length_buckets(lengths, max_batch, tokens):
        shape = (len(bucket), max(lengths[i] for i in bucket))
        assert all(a <= s <= b for a, s, b in zip(low, shape, high)), (shape, low, high)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 600), st.integers(1, 1024)), min_size=1, max_size=600),
       ratios=st.sampled_from([(1, 4), (4, 8), (8,)]), max_passage_tokens=st.sampled_from([256, 1024]),
       score_batch_tokens=st.sampled_from([1024, 16384]))  # fmt: skip
def test_every_scorer_run_lies_inside_its_tensorrt_profile(rows, ratios, max_passage_tokens, score_batch_tokens):
    """Rows of several requests (prompt tokens, pooled groups) cut as Scorer.core cuts them."""
    from nestrank.serving.pipeline.batching import padded_buckets
    from nestrank.serving.pipeline.scorer import Scorer

    config = reranker_config("t5gemma2", 64, ratios=ratios, default_ratio=ratios[-1],
                             max_passage_tokens=max_passage_tokens, score_batch_tokens=score_batch_tokens)  # fmt: skip
    shapes = {name: (low, high) for name, low, _, high in Scorer.profile(config).shapes}
    most_groups, longest_prompt = shapes["passage_mask"][1][1], shapes["decoder_input_ids"][1][1]
    prompts = [min(p, longest_prompt) for p, _ in rows]  # what check_score_inputs lets through
    groups = [min(g, most_groups) for _, g in rows]  # pooled passages hold at most that many groups
    budget = max(config.score_batch_tokens, max(p + g for p, g in zip(prompts, groups)))  # as Scorer.core cuts them
    for run in padded_buckets(prompts, groups, config.max_score_run_candidates, budget):
        size, prompt, most = len(run), max(prompts[i] for i in run), max(groups[i] for i in run)
        for name, shape in (("passage_mask", (size, most)), ("passage_states", (size, most, 64)),
                            ("decoder_input_ids", (size, prompt)), ("prompt_lengths", (size,))):  # fmt: skip
            low, high = shapes[name]
            assert all(a <= s <= b for a, s, b in zip(low, shape, high)), (name, shape, low, high)
