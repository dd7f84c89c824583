from chameleon.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class StatAdapterRequest(_message.Message):
    __slots__ = ("adapter_id",)
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    def __init__(self, adapter_id: _Optional[str] = ...) -> None: ...

class FetchAdapterRequest(_message.Message):
    __slots__ = ("adapter_id", "chunk_bytes")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    chunk_bytes: int
    def __init__(self, adapter_id: _Optional[str] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class AdapterChunk(_message.Message):
    __slots__ = ("file_name", "offset", "data", "last", "sha256", "file_size")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    offset: int
    data: bytes
    last: bool
    sha256: str
    file_size: int
    def __init__(self, file_name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ..., file_size: _Optional[int] = ...) -> None: ...
