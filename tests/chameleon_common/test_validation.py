import math

import pytest

from chameleon_common.validation import (MIN_TEMPERATURE, InvalidId, check_adapter_id, check_finite,
                                         check_request_id, check_sampling, is_adapter_id)


@pytest.mark.parametrize("good", ["a", "lora-000-r8-qv", "A.b_c-9", "x" * 128, "0abc", "a..b", "sql@3"])
def test_adapter_ids_that_pass(good):
    assert check_adapter_id(good) == good


@pytest.mark.parametrize("bad", ["", "lora-000-r8-qv\n", "\nlora", "./x/victim", "../etc", "..", ".hidden",
                                 "a/b", "a\\b", "x" * 129, "a b", "é", "a\x00b", "-a", None, 7,
                                 "a@0", "a@", "a@1@2", "@1", "a@x"])
def test_adapter_ids_that_fail(bad):
    assert not is_adapter_id(bad)
    with pytest.raises(InvalidId, match="adapter id"):
        check_adapter_id(bad)


def test_request_ids_allow_colons_but_not_newlines_or_slashes():
    assert check_request_id("soak:17:a-b.c") == "soak:17:a-b.c"
    for bad in ("r\n", "a/b", "", ":a", "r" * 129):
        with pytest.raises(InvalidId, match="request id"):
            check_request_id(bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_fail(value):
    with pytest.raises(ValueError, match="finite"):
        check_finite("temperature", value)
    with pytest.raises(ValueError, match="finite"):
        check_sampling(max_tokens=4, temperature=value, top_p=1.0)
    with pytest.raises(ValueError, match="finite"):
        check_sampling(max_tokens=4, temperature=0.5, top_p=value)


def test_sampling_ranges():
    check_sampling(max_tokens=1, temperature=0.0, top_p=1.0)
    check_sampling(max_tokens=1, temperature=MIN_TEMPERATURE, top_p=0.01)
    for kw, needle in [(dict(temperature=1e-45), "temperature"), (dict(temperature=-1.0), "temperature"),
                       (dict(max_tokens=0), "max_tokens"), (dict(top_p=0.0), "top_p"),
                       (dict(top_p=1.5), "top_p")]:
        args = {**dict(max_tokens=4, temperature=0.5, top_p=1.0), **kw}
        with pytest.raises(ValueError, match=needle):
            check_sampling(**args)
