from chameleon.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "adapter_id", "params", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    adapter_id: str
    params: _common_pb2.SamplingParams
    request_id: str
    def __init__(self, prompt: _Optional[str] = ..., adapter_id: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finish_reason", "timings", "prompt_tokens", "completion_tokens", "trace_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _common_pb2.FinishReason
    timings: _common_pb2.Timings
    prompt_tokens: int
    completion_tokens: int
    trace_id: str
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., trace_id: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "address", "connected", "running", "total_tokens", "free_tokens", "free_pages", "evictable_pages", "cached_adapters", "cache_hits", "cache_misses", "evictions", "bytes_loaded", "loading_adapters", "adapter_fetches", "fetch_bytes_per_s", "fetch_ttfb_ms", "kv_pages", "active_adapter_pages")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FREE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FREE_PAGES_FIELD_NUMBER: _ClassVar[int]
    EVICTABLE_PAGES_FIELD_NUMBER: _ClassVar[int]
    CACHED_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_LOADED_FIELD_NUMBER: _ClassVar[int]
    LOADING_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FETCHES_FIELD_NUMBER: _ClassVar[int]
    FETCH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    FETCH_TTFB_MS_FIELD_NUMBER: _ClassVar[int]
    KV_PAGES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ADAPTER_PAGES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    connected: bool
    running: int
    total_tokens: int
    free_tokens: int
    free_pages: int
    evictable_pages: int
    cached_adapters: _containers.RepeatedScalarFieldContainer[str]
    cache_hits: int
    cache_misses: int
    evictions: int
    bytes_loaded: int
    loading_adapters: _containers.RepeatedScalarFieldContainer[str]
    adapter_fetches: int
    fetch_bytes_per_s: float
    fetch_ttfb_ms: float
    kv_pages: int
    active_adapter_pages: int
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., connected: _Optional[bool] = ..., running: _Optional[int] = ..., total_tokens: _Optional[int] = ..., free_tokens: _Optional[int] = ..., free_pages: _Optional[int] = ..., evictable_pages: _Optional[int] = ..., cached_adapters: _Optional[_Iterable[str]] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., evictions: _Optional[int] = ..., bytes_loaded: _Optional[int] = ..., loading_adapters: _Optional[_Iterable[str]] = ..., adapter_fetches: _Optional[int] = ..., fetch_bytes_per_s: _Optional[float] = ..., fetch_ttfb_ms: _Optional[float] = ..., kv_pages: _Optional[int] = ..., active_adapter_pages: _Optional[int] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("index", "length", "quota_tokens", "held_tokens", "upper_wrs")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    QUOTA_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HELD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UPPER_WRS_FIELD_NUMBER: _ClassVar[int]
    index: int
    length: int
    quota_tokens: int
    held_tokens: int
    upper_wrs: float
    def __init__(self, index: _Optional[int] = ..., length: _Optional[int] = ..., quota_tokens: _Optional[int] = ..., held_tokens: _Optional[int] = ..., upper_wrs: _Optional[float] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("policy", "queued", "running", "workers", "metrics", "completed", "queues", "requests_by_status")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class RequestsByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POLICY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    queued: int
    running: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    metrics: _containers.ScalarMap[str, float]
    completed: int
    queues: _containers.RepeatedCompositeFieldContainer[QueueStatus]
    requests_by_status: _containers.ScalarMap[str, int]
    def __init__(self, policy: _Optional[str] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., completed: _Optional[int] = ..., queues: _Optional[_Iterable[_Union[QueueStatus, _Mapping]]] = ..., requests_by_status: _Optional[_Mapping[str, int]] = ...) -> None: ...
