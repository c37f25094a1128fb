import pytest

from nestrank.protocol.embedding import EmbedderConfig, EmbedOptions, parse_options, validate_texts
from nestrank.protocol.errors import ValidationError

CONFIG = EmbedderConfig(
    width=384,
    max_length=256,
    pooling="mean",
    dimensions=(384, 256, 128, 64, 32),
    prompts=(("query", "query: "), ("passage", "passage: ")),
)


def test_parameters_round_trip():
    assert EmbedderConfig.from_parameters(CONFIG.to_parameters()) == CONFIG


def test_defaults():
    assert parse_options({}, CONFIG) == EmbedOptions(dimensions=384)


def test_every_option_parses_from_typed_or_string_values():
    opts = parse_options(
        {
            "dimensions": "128",
            "normalize": "true",
            "precision": "ubinary",
            "truncate": False,
            "truncation_direction": "left",
            "input_type": "query",
        },
        CONFIG,
    )
    assert opts == EmbedOptions(128, True, "ubinary", False, "left", "query")


@pytest.mark.parametrize(
    "params, field, fragment",
    [
        ({"dimensions": 100}, "dimensions", "100 is not served; choose one of 384, 256, 128, 64, 32"),
        ({"dimensions": 0}, "dimensions", "0 is not served"),
        ({"dimensions": 385}, "dimensions", "385 is not served"),
        ({"dimensions": "big"}, "dimensions", "must be an integer"),
        ({"dimensions": True}, "dimensions", "must be an integer"),
        ({"precision": "int4"}, "precision", "must be one of float32, float16, int8, uint8, binary, ubinary"),
        ({"precision": "int8", "normalize": False}, "precision", "send normalize=true"),
        ({"normalize": "maybe"}, "normalize", "must be true or false"),
        ({"truncate": 3}, "truncate", "must be true or false"),
        ({"truncation_direction": "up"}, "truncation_direction", "must be one of right, left"),
        ({"input_type": "code"}, "input_type", "must be one of"),
        ({"temperature": 1}, "temperature", "unknown parameter; accepted: dimensions"),
    ],
)
def test_bad_options_name_the_field_and_the_limit(params, field, fragment):
    with pytest.raises(ValidationError) as err:
        parse_options(params, CONFIG)
    assert err.value.field == field
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"{field}: ")


def test_prompts_and_their_aliases():
    assert CONFIG.prompt_for("query") == "query: "
    assert CONFIG.prompt_for("document") == "passage: "  # alias of passage
    assert CONFIG.prompt_for(None) == ""
    no_prompts = EmbedderConfig(width=8, max_length=16, pooling="cls")
    assert no_prompts.prompt_for("query") == ""
    with_default = EmbedderConfig(width=8, max_length=16, pooling="cls", prompts=(("q", "Q: "),), default_prompt="q")
    assert with_default.prompt_for(None) == "Q: "


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"pooling": "max"}, "pooling must be one of"),
        ({"dimensions": (512,)}, "outside 1..384"),
        ({"precisions": ("int3",)}, "unknown precisions"),
        ({"max_length": 1}, "max_length must be >= 2"),
        ({"default_prompt": "nope"}, "default_prompt 'nope' is not among prompts"),
    ],
)
def test_config_is_validated_on_construction(kwargs, fragment):
    base = {"width": 384, "max_length": 256, "pooling": "mean"}
    with pytest.raises(ValueError, match=fragment):
        EmbedderConfig(**{**base, **kwargs})


def test_texts_validation():
    validate_texts([" ", "."])  # empty-ish is fine
    with pytest.raises(ValidationError, match="no texts"):
        validate_texts([])
    with pytest.raises(ValidationError, match=r"text\[1\]: empty string"):
        validate_texts(["a", ""])
