import dataclasses

import numpy as np
import pytest

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    DEFAULT_INSTRUCTION,
    INDEX,
    PASSAGE_GROUPS,
    RERANK,
    WARM,
    RerankerConfig,
    RerankOptions,
    from_wire,
    parse_rerank_options,
    request_kind,
    wire_tensors,
)

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


def test_a_request_is_of_one_kind_and_the_last_releases_warm_flag_reads_as_one():
    assert request_kind(parse_rerank_options({}, CONFIG), ids_sent=True) == RERANK
    assert request_kind(parse_rerank_options({"kind": "warm"}, CONFIG), ids_sent=False) == WARM
    assert request_kind(parse_rerank_options({"kind": "index"}, CONFIG), ids_sent=True) == INDEX
    assert request_kind(parse_rerank_options({"warm": True}, CONFIG), ids_sent=False) == WARM  # last release
    assert request_kind(parse_rerank_options({"warm": True}, CONFIG), ids_sent=True) == INDEX
    with pytest.raises(ValidationError, match="kind: 'reindex' is not a request kind; one of rerank, warm, index"):
        parse_rerank_options({"kind": "reindex"}, CONFIG)
    with pytest.raises(ValidationError, match="warm: send kind alone"):
        parse_rerank_options({"kind": "warm", "warm": True}, CONFIG)


def test_exports_before_the_ragged_layout_read_as_padded():
    parameters = CONFIG.to_parameters()
    del parameters["passage_layout"]
    assert RerankerConfig.from_parameters(parameters).passage_layout == "padded"
    ragged = dataclasses.replace(CONFIG, passage_layout="ragged")
    assert RerankerConfig.from_parameters(ragged.to_parameters()) == ragged
    with pytest.raises(ValueError, match="passage_layout must be one of"):
        dataclasses.replace(CONFIG, passage_layout="jagged")


def wire_passages():
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((g, 8)), np.arange(1, g + 1) % 3) for g in (3, 1, 5)]
    return PassageStates.from_passages(pairs, 4, fingerprint="a" * 32)


@pytest.mark.parametrize("layout", ["ragged", "padded"])
def test_passages_cross_the_wire_unchanged_in_either_layout(layout):
    held = wire_passages()
    wire = wire_tensors(held, layout)
    assert (PASSAGE_GROUPS in wire) == (layout == "ragged")
    if layout == "ragged":  # as held: no padding, no copies
        assert wire["passage_states"].shape == (9, 8) and np.shares_memory(wire["passage_states"], held.states)
        assert list(wire[PASSAGE_GROUPS]) == [3, 1, 5]
    back = from_wire(layout, wire["passage_states"], wire["passage_counts"], wire.get(PASSAGE_GROUPS), 4, "a" * 32)
    if layout == "padded":  # trailing groups of count 0 are padding to this layout
        held = PassageStates.from_padded(*held.padded(), 4, fingerprint="a" * 32)
    np.testing.assert_array_equal(back.states, held.states)
    np.testing.assert_array_equal(back.counts, held.counts)
    np.testing.assert_array_equal(back.offsets, held.offsets)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda w: {**w, "passage_counts": w["passage_counts"][:-1]}, r"passage_counts: shape \[8\]; expected \[9\]"),
        (lambda w: {**w, "passage_groups": w["passage_groups"] + 1}, "passage_groups: shape .* adding up to the 9"),
        (lambda w: {**w, "passage_groups": None}, "passage_groups: shape None"),
        (lambda w: {**w, "passage_groups": w["passage_groups"] * -1}, "passage_groups: .* >= 0"),
        (lambda w: {**w, "passage_states": None}, "passage_states: missing input tensor"),
    ],
)
def test_ragged_tensors_that_do_not_fit_are_refused_by_name(change, fragment):
    wire = change(wire_tensors(wire_passages(), "ragged"))
    with pytest.raises(ValidationError, match=fragment):
        from_wire("ragged", wire["passage_states"], wire["passage_counts"], wire["passage_groups"], 4)
