"""`ModelInfo.read` turns any config it cannot read into an UnsupportedError naming the model, never a raw
KeyError, ValueError or TypeError."""

import pytest

from nestrank.protocol.embedding import EmbedderConfig
from nestrank.protocol.errors import UnsupportedError
from nestrank.protocol.parameters import ModelInfo

GOOD = {
    k: {"string_value": v} for k, v in EmbedderConfig(width=8, max_length=16, pooling="mean").to_parameters().items()
}


def config(**fields):
    return {"config": {"name": "m", "max_batch_size": 4, "parameters": GOOD, **fields}}


def test_a_good_config_reads():
    info = ModelInfo.read(config(), EmbedderConfig)
    assert info.name == "m" and info.max_batch_size == 4 and info.width == 8


@pytest.mark.parametrize(
    "model_config, reason",
    [
        ({"config": {"max_batch_size": 4, "parameters": GOOD}}, "KeyError"),  # no name
        (config(max_batch_size="many"), "ValueError"),
        (config(parameters={"width": {"string_value": "not json"}}), "JSONDecodeError"),
        (config(parameters={"width": {"int64_value": 8}}), "KeyError"),
        (config(parameters={}), "TypeError"),  # not an embedder: its required fields are missing
        (config(parameters={**GOOD, "pooling": {"string_value": '"max"'}}), "ValueError"),  # the config refuses it
        ([], "AttributeError"),
    ],
)
def test_a_config_it_cannot_read_is_unsupported(model_config, reason):
    with pytest.raises(UnsupportedError, match=f"is not a nestrank EmbedderConfig \\({reason}"):
        ModelInfo.read(model_config, EmbedderConfig)
