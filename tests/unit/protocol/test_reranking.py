import dataclasses

import numpy as np
import pytest

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import (
    ADMISSION_GROUP,
    CANCEL_GROUP,
    INDEX,
    PASSAGE_GROUPS,
    RERANK,
    WARM,
    RerankerConfig,
    RerankOptions,
    from_wire,
    parse_rerank_options,
    parse_sub_request,
    request_kind,
    score_signature,
    wire_tensors,
)
from nestrank.serving.pipeline.kalm import DEFAULT_INSTRUCTION
from tests.names import reranker_config

CONFIG = reranker_config("t5gemma2", 64, yes_token_id=7, no_token_id=8, ratios=(2, 4, 8))


def test_parameters_round_trip():
    assert RerankerConfig.from_parameters(CONFIG.to_parameters()) == CONFIG


def test_defaults():
    assert parse_rerank_options({}, CONFIG) == RerankOptions(compression_ratio=4, instruction=DEFAULT_INSTRUCTION)


def test_a_ranking_is_interactive_and_storing_is_bulk_unless_the_request_says_otherwise():
    assert parse_rerank_options({}, CONFIG).traffic_class == "interactive"
    assert parse_rerank_options({"kind": "index"}, CONFIG).traffic_class == "bulk"
    assert parse_rerank_options({"warm": True}, CONFIG).traffic_class == "bulk"  # the last release's warm
    assert parse_rerank_options({"kind": "warm", "traffic_class": "interactive"}, CONFIG).traffic_class == "interactive"
    assert parse_rerank_options({"traffic_class": "bulk"}, CONFIG).traffic_class == "bulk"
    with pytest.raises(
        ValidationError, match="traffic_class: 'urgent' is not a traffic class; one of interactive, bulk"
    ):
        parse_rerank_options({"traffic_class": "urgent"}, CONFIG)


def test_sub_model_requests_carry_a_group_or_cancel_one():
    assert parse_sub_request({ADMISSION_GROUP: "g1", "traffic_class": "bulk"}) == ("g1", None, "bulk")
    assert parse_sub_request({CANCEL_GROUP: "g1"}) == (None, "g1", "interactive")
    with pytest.raises(ValidationError, match="cancel_group: a cancel request carries no other parameter"):
        parse_sub_request({CANCEL_GROUP: "g1", ADMISSION_GROUP: "g2"})
    with pytest.raises(ValidationError, match="admission_group: a string of 1..64 characters"):
        parse_sub_request({ADMISSION_GROUP: "x" * 65})
    with pytest.raises(ValidationError, match="compression_ratio: unknown parameter"):
        parse_sub_request({"compression_ratio": 4})  # `_score` takes none of its own
    assert parse_sub_request({"compression_ratio": 4}, ("compression_ratio",)) == (None, None, "interactive")


def test_a_control_request_carries_empty_placeholders_of_the_required_inputs():
    placeholders = score_signature(8).placeholder_inputs()
    assert {name: (a.shape, a.dtype) for name, a in placeholders.items()} == {
        "decoder_input_ids": ((1, 0), np.int64), "passage_states": ((1, 0, 8), np.float16),
        "passage_counts": ((1, 0), np.int32), "passage_groups": ((1, 0), np.int32)}  # fmt: skip


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
    with pytest.raises(ValueError, match=fragment):
        reranker_config(**kwargs)


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


def test_exports_before_the_ragged_layout_are_refused_with_what_to_do():
    parameters = CONFIG.to_parameters()
    del parameters["passage_layout"]
    with pytest.raises(ValueError, match="no passage_layout: .* re-export it: `nestrank export reranker"):
        RerankerConfig.from_parameters(parameters)
    with pytest.raises(ValueError, match="passage_layout 'padded': .* re-export it"):
        dataclasses.replace(CONFIG, passage_layout="padded")


def wire_passages():
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((g, 8)), np.arange(1, g + 1) % 3) for g in (3, 1, 5)]
    return PassageStates.from_passages(pairs, 4, fingerprint="a" * 32)


def test_passages_cross_the_wire_unchanged():
    held = wire_passages()
    wire = wire_tensors(held)
    assert wire["passage_states"].shape == (9, 8) and np.shares_memory(wire["passage_states"], held.states)
    assert list(wire[PASSAGE_GROUPS]) == [3, 1, 5]  # as held: no padding, no copies
    back = from_wire(wire["passage_states"], wire["passage_counts"], wire[PASSAGE_GROUPS], 4, "a" * 32)
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
    wire = change(wire_tensors(wire_passages()))
    with pytest.raises(ValidationError, match=fragment):
        from_wire(wire["passage_states"], wire["passage_counts"], wire["passage_groups"], 4)
