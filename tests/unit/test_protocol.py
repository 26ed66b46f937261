"""Unit tests for rayml.serve.protocol: the Open Inference Protocol v2 JSON codec (no Ray, no HTTP)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rayml.errors import RequestError
from rayml.serve.protocol import (
    V2_DATATYPES,
    InferRequest,
    TensorSpec,
    error_body,
    infer_response,
    model_metadata,
    parse_infer_request,
    server_metadata,
    v2_datatype,
)

INPUTS = [
    TensorSpec("amount", "FP32", [-1]),
    TensorSpec("country", "BYTES", [-1]),
    TensorSpec("history", "INT64", [-1, 3]),
]
OUTPUTS = [TensorSpec("probability", "FP32", [-1]), TensorSpec("label", "BOOL", [-1])]


def inp(name: str, datatype: str, shape: list, data) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def good_inputs(rows: int = 2) -> list[dict]:
    return [
        inp("amount", "FP32", [rows], [1.5 * i for i in range(rows)]),
        inp("country", "BYTES", [rows], ["DE" if i % 2 else "FR" for i in range(rows)]),
        inp("history", "INT64", [rows, 3], list(range(rows * 3))),
    ]


def parse(body, inputs=INPUTS, outputs=OUTPUTS, max_rows: int = 16) -> InferRequest:
    return parse_infer_request(body, inputs, outputs, max_rows)


def error_of(body, inputs=INPUTS, outputs=OUTPUTS, max_rows: int = 16) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(body, inputs, outputs, max_rows)
    return caught.value


def bad_input(**changes) -> RequestError:
    """The error for the good request with the ``amount`` input changed."""
    items = good_inputs()
    items[0] = {**items[0], **changes}
    return error_of({"inputs": items})


def one(datatype: str, data, shape=None, sent: str | None = None) -> np.ndarray:
    spec = TensorSpec("x", datatype, [-1] if shape is None else [-1, *shape[1:]])
    shape = [len(data)] if shape is None else shape
    request = parse_infer_request(
        {"inputs": [inp("x", sent or datatype, shape, data)]}, [spec], [], max_rows=1 << 20
    )
    return request.tensors["x"]


# ------------------------------------------------------------------------------------ metadata and bodies


def test_server_and_model_metadata_and_error_body():
    assert server_metadata("0.1.0", ["model_repository"]) == {
        "name": "rayml", "version": "0.1.0", "extensions": ["model_repository"]
    }
    meta = model_metadata("fraud", ["3"], "onnxruntime_onnx", INPUTS, OUTPUTS)
    assert meta == {
        "name": "fraud",
        "versions": ["3"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "amount", "datatype": "FP32", "shape": [-1]},
            {"name": "country", "datatype": "BYTES", "shape": [-1]},
            {"name": "history", "datatype": "INT64", "shape": [-1, 3]},
        ],
        "outputs": [
            {"name": "probability", "datatype": "FP32", "shape": [-1]},
            {"name": "label", "datatype": "BOOL", "shape": [-1]},
        ],
    }
    json.dumps(meta)
    assert error_body("input 'x': bad") == {"error": "input 'x': bad"}


def test_tensor_spec_rejects_unknown_datatype_and_bad_shape():
    with pytest.raises(ValueError, match="unknown datatype 'FLOAT'"):
        TensorSpec("x", "FLOAT", [-1])
    with pytest.raises(ValueError, match="shape"):
        TensorSpec("x", "FP32", [-2])
    assert TensorSpec("x", "FP16", [-1, 2]).dtype == np.float16


def test_datatype_table_and_inverse():
    assert set(V2_DATATYPES) == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    }
    for name, dtype in V2_DATATYPES.items():
        assert v2_datatype(dtype) == name
    assert v2_datatype(np.dtype("<U3")) == "BYTES"
    with pytest.raises(ValueError, match="no Open Inference Protocol v2 datatype"):
        v2_datatype(np.complex64)


# ------------------------------------------------------------------------------------ round trips


NUMERIC_SAMPLES = {
    "UINT8": [0, 7, 255, 1],
    "UINT16": [0, 7, 65535, 1],
    "UINT32": [0, 7, 2**32 - 1, 1],
    "UINT64": [0, 7, 2**64 - 1, 1],
    "INT8": [-128, 0, 127, 1],
    "INT16": [-(2**15), 0, 2**15 - 1, 1],
    "INT32": [-(2**31), 0, 2**31 - 1, 1],
    "INT64": [-(2**63), 0, 2**63 - 1, 1],
    "FP16": [-65504.0, 0.5, 65504.0, 3],
    "FP32": [-1.5, 0.25, 3.0e38, 3],
    "FP64": [-1.5, 0.1, 1.0e308, 3],
    "BOOL": [True, False, True, True],
    "BYTES": ["a", "", "unicode ✓", "x" * 100],
}


@pytest.mark.parametrize("datatype", sorted(NUMERIC_SAMPLES))
def test_round_trip_every_datatype(datatype):
    values = NUMERIC_SAMPLES[datatype]
    spec = TensorSpec("x", datatype, [-1, 2])
    request = parse_infer_request(
        {"id": "r1", "inputs": [inp("x", datatype, [2, 2], values)]}, [spec], [spec], max_rows=2
    )
    array = request.tensors["x"]
    assert array.dtype == V2_DATATYPES[datatype]
    assert array.shape == (2, 2)
    assert request.rows == 2
    body = infer_response("m", "1", request.id, {"x": array}, [spec])
    text = json.dumps(body, allow_nan=False)
    out = json.loads(text)["outputs"][0]
    assert out == {"name": "x", "datatype": datatype, "shape": [2, 2], "data": out["data"]}
    assert len(out["data"]) == 4 and not any(isinstance(v, list) for v in out["data"])
    back = parse_infer_request({"inputs": [inp("x", datatype, out["shape"], out["data"])]}, [spec], [], 2)
    np.testing.assert_array_equal(back.tensors["x"], array)
    if datatype in ("FP16", "FP32", "FP64"):
        np.testing.assert_array_equal(array.ravel(), np.asarray(values, dtype=V2_DATATYPES[datatype]))
    else:
        assert out["data"] == values


def test_bytes_tensor_is_object_array_of_str():
    array = one("BYTES", ["ab", "cd", "ef"])
    assert array.dtype == object and array.shape == (3,)
    assert list(array) == ["ab", "cd", "ef"]  # equal-length strings are not split into characters


@pytest.mark.parametrize("datatype", ["FP32", "INT16", "BOOL", "BYTES"])
def test_flat_and_nested_data_give_identical_arrays(datatype):
    values = NUMERIC_SAMPLES[datatype] * 6  # 24 values
    shape = [2, 3, 4]
    nested = np.asarray(values, dtype=object).reshape(shape).tolist()
    flat_array = one(datatype, values, shape)
    nested_array = one(datatype, nested, shape)
    assert flat_array.shape == nested_array.shape == (2, 3, 4)
    assert flat_array.dtype == nested_array.dtype
    np.testing.assert_array_equal(flat_array, nested_array)


def test_full_request_and_all_outputs_by_default():
    request = parse({"inputs": good_inputs(3), "parameters": {"binary_data_output": False}, "extra": 1})
    assert request.id is None
    assert request.rows == 3
    assert request.requested_outputs == ["probability", "label"]
    np.testing.assert_array_equal(request.tensors["amount"], np.asarray([0, 1.5, 3.0], dtype=np.float32))
    assert request.tensors["amount"].dtype == np.float32
    assert list(request.tensors["country"]) == ["FR", "DE", "FR"]
    np.testing.assert_array_equal(request.tensors["history"], np.arange(9).reshape(3, 3))
    assert request.tensors["history"].dtype == np.int64


def test_floats_accept_json_integers():
    np.testing.assert_array_equal(one("FP32", [1, 2.5, -3]), np.asarray([1, 2.5, -3], dtype=np.float32))
    np.testing.assert_array_equal(one("FP16", [1, 0.5]), np.asarray([1, 0.5], dtype=np.float16))


def test_zero_rows_are_allowed():
    array = one("FP32", [], [0, 3])
    assert array.shape == (0, 3) and array.dtype == np.float32
    assert one("BYTES", []).shape == (0,)


def test_input_and_output_parameters_are_ignored():
    items = good_inputs()
    items[0]["parameters"] = {"content_type": "np"}
    request = parse({"inputs": items, "outputs": [{"name": "label", "parameters": {"binary_data": True}}]})
    assert request.requested_outputs == ["label"]


# ------------------------------------------------------------------------------------ datatype widening


@pytest.mark.parametrize(
    "sent, wanted",
    [("FP16", "FP32"), ("FP32", "FP64"), ("INT8", "INT64"), ("INT32", "INT64"), ("UINT8", "INT16"),
     ("INT16", "FP32"), ("UINT32", "UINT64")],
)
def test_numeric_input_accepts_safely_widening_datatype(sent, wanted):
    array = one(wanted, [1, 2, 3], sent=sent)
    assert array.dtype == V2_DATATYPES[wanted]
    np.testing.assert_array_equal(array, [1, 2, 3])


def test_widened_data_are_checked_against_the_datatype_sent():
    with pytest.raises(RequestError, match=r"input 'x': value 300 is out of range for INT8"):
        one("INT64", [1, 300], sent="INT8")
    with pytest.raises(RequestError, match=r"input 'x': value 70000 .* not a finite FP16"):
        one("FP32", [1, 70000], sent="FP16")


@pytest.mark.parametrize(
    "sent, wanted", [("FP64", "FP32"), ("INT64", "INT32"), ("INT32", "FP32"), ("BOOL", "INT8"),
                     ("INT8", "BOOL"), ("BYTES", "FP32"), ("FP32", "BYTES"), ("INT8", "UINT8")],
)
def test_narrowing_or_cross_kind_datatype_is_refused(sent, wanted):
    with pytest.raises(RequestError) as caught:
        one(wanted, [1], sent=sent)
    assert caught.value.status == 400
    assert caught.value.message.startswith(f"input 'x': datatype {wanted} expected, got {sent}")


def test_datatype_mismatch_message_matches_the_documented_form():
    error = bad_input(datatype="BYTES", data=["a", "b"])
    assert error.status == 400
    assert error.message.startswith("input 'amount': datatype FP32 expected, got BYTES; it also accepts ")
    assert "FP16" in error.message and "FP64" not in error.message.split("accepts")[1]


# ------------------------------------------------------------------------------------ request-level errors


@pytest.mark.parametrize("body", [None, [], "inputs", 3, True])
def test_body_must_be_an_object(body):
    error = error_of(body)
    assert error.status == 400
    assert "request body must be a JSON object" in error.message


@pytest.mark.parametrize("body", [{}, {"inputs": None}, {"inputs": {}}, {"inputs": []}, {"inputs": "x"}])
def test_body_needs_inputs_list(body):
    error = error_of(body)
    assert error.status == 400
    assert '"inputs"' in error.message and "amount, country, history" in error.message


def test_unknown_input_lists_the_model_inputs():
    items = good_inputs()
    items[0]["name"] = "amt"
    error = error_of({"inputs": items})
    assert error.status == 400
    assert "unknown input 'amt'; this model's inputs are amount, country, history" in error.message
    assert "missing input 'amount'" in error.message  # every problem at once


def test_duplicate_input():
    items = good_inputs()
    error = error_of({"inputs": [*items, items[1]]})
    assert error.status == 400
    assert error.message == "input 'country' appears more than once in \"inputs\"; send each input once"


def test_missing_input():
    error = error_of({"inputs": good_inputs()[:2]})
    assert error.status == 400
    assert error.message.startswith("missing input 'history'")


@pytest.mark.parametrize("item", [3, "amount", None, ["amount"]])
def test_input_entry_must_be_an_object(item):
    error = error_of({"inputs": [item, *good_inputs()]})
    assert error.status == 400
    assert error.message.startswith("inputs[0] must be an object")


def test_input_name_must_be_a_string():
    items = good_inputs()
    items[0]["name"] = 5
    error = error_of({"inputs": items})
    assert 'inputs[0]: "name" must be a string' in error.message


@pytest.mark.parametrize("datatype", ["FLOAT32", None, 32, "fp32"])
def test_unknown_datatype(datatype):
    error = bad_input(datatype=datatype)
    assert error.status == 400
    assert error.message.startswith("input 'amount': unknown datatype")
    assert "send 'FP32'" in error.message


@pytest.mark.parametrize(
    "shape, expected",
    [
        (None, "\"shape\" must be a list"),
        ("2", "\"shape\" must be a list"),
        ([2, 1], "has rank 2; the model's shape is [-1]"),
        ([], "has rank 0"),
        ([-1], "must hold non-negative integers"),
        ([2.0], "must hold non-negative integers"),
        ([True], "must hold non-negative integers"),
        (["2"], "must hold non-negative integers"),
    ],
)
def test_bad_shape(shape, expected):
    error = bad_input(shape=shape)
    assert error.status == 400
    assert error.message.startswith("input 'amount': ")
    assert expected in error.message


def test_shape_must_match_fixed_dimensions():
    items = good_inputs()
    items[2] = inp("history", "INT64", [2, 2], [1, 2, 3, 4])
    error = error_of({"inputs": items})
    assert error.status == 400
    assert error.message == (
        "input 'history': shape [2, 2] does not match the model's [-1, 3]: "
        "dimension 1 must be 3 (-1 = any size)"
    )


def test_element_count_must_match_shape():
    error = bad_input(shape=[2], data=[1.0, 2.0, 3.0])
    assert error.status == 400
    assert error.message == "input 'amount': shape [2] holds 2 elements but data has 3"


def test_enormous_declared_shape_is_refused_before_allocating():
    spec = TensorSpec("x", "FP32", [-1, -1])
    huge = [1, 10**15]  # one row: passes max_rows; the product must be checked, not allocated
    with pytest.raises(RequestError) as caught:
        parse_infer_request({"inputs": [inp("x", "FP32", huge, [1.0])]}, [spec], [], max_rows=16)
    assert caught.value.status == 400
    assert caught.value.message == f"input 'x': shape {huge} holds {10**15} elements but data has 1"
    with pytest.raises(RequestError, match="does not match shape"):
        parse_infer_request({"inputs": [inp("x", "FP32", huge, [[1.0]])]}, [spec], [], max_rows=16)
    with pytest.raises(RequestError, match="holds 10000000000000000000000000000000000000000"):
        parse_infer_request({"inputs": [inp("x", "FP32", [1, 10**40], [1.0])]}, [spec], [], max_rows=16)


def test_too_many_rows_is_413_and_checked_before_the_data():
    items = good_inputs(20)
    items[0]["data"] = "not even a list"  # never looked at: size is refused first
    error = error_of({"inputs": items}, max_rows=16)
    assert error.status == 413
    assert "input 'amount'" in error.message and "20 rows" in error.message and "at most 16" in error.message


def test_inputs_must_share_the_batch_size():
    items = good_inputs(2)
    items[1] = inp("country", "BYTES", [3], ["a", "b", "c"])
    error = error_of({"inputs": items})
    assert error.status == 400
    assert "'amount' has 2, 'country' has 3" in error.message


def test_missing_data_and_binary_hint():
    items = good_inputs()
    del items[0]["data"]
    assert 'input \'amount\': no "data"' in error_of({"inputs": items}).message
    items[0]["parameters"] = {"binary_data_size": 8}
    error = error_of({"inputs": items})
    assert error.status == 400 and "binary_data=False" in error.message


@pytest.mark.parametrize(
    "data, kind", [(None, "null"), ({"a": 1}, "an object"), ("1,2", "a string"), (3, "an integer")]
)
def test_data_must_be_a_list(data, kind):
    error = bad_input(data=data)
    assert error.status == 400
    assert error.message == f'input \'amount\': "data" must be a JSON list, got {kind}'


@pytest.mark.parametrize(
    "datatype, data, found",
    [
        ("FP32", [1.0, None], "found null"),
        ("FP32", [1.0, "2"], "found a string"),
        ("FP32", [1.0, True], "found true/false"),
        ("FP32", [1.0, {}], "found an object"),
        ("INT32", [1, 2.0], "found a number with a fraction or exponent"),
        ("INT32", [1, True], "found true/false"),
        ("BOOL", [True, 1], "found an integer"),
        ("BOOL", [True, "true"], "found a string"),
        ("BYTES", ["a", 1], "found an integer"),
        ("BYTES", ["a", None], "found null"),
    ],
)
def test_data_of_the_wrong_json_kind(datatype, data, found):
    with pytest.raises(RequestError) as caught:
        one(datatype, data)
    assert caught.value.status == 400
    message = caught.value.message
    assert message.startswith(f"input 'x': {datatype} data must be JSON ")
    assert found in message and "at flat index 1" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(value):  # Python's json.loads accepts NaN and Infinity
    expected = "input 'x': value .* at flat index 1 is not a finite FP64"
    with pytest.raises(RequestError, match=expected) as caught:
        one("FP64", [1.0, value])
    assert caught.value.status == 400


def test_float_overflow_on_cast_is_refused():
    with pytest.raises(RequestError, match="not a finite FP32"):
        one("FP32", [1e39])
    with pytest.raises(RequestError, match="too large for FP64"):
        one("FP64", [10**400])


@pytest.mark.parametrize(
    "datatype, value", [("UINT8", 256), ("UINT8", -1), ("INT8", -129), ("INT64", 2**63), ("UINT64", 2**64)]
)
def test_integer_out_of_range(datatype, value):
    with pytest.raises(RequestError) as caught:
        one(datatype, [0, value])
    assert caught.value.status == 400
    assert caught.value.message.startswith(f"input 'x': value {value} is out of range for {datatype}")


def test_ragged_and_mis_nested_data():
    def nested_error(data, shape=(2, 3)) -> str:
        with pytest.raises(RequestError) as caught:
            one("FP32", data, list(shape))
        assert caught.value.status == 400
        return caught.value.message

    assert "a list at depth 1 has 2 elements; dimension 1 is 3" in nested_error([[1, 2, 3], [4, 5]])
    assert "a list at depth 0 has 3 elements" in nested_error([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert "found an integer" in nested_error([[1, 2, 3], 4])
    assert "nested deeper than shape [2, 3]" in nested_error([[1, 2, [3]], [4, 5, 6]])
    assert "nested deeper than shape [6]" in nested_error([1, 2, [3], 4, 5, 6], shape=(6,))
    assert "nested deeper than shape [2, 3]" in nested_error([1, 2, 3, 4, 5, [6]])


def test_deeply_nested_hostile_data_is_refused_without_recursing():
    deep: list = [1.0]
    for _ in range(100_000):  # far past any recursion limit; only the declared rank is walked
        deep = [deep]
    spec = TensorSpec("x", "FP32", [-1, -1])
    with pytest.raises(RequestError) as caught:
        parse_infer_request({"inputs": [inp("x", "FP32", [1, 1], deep)]}, [spec], [], max_rows=4)
    assert caught.value.status == 400
    assert "nested deeper than shape [1, 1]" in caught.value.message


def test_long_strings_in_numeric_data_do_not_allocate_a_unicode_array():
    data = ["x" * 1_000_000] + ["a"] * 100_000  # np.asarray without a dtype would try ~400 GB
    with pytest.raises(RequestError, match="found a string"):
        one("FP32", data)


def test_id_must_be_a_string():
    error = error_of({"id": 7, "inputs": good_inputs()})
    assert error.status == 400 and '"id" must be a string' in error.message


def test_every_problem_is_reported_at_once():
    items = good_inputs()
    items[0]["datatype"] = "BYTES"
    items[1]["shape"] = [2, 2]
    error = error_of({"inputs": items, "outputs": [{"name": "nope"}]})
    assert "input 'amount'" in error.message
    assert "input 'country'" in error.message
    assert "unknown output 'nope'" in error.message
    assert "missing input" not in error.message  # a named-but-bad input is not also missing


def test_data_problems_of_several_inputs_are_reported_at_once():
    items = good_inputs()
    items[0]["data"] = [1.0, None]
    items[1]["data"] = ["a", 2]
    error = error_of({"inputs": items})
    assert "input 'amount'" in error.message and "input 'country'" in error.message


# ------------------------------------------------------------------------------------ outputs selection


def test_outputs_selection_keeps_the_requested_order():
    request = parse({"inputs": good_inputs(), "outputs": [{"name": "label"}, {"name": "probability"}]})
    assert request.requested_outputs == ["label", "probability"]
    assert parse({"inputs": good_inputs(), "outputs": []}).requested_outputs == ["probability", "label"]


@pytest.mark.parametrize(
    "outputs, expected",
    [
        ([{"name": "prob"}], "unknown output 'prob'; this model's outputs are probability, label"),
        ([{"name": "label"}, {"name": "label"}], "output 'label' is requested more than once"),
        (["label"], "outputs[0] must be an object with a string \"name\""),
        ([{"name": 3}], "outputs[0] must be an object with a string \"name\""),
        ({"name": "label"}, "\"outputs\" must be a list"),
    ],
)
def test_bad_outputs(outputs, expected):
    error = error_of({"inputs": good_inputs(), "outputs": outputs})
    assert error.status == 400
    assert expected in error.message


# ------------------------------------------------------------------------------------ responses


def test_response_shape_id_and_flat_data():
    probability = np.asarray([0.25, 0.5, 0.75], dtype=np.float32)
    label = np.asarray([False, True, True])
    with_id = infer_response("fraud", "3", "req-1", {"label": label, "probability": probability}, OUTPUTS)
    assert with_id == {
        "model_name": "fraud",
        "model_version": "3",
        "id": "req-1",
        "outputs": [
            {"name": "label", "datatype": "BOOL", "shape": [3], "data": [False, True, True]},
            {"name": "probability", "datatype": "FP32", "shape": [3], "data": [0.25, 0.5, 0.75]},
        ],
    }
    without_id = infer_response("fraud", "3", None, {"probability": probability}, OUTPUTS)
    assert "id" not in without_id
    assert [o["name"] for o in without_id["outputs"]] == ["probability"]
    for body in (with_id, without_id):
        json.loads(json.dumps(body, allow_nan=False))


def test_response_flattens_row_major_and_casts_to_the_spec():
    spec = TensorSpec("scores", "FP32", [-1, 2])
    scores = np.arange(6, dtype=np.float64).reshape(3, 2)
    out = infer_response("m", "1", None, {"scores": scores}, [spec])["outputs"][0]
    assert out == {"name": "scores", "datatype": "FP32", "shape": [3, 2], "data": [0.0, 1, 2, 3, 4, 5]}
    assert all(type(v) is float for v in out["data"])


def test_response_bytes_decoded_to_str():
    spec = TensorSpec("tag", "BYTES", [-1])
    out = infer_response("m", "1", None, {"tag": np.asarray([b"a", "b"], dtype=object)}, [spec])["outputs"][0]
    assert out["data"] == ["a", "b"]
    json.dumps(out)


def test_response_refuses_server_side_faults():
    with pytest.raises(ValueError, match="output 'other' has no TensorSpec"):
        infer_response("m", "1", None, {"other": np.zeros(1)}, OUTPUTS)
    with pytest.raises(ValueError, match="NaN or infinity"):
        infer_response("m", "1", None, {"probability": np.asarray([math.nan], dtype=np.float32)}, OUTPUTS)


def test_id_echoed_from_request_to_response():
    request = parse({"id": "abc", "inputs": good_inputs()})
    assert request.id == "abc"
    body = infer_response("m", "1", request.id, {}, OUTPUTS)
    assert body["id"] == "abc"
    assert "id" not in infer_response("m", "1", parse({"inputs": good_inputs()}).id, {}, OUTPUTS)
