"""Fuzzing the served models over raw gRPC with hypothesis: whatever tensors and parameters arrive, the answer is
never INTERNAL and the server keeps serving."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from tests.names import KALM, MINILM

pytestmark = pytest.mark.slow
OUTCOMES = collections.Counter()  # by status, reported at the end

names = st.sampled_from(["dimensions", "precision", "normalize", "truncate", "truncation_direction", "input_type",
                         "compression_ratio", "top_n", "instruction", "warm", "return_documents", "states_ratio",
                         "temperature"]) | st.text(min_size=1, max_size=20)  # fmt: skip
values = (
    st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.text(max_size=200)
    | st.sampled_from(["float16", "int8", "ubinary", "left", "query", "--128", "²", "9" * 5000, "4", "32", "true"])
)
texts = st.lists(st.binary(max_size=64) | st.text(max_size=64).map(str.encode), max_size=6)


def infer(client, model, inputs, params):
    try:
        client.infer(model, inputs, parameters=params)
        return "OK"
    except InferenceServerException as err:
        assert err.status() != "StatusCode.INTERNAL", err.message()
        return (err.status() or "REFUSED_BY_TRITONCLIENT").rsplit(".", 1)[-1]  # e.g. a reserved parameter name


def bytes_tensor(name, values, shape):
    array = np.array(values, dtype=object).reshape(shape)
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture(scope="module")
def client(grpc_url):
    c = grpcclient.InferenceServerClient(grpc_url)
    yield c
    assert c.is_server_ready()  # still serving after everything it was sent
    c.close()
    print(f"fuzz outcomes by status: {dict(OUTCOMES)}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=texts, params=st.dictionaries(names, values, max_size=4))
def test_embed_never_answers_internal(client, values, params):
    OUTCOMES[infer(client, MINILM, [bytes_tensor("text", values, (len(values), 1))], params)] += 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=texts, documents=texts, ids=texts, params=st.dictionaries(names, values, max_size=4),
    groups=st.integers(0, 4), width=st.sampled_from([640, 64]), count=st.integers(-3, 2**31 - 1),
    value=st.sampled_from([0.0, 1.0, np.nan, np.inf, 6e4]), send=st.sets(st.sampled_from(["q", "d", "i", "s"])),
)  # fmt: skip
def test_rerank_never_answers_internal(client, query, documents, ids, params, groups, width, count, value, send):
    inputs = []
    if "q" in send:
        inputs.append(bytes_tensor("query", query, (1, len(query))))
    if "d" in send:
        inputs.append(bytes_tensor("documents", documents, (1, len(documents))))
    if "i" in send:
        inputs.append(bytes_tensor("passage_ids", ids, (1, len(ids))))
    if "s" in send:
        states = grpcclient.InferInput("passage_states", [1, 2 * groups, width], "FP16")  # ragged: 2 passages
        states.set_data_from_numpy(np.full((1, 2 * groups, width), value, np.float16))
        counts = grpcclient.InferInput("passage_counts", [1, 2 * groups], "INT32")
        counts.set_data_from_numpy(np.full((1, 2 * groups), count, np.int32))
        per_passage = grpcclient.InferInput("passage_groups", [1, 2], "INT32")
        per_passage.set_data_from_numpy(np.full((1, 2), groups if count >= 0 else count, np.int32))
        inputs += [states, counts, per_passage]
    OUTCOMES[infer(client, KALM, inputs, params)] += 1
