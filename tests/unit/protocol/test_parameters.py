"""Request parameters: typed, bounded, echoed cut short; what broke a whole batch before is one request's error."""

import pytest

from nestrank.protocol.errors import ValidationError
from nestrank.protocol.parameters import as_bool, as_int, as_str, check_names, shown


@pytest.mark.parametrize("value", ["--128", "²", "٣", "1" * 5000, "12.5", "0x10", "", " ", True, None, 1.5, [1]])
def test_anything_but_an_integer_is_a_validation_error(value):
    with pytest.raises(ValidationError) as err:
        as_int("dimensions", value)
    assert str(err.value).startswith("dimensions: must be an integer")
    assert len(str(err.value)) < 150  # a 5,000-digit value is not echoed whole


def test_integers_in_range():
    assert as_int("top_n", "7") == 7 and as_int("top_n", -3) == -3 and as_int("top_n", " 12 ") == 12
    with pytest.raises(ValidationError, match=r"top_n: must be in 1\.\.10, got 11"):
        as_int("top_n", 11, 1, 10)


def test_strings_and_booleans_are_bounded():
    with pytest.raises(ValidationError, match="instruction: 100000 characters exceed the limit of 4096"):
        as_str("instruction", "x" * 100_000)
    with pytest.raises(ValidationError, match="truncate: must be true or false"):
        as_bool("truncate", "yes")
    assert as_bool("truncate", "FALSE") is False


def test_unknown_names_are_echoed_cut_short():
    with pytest.raises(ValidationError) as err:
        check_names({"k" * 100_000: 1}, ("dimensions",))
    assert "unknown parameter; accepted: dimensions" in str(err.value) and len(str(err.value)) < 200


def test_shown_keeps_short_values_and_cuts_long_ones():
    assert shown("abc") == "'abc'"
    assert shown("x" * 1000).endswith("(1000 characters)") and len(shown("x" * 1000)) < 70
