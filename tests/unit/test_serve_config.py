"""The serve config's batching knobs: application defaults, per-model overrides, derived max_ongoing_requests,
and the errors that keep batches able to form. No Ray."""

from __future__ import annotations

import pytest

from rayml.config import parse
from rayml.errors import ConfigError
from rayml.serve import ServeConfig


def config(**args) -> ServeConfig:
    return parse(ServeConfig, {"models": [{"name": "fraud"}], **args}, source="test")


def test_models_take_the_application_batching_unless_they_override_it():
    served = config(max_batch_size=128, batch_wait_timeout_s=0.002, max_request_rows=64, models=[
        {"name": "fraud"},
        {"name": "cnn", "batching": {"max_batch_size": 64, "max_concurrent_batches": 2}},
    ])
    assert served.batching("fraud") == {"max_batch_size": 128, "batch_wait_timeout_s": 0.002,
                                        "max_concurrent_batches": 1}
    assert served.batching("cnn") == {"max_batch_size": 64, "batch_wait_timeout_s": 0.002,
                                      "max_concurrent_batches": 2}


def test_max_ongoing_requests_defaults_to_twice_the_largest_batch_capacity():
    assert config().ongoing_requests() == 2 * 256
    served = config(max_request_rows=16, models=[
        {"name": "fraud", "batching": {"max_batch_size": 32}},
        {"name": "cnn", "batching": {"max_batch_size": 64, "max_concurrent_batches": 4}},
    ])
    assert served.ongoing_requests() == 2 * 64 * 4
    assert config(max_ongoing_requests=999).ongoing_requests() == 999


def test_max_ongoing_requests_below_a_models_batch_capacity_names_the_model_and_fix():
    with pytest.raises(ConfigError) as raised:
        config(max_ongoing_requests=300, max_request_rows=16, models=[
            {"name": "fraud"}, {"name": "cnn", "batching": {"max_batch_size": 200, "max_concurrent_batches": 2}}])
    message = str(raised.value)
    assert "model 'cnn'" in message and "(400)" in message and "Raise max_ongoing_requests" in message


def test_a_request_must_fit_in_each_models_batch():
    with pytest.raises(ConfigError, match="max_request_rows \\(256\\) exceeds max_batch_size \\(64\\)"):
        config(models=[{"name": "fraud", "batching": {"max_batch_size": 64}}])


@pytest.mark.parametrize("knob, value", [("max_concurrent_batches", 0), ("max_concurrent_batches", 65),
                                         ("max_batch_size", 0), ("batch_wait_timeout_s", -1)])
def test_out_of_range_batching_is_rejected_with_its_path(knob, value):
    with pytest.raises(ConfigError, match=f"models.0.batching.{knob}"):
        config(models=[{"name": "fraud", "batching": {knob: value}}])


def test_unknown_batching_key_is_rejected():
    with pytest.raises(ConfigError, match="max_batch"):
        config(models=[{"name": "fraud", "batching": {"max_batch": 8}}])
