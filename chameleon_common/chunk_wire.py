"""AdapterChunk on the wire without copying its `data` field through protobuf.

An adapter streams as AdapterChunk messages of a few MiB each, nearly all of it the
`data` bytes. upb copies a bytes field into the message's arena on parse and again
into a new bytes object on every read of `.data`, and on build it copies the bytes
in before serializing copies them out: two passes over every byte on each side, on
top of what gRPC itself copies. Protobuf's wire format lets a message be split into
its fields and put back together in any order, so:

- `split_chunk` (the worker) parses every field but `data` with protobuf itself and
  returns `data` as a view into the received message, read once by the staging copy
  and the hash;
- `join_chunk` (the store) serializes the small fields with protobuf and appends
  `data` as one length-delimited field: the only copy is the join into the bytes that
  gRPC sends.

Both follow the wire format's rules (a field that repeats: the last one wins for
`bytes`), and anything malformed is a DecodeError, as protobuf's own parser would raise.
"""
from __future__ import annotations

from google.protobuf.message import DecodeError

from chameleon.v1 import store_pb2

DATA_FIELD = store_pb2.AdapterChunk.DESCRIPTOR.fields_by_name["data"].number
_LEN = 2                                   # wire type of length-delimited fields
_DATA_KEY = (DATA_FIELD << 3) | _LEN
Buffer = bytes | bytearray | memoryview


def _varint(raw: memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); a varint is at most 10 bytes."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(raw))):
        b = raw[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    raise DecodeError("truncated or overlong varint")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_chunk(raw: bytes) -> tuple[store_pb2.AdapterChunk, memoryview]:
    """The chunk's fields except `data`, and `data` as a read-only view into `raw`."""
    view = memoryview(raw).toreadonly()
    rest: list[memoryview] = []
    data = view[0:0]
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        key, pos = _varint(view, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(view, pos)
        elif wire == 1:
            pos += 8
        elif wire == _LEN:
            length, pos = _varint(view, pos)
            if key == _DATA_KEY:
                if pos + length > end:
                    raise DecodeError("truncated data field")
                data = view[pos:pos + length]    # a repeated field: the last one wins
                pos += length
                continue
            pos += length
        elif wire == 5:
            pos += 4
        else:   # groups (3, 4) are not in this message; 6 and 7 are not wire types
            raise DecodeError(f"unexpected wire type {wire}")
        if pos > end:
            raise DecodeError("truncated field")
        rest.append(view[start:pos])
    return store_pb2.AdapterChunk.FromString(b"".join(rest)), data


def join_chunk(head: store_pb2.AdapterChunk, data: Buffer) -> bytes:
    """The serialized AdapterChunk of `head`'s fields with `data` set (head's own data must be
    empty, or it would be sent twice)."""
    if head.data:
        raise ValueError("join_chunk: head carries data of its own")
    return b"".join((head.SerializeToString(), _encode_varint(_DATA_KEY), _encode_varint(len(data)),
                     data))
