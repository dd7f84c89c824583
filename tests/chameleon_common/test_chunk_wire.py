"""split_chunk / join_chunk agree with protobuf's own parser and serializer, byte for byte."""
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, strategies as st

from chameleon.v1 import store_pb2
from chameleon_common.chunk_wire import join_chunk, split_chunk

chunks = st.builds(
    store_pb2.AdapterChunk, file_name=st.text(max_size=20), offset=st.integers(0, 2**62),
    data=st.binary(max_size=5000), last=st.booleans(), sha256=st.text("0123456789abcdef", max_size=64),
    file_size=st.integers(-2**40, 2**62), adapter_sha256=st.text(max_size=64))


def _head(c: store_pb2.AdapterChunk) -> store_pb2.AdapterChunk:
    h = store_pb2.AdapterChunk()
    h.CopyFrom(c)
    h.data = b""
    return h


@given(chunks)
def test_split_gives_what_protobuf_parses(c):
    head, data = split_chunk(c.SerializeToString())
    assert bytes(data) == c.data
    assert head == _head(c)


@given(chunks)
def test_join_parses_back_to_the_same_message(c):
    raw = join_chunk(_head(c), memoryview(c.data))
    assert store_pb2.AdapterChunk.FromString(raw) == c
    head, data = split_chunk(raw)
    assert bytes(data) == c.data and head == _head(c)


def test_a_repeated_data_field_keeps_the_last_one_as_protobuf_does():
    raw = (store_pb2.AdapterChunk(data=b"first", offset=3).SerializeToString()
           + store_pb2.AdapterChunk(data=b"second").SerializeToString())
    head, data = split_chunk(raw)
    assert bytes(data) == store_pb2.AdapterChunk.FromString(raw).data == b"second"
    assert head.offset == 3


def test_unknown_fields_pass_through_to_protobuf():
    raw = store_pb2.AdapterChunk(data=b"xyz", last=True).SerializeToString() + b"\xf8\x06\x01"  # field 111
    head, data = split_chunk(raw)
    assert bytes(data) == b"xyz" and head.last


def test_data_is_a_read_only_view_not_a_copy():
    raw = store_pb2.AdapterChunk(data=b"a" * 1000).SerializeToString()
    _, data = split_chunk(raw)
    assert data.readonly and data.obj is raw


def test_every_truncation_is_refused_exactly_when_protobuf_refuses_it():
    raw = store_pb2.AdapterChunk(file_name="f", data=b"d" * 200, last=True, offset=300).SerializeToString()
    refused = 0
    for cut in range(len(raw)):
        try:
            store_pb2.AdapterChunk.FromString(raw[:cut])
        except DecodeError:
            refused += 1
            with pytest.raises(DecodeError):
                split_chunk(raw[:cut])
        else:
            head, data = split_chunk(raw[:cut])
            whole = store_pb2.AdapterChunk.FromString(raw[:cut])
            assert head == _head(whole) and bytes(data) == whole.data
    assert refused > 200   # every cut inside the data field


def test_a_bad_wire_type_is_a_decode_error():
    with pytest.raises(DecodeError):
        split_chunk(b"\x0f")     # field 1, wire type 7


def test_join_refuses_a_head_that_already_has_data():
    with pytest.raises(ValueError):
        join_chunk(store_pb2.AdapterChunk(data=b"x"), b"y")
