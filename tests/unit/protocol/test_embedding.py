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


def test_depth_ladder_config_and_the_layers_option():
    from nestrank.protocol.embedding import EmbedderConfig, parse_options
    from nestrank.protocol.errors import ValidationError

    config = EmbedderConfig(width=8, max_length=16, pooling="mean", num_layers=6, layers=(4, 2, 3))
    assert config.layers == (2, 3, 4, 6) and config.served_layers == (2, 3, 4, 6)
    assert EmbedderConfig.from_parameters(config.to_parameters()) == config
    assert parse_options({"layers": 3}, config).layers == 3
    assert parse_options({"layers": "2"}, config).layers == 2  # HTTP sends strings
    assert parse_options({"layers": 6}, config).layers is None  # the full depth: the same as not asking
    assert parse_options({}, config).layers is None
    with pytest.raises(ValidationError, match=r"layers: 5 is not served; choose one of 2, 3, 4, 6 \(full depth 6\)"):
        parse_options({"layers": 5}, config)
    with pytest.raises(ValidationError, match="layers: must be an integer"):
        parse_options({"layers": 2.5}, config)
    one_graph = EmbedderConfig(width=8, max_length=16, pooling="mean", num_layers=6)
    assert one_graph.served_layers == (6,) and parse_options({"layers": 6}, one_graph).layers is None
    legacy = EmbedderConfig(width=8, max_length=16, pooling="mean")  # exported before depths were recorded
    with pytest.raises(ValidationError, match="the full depth only"):
        parse_options({"layers": 6}, legacy)
    with pytest.raises(ValueError, match="outside 1..6"):
        EmbedderConfig(width=8, max_length=16, pooling="mean", num_layers=6, layers=(7,))
    with pytest.raises(ValueError, match="needs num_layers"):
        EmbedderConfig(width=8, max_length=16, pooling="mean", layers=(2,))
