import numpy as np
import pytest

from nestrank.clients.embed import EmbedClient, ModelInfo, _check_texts, _options, _Plan
from nestrank.clients.transport import RetryPolicy
from nestrank.errors import UnavailableError, ValidationError
from nestrank.serving.embed_config import EmbedderConfig

INFO = ModelInfo(
    "m", 4, EmbedderConfig(width=8, max_length=16, pooling="mean", dimensions=(8, 4), precisions=("float32", "ubinary"))
)


def test_model_info_from_triton_json():
    config = {"config": {"name": "m", "max_batch_size": 4, "parameters": {
        k: {"string_value": v} for k, v in INFO.config.to_parameters().items()
    }}}  # fmt: skip
    assert ModelInfo.from_model_config(config) == INFO


def test_plan_keeps_input_order_across_sorted_chunks():
    texts = ["x" * n for n in (9, 1, 5, 3, 7, 2, 8)]
    options = _options(INFO, None, "float32", True, None, True, "right")
    plan = _Plan.make(texts, INFO, options, batch_size=None)
    assert all(len(c) <= 4 for c in plan.chunks)
    for chunk in plan.chunks:  # a fake server: row i holds the text's length
        lengths = [len(texts[i]) for i in chunk]
        assert lengths == sorted(lengths)
        plan.place(chunk, np.array([[n] * 8 for n in lengths], dtype=np.float32))
    assert plan.out[:, 0].tolist() == [len(t) for t in texts]


def test_plan_shape_follows_precision():
    options = _options(INFO, 4, "ubinary", True, None, True, "right")
    plan = _Plan.make(["a", "b"], INFO, options, batch_size=1)
    assert plan.out.shape == (2, 1) and plan.out.dtype == np.uint8
    assert len(plan.chunks) == 2


def test_client_side_validation_uses_the_server_rules():
    with pytest.raises(ValidationError, match="dimensions: 5 is not served"):
        _options(INFO, 5, "float32", True, None, True, "right")
    with pytest.raises(ValidationError, match="precision: must be one of float32, ubinary"):
        _options(INFO, None, "int8", True, None, True, "right")
    with pytest.raises(ValidationError, match="dimensions: 0 is not served"):
        _options(INFO, 0, "float32", True, None, True, "right")


def test_texts_must_be_a_non_empty_list():
    with pytest.raises(ValidationError, match="single string"):
        _check_texts("hello")
    with pytest.raises(ValidationError, match="no texts"):
        _check_texts([])


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(attempts=5, initial_backoff_s=0.1, max_backoff_s=0.4)
    assert 0.05 <= policy.backoff_s(0) <= 0.1
    assert 0.2 <= policy.backoff_s(5) <= 0.4
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_unreachable_endpoint_is_a_typed_retryable_error():
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    client = EmbedClient("127.0.0.1:1", retry=RetryPolicy(attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01))
    with pytest.raises(UnavailableError) as err:
        client.info()
    assert err.value.retryable
    client.close()
