import types

import numpy as np
import pytest

from nestrank.protocol import errors
from nestrank.protocol.parameters import string_parameters
from nestrank.serving.triton.glue import decode_texts, error_response, one_row

# The code names pb_utils.TritonError documents (python_backend README, "Error Handling").
TRITON_CODES = ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS")


class FakeTritonError:
    def __init__(self, message, code):
        self.message, self.code = message, code


for name in TRITON_CODES:
    setattr(FakeTritonError, name, name)

logged = []
fake_pb_utils = types.SimpleNamespace(
    TritonError=FakeTritonError,
    InferenceResponse=lambda error: types.SimpleNamespace(error=error),
    Logger=types.SimpleNamespace(log_error=logged.append),
)


def test_decode_texts_handles_bytes_and_shapes():
    arr = np.array([["a".encode()], ["é".encode()]], dtype=object)
    assert decode_texts(arr, "text") == ["a", "é"]


def test_invalid_utf8_names_the_index():
    arr = np.array([b"ok", b"\xff\xfe bad"], dtype=object)
    with pytest.raises(errors.ValidationError, match=r"text\[1\]: not valid UTF-8"):
        decode_texts(arr, "text")


def test_missing_tensor():
    with pytest.raises(errors.ValidationError, match="text: missing input tensor"):
        decode_texts(None, "text")


@pytest.mark.parametrize(
    "cls", [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.NestrankError)]
)
def test_every_error_maps_to_a_real_triton_code(cls):
    assert cls.triton_code in TRITON_CODES


def test_error_response_keeps_the_message_and_code():
    response = error_response(fake_pb_utils, errors.ValidationError("dimensions", "too big"))
    assert response.error.code == "INVALID_ARG"
    assert response.error.message == "dimensions: too big"
    try:
        raise KeyError("/srv/secret/path.py")
    except KeyError as err:
        response = error_response(fake_pb_utils, err)
    assert response.error.code == "INTERNAL" and "KeyError" in response.error.message
    assert "/srv/secret" not in response.error.message and "Traceback" not in response.error.message
    assert "/srv/secret" in logged[-1]  # the details go to the server log


def test_an_unexpected_error_is_internal_with_a_log_line_and_bad_input_is_typed():
    """Reading a request raises a typed error for anything a caller sent; whatever else goes wrong is the server's
    bug, and must not pass for the caller's fault (which would hide it from the fuzz tests)."""
    try:
        int("not a number")
    except ValueError as err:
        response = error_response(fake_pb_utils, err)
    assert response.error.code == "INTERNAL" and "ValueError" in response.error.message
    assert "invalid literal" in logged[-1]  # the traceback is in the server log
    response = error_response(fake_pb_utils, errors.ValidationError("text[0]", "empty string"))
    assert response.error.code == "INVALID_ARG"


def test_messages_are_cut_short():
    response = error_response(fake_pb_utils, errors.ValidationError("x", "y" * 100_000))
    assert len(response.error.message) < 1100 and response.error.message.endswith("(cut)")


def test_limits_on_texts_and_the_batch_row():
    with pytest.raises(errors.ValidationError, match="documents: 5 texts exceed the limit of 4"):
        decode_texts(np.array([b"x"] * 5, dtype=object), "documents", max_count=4)
    assert one_row(np.zeros((1, 3)), "x").shape == (3,)
    with pytest.raises(errors.ValidationError, match=r"x: shape \[2, 3\]; expected a leading batch dimension of 1"):
        one_row(np.zeros((2, 3)), "x")


def test_string_parameters_read_either_wrapping():
    assert string_parameters({"parameters": {"a": {"string_value": "1"}}}) == {"a": "1"}
    assert string_parameters({"config": {"parameters": {"a": {"string_value": "1"}}}}) == {"a": "1"}
