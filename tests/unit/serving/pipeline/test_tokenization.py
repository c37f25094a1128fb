import numpy as np
import pytest

from nestrank.protocol.errors import ValidationError
from nestrank.serving.pipeline.tokenization import TextTokenizer, pad


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return TextTokenizer(minilm_dir / "tokenizer.json", max_length=8)


def test_truncates_right_by_default_keeping_special_tokens(tokenizer):
    (ids,) = tokenizer.encode(["one two three four five six seven eight nine ten"])
    assert len(ids) == 8
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]


def test_left_truncation_keeps_the_end(tokenizer):
    (right,) = tokenizer.encode(["one two three four five six seven eight nine ten"])
    (left,) = tokenizer.encode(["one two three four five six seven eight nine ten"], direction="left")
    assert left[-2] != right[-2]
    assert left[0] == 101 and left[-1] == 102


def test_truncate_false_names_the_text_and_the_limit(tokenizer):
    with pytest.raises(ValidationError) as err:
        tokenizer.encode(["short", "one two three four five six seven eight nine ten"], truncate=False)
    assert err.value.field == "text[1]"
    assert "12 tokens exceed max_length 8" in str(err.value)


def test_short_texts_pass_with_truncate_false(tokenizer):
    out = tokenizer.encode(["a b c"], truncate=False)
    assert len(out[0]) == 5


def test_unknown_direction_is_refused(tokenizer):
    with pytest.raises(ValidationError, match="truncation_direction"):
        tokenizer.encode(["x"], direction="middle")


def test_pad_builds_ids_and_mask():
    ids, mask = pad([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == np.int64
