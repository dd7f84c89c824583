from chameleon.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdapterChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_CHANGE_KIND_UNSPECIFIED: _ClassVar[AdapterChangeKind]
    ADAPTER_CHANGE_KIND_PUSHED: _ClassVar[AdapterChangeKind]
    ADAPTER_CHANGE_KIND_DELETED: _ClassVar[AdapterChangeKind]
ADAPTER_CHANGE_KIND_UNSPECIFIED: AdapterChangeKind
ADAPTER_CHANGE_KIND_PUSHED: AdapterChangeKind
ADAPTER_CHANGE_KIND_DELETED: AdapterChangeKind

class StatAdapterRequest(_message.Message):
    __slots__ = ("adapter_id",)
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    def __init__(self, adapter_id: _Optional[str] = ...) -> None: ...

class FetchAdapterRequest(_message.Message):
    __slots__ = ("adapter_id", "chunk_bytes", "resume_file", "resume_offset", "expect_sha256")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESUME_FILE_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    EXPECT_SHA256_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    chunk_bytes: int
    resume_file: str
    resume_offset: int
    expect_sha256: str
    def __init__(self, adapter_id: _Optional[str] = ..., chunk_bytes: _Optional[int] = ..., resume_file: _Optional[str] = ..., resume_offset: _Optional[int] = ..., expect_sha256: _Optional[str] = ...) -> None: ...

class AdapterChunk(_message.Message):
    __slots__ = ("file_name", "offset", "data", "last", "sha256", "file_size", "adapter_sha256")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    offset: int
    data: bytes
    last: bool
    sha256: str
    file_size: int
    adapter_sha256: str
    def __init__(self, file_name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ..., file_size: _Optional[int] = ..., adapter_sha256: _Optional[str] = ...) -> None: ...

class PushHeader(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PushAdapterRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    chunk: AdapterChunk
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., chunk: _Optional[_Union[AdapterChunk, _Mapping]] = ...) -> None: ...

class DeleteAdapterRequest(_message.Message):
    __slots__ = ("adapter_id",)
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    def __init__(self, adapter_id: _Optional[str] = ...) -> None: ...

class DeleteAdapterResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchAdaptersResponse(_message.Message):
    __slots__ = ("kind", "name", "refs")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    kind: AdapterChangeKind
    name: str
    refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[AdapterChangeKind, str]] = ..., name: _Optional[str] = ..., refs: _Optional[_Iterable[str]] = ...) -> None: ...
