import pytest

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.reranking import DEFAULT_INSTRUCTION, RerankerConfig, RerankOptions, parse_rerank_options

CONFIG = RerankerConfig(architecture="t5gemma2", hidden_size=64, yes_token_id=7, no_token_id=8, ratios=(2, 4, 8))


def test_parameters_round_trip():
    assert RerankerConfig.from_parameters(CONFIG.to_parameters()) == CONFIG


def test_defaults():
    assert parse_rerank_options({}, CONFIG) == RerankOptions(compression_ratio=4, instruction=DEFAULT_INSTRUCTION)


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"compression_ratio": 3}, "compression_ratio: 3 was not exported; choose one of 2, 4, 8"),
        ({"compression_ratio": 16}, "compression_ratio: 16 was not exported"),
        ({"top_n": 0}, "top_n: must be in 1.."),
        ({"instruction": "  "}, "instruction: empty"),
        ({"states_ratio": 8, "compression_ratio": 4}, "states_ratio: 8 must divide compression_ratio 4"),
        ({"colour": "red"}, "colour: unknown parameter"),
    ],
)
def test_bad_options(params, fragment):
    with pytest.raises(ValidationError, match=fragment):
        parse_rerank_options(params, CONFIG)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"architecture": "bert"}, "architecture must be"),
        ({"ratios": (3,)}, "ratios must be"),
        ({"ratios": (2, 8)}, "default_ratio 4 is not among"),
        ({"prompt_template": "{query}"}, "lacks {instruction}"),
    ],
)
def test_config_is_validated(kwargs, fragment):
    base = {"architecture": "t5", "hidden_size": 8, "yes_token_id": 1, "no_token_id": 2}
    with pytest.raises(ValueError, match=fragment):
        RerankerConfig(**{**base, **kwargs})
