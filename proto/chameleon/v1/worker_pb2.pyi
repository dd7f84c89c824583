from chameleon.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerCommand(_message.Message):
    __slots__ = ("admit", "cancel", "prefetch")
    ADMIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    admit: Admit
    cancel: Cancel
    prefetch: PrefetchHint
    def __init__(self, admit: _Optional[_Union[Admit, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., prefetch: _Optional[_Union[PrefetchHint, _Mapping]] = ...) -> None: ...

class PrefetchHint(_message.Message):
    __slots__ = ("adapter_ids",)
    ADAPTER_IDS_FIELD_NUMBER: _ClassVar[int]
    adapter_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, adapter_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Admit(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "adapter_id", "params", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    adapter_id: str
    params: _common_pb2.SamplingParams
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., adapter_id: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "model_name", "max_context", "vocab_size", "block_size", "total_pages", "max_running", "tokenizer_json", "eos_token_ids", "device", "page_bytes", "cache_policy")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_JSON_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model_name: str
    max_context: int
    vocab_size: int
    block_size: int
    total_pages: int
    max_running: int
    tokenizer_json: bytes
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    device: str
    page_bytes: int
    cache_policy: str
    def __init__(self, worker_id: _Optional[str] = ..., model_name: _Optional[str] = ..., max_context: _Optional[int] = ..., vocab_size: _Optional[int] = ..., block_size: _Optional[int] = ..., total_pages: _Optional[int] = ..., max_running: _Optional[int] = ..., tokenizer_json: _Optional[bytes] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., device: _Optional[str] = ..., page_bytes: _Optional[int] = ..., cache_policy: _Optional[str] = ...) -> None: ...

class TokenEvent(_message.Message):
    __slots__ = ("request_id", "token_ids", "text", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    timings: _common_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("request_id", "finish_reason", "completion_tokens", "timings", "text")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    finish_reason: _common_pb2.FinishReason
    completion_tokens: int
    timings: _common_pb2.Timings
    text: str
    def __init__(self, request_id: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., completion_tokens: _Optional[int] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class TokenBatch(_message.Message):
    __slots__ = ("tokens", "completions")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenEvent]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenEvent, _Mapping]]] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("request_id", "code", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    code: int
    message: str
    def __init__(self, request_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class WorkerState(_message.Message):
    __slots__ = ("worker_id", "total_pages", "free_pages", "evictable_pages", "running", "waiting", "cached_adapters", "loading_adapters", "cache_hits", "cache_misses", "evictions", "bytes_loaded", "adapter_fetches", "fetch_bytes_per_s", "fetch_ttfb_ms", "kv_pages", "active_adapter_pages")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    FREE_PAGES_FIELD_NUMBER: _ClassVar[int]
    EVICTABLE_PAGES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    CACHED_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    LOADING_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_LOADED_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FETCHES_FIELD_NUMBER: _ClassVar[int]
    FETCH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    FETCH_TTFB_MS_FIELD_NUMBER: _ClassVar[int]
    KV_PAGES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ADAPTER_PAGES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    total_pages: int
    free_pages: int
    evictable_pages: int
    running: int
    waiting: int
    cached_adapters: _containers.RepeatedScalarFieldContainer[str]
    loading_adapters: _containers.RepeatedScalarFieldContainer[str]
    cache_hits: int
    cache_misses: int
    evictions: int
    bytes_loaded: int
    adapter_fetches: int
    fetch_bytes_per_s: float
    fetch_ttfb_ms: float
    kv_pages: int
    active_adapter_pages: int
    def __init__(self, worker_id: _Optional[str] = ..., total_pages: _Optional[int] = ..., free_pages: _Optional[int] = ..., evictable_pages: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., cached_adapters: _Optional[_Iterable[str]] = ..., loading_adapters: _Optional[_Iterable[str]] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., evictions: _Optional[int] = ..., bytes_loaded: _Optional[int] = ..., adapter_fetches: _Optional[int] = ..., fetch_bytes_per_s: _Optional[float] = ..., fetch_ttfb_ms: _Optional[float] = ..., kv_pages: _Optional[int] = ..., active_adapter_pages: _Optional[int] = ...) -> None: ...

class WorkerEvent(_message.Message):
    __slots__ = ("hello", "token", "completion", "error", "state", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerInfo
    token: TokenEvent
    completion: Completion
    error: RequestError
    state: WorkerState
    batch: TokenBatch
    def __init__(self, hello: _Optional[_Union[WorkerInfo, _Mapping]] = ..., token: _Optional[_Union[TokenEvent, _Mapping]] = ..., completion: _Optional[_Union[Completion, _Mapping]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ..., state: _Optional[_Union[WorkerState, _Mapping]] = ..., batch: _Optional[_Union[TokenBatch, _Mapping]] = ...) -> None: ...
