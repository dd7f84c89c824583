"""What the scheduler does with a GenerateRequest before it may queue it.

Every check that can refuse a request runs here, cheapest first, so a bad or huge
request is answered before it costs anything:

1. ids, sampling parameters (finite floats, ranges), stop strings, prompt bytes
   (INVALID_ARGUMENT; a prompt over `max_prompt_bytes` is refused before tokenizing);
2. the request id is reserved atomically: a second live request with the same id
   gets ALREADY_EXISTS at once (`reserve`/`release`);
3. the queue bound: past `max_queued` requests or `max_queued_tokens` tokens waiting,
   RESOURCE_EXHAUSTED with a retry hint (trailing metadata `retry-after-ms`);
4. the adapter's metadata, from the store, or from the cache while the store is away
   (or within a configured TTL; `core/adapter_meta.py`);
5. tokenizing, off the event loop in a bounded thread pool (RESOURCE_EXHAUSTED when
   `max_tokenizing` prompts are already waiting for it).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from chameleon.v1 import common_pb2, store_pb2
from chameleon_common.validation import InvalidId, check_adapter_id, check_request_id, check_sampling
from scheduler_svc.core.adapter_meta import AdapterMetaCache

# a worker's fetch failing with these means the store's record no longer holds
INVALIDATING_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS,
                      grpc.StatusCode.FAILED_PRECONDITION)


@dataclass
class IntakeLimits:
    max_prompt_bytes: int = 256 << 10        # UTF-8 bytes of one prompt
    max_stop_strings: int = 16
    max_stop_bytes: int = 256                # per stop string
    max_queued: int = 4096                   # requests waiting for a worker
    max_queued_tokens: int = 0               # prompt + max_tokens of waiting requests; 0 = no bound
    retry_after_s: float = 1.0               # the hint sent with RESOURCE_EXHAUSTED
    tokenizer_threads: int = 2
    max_tokenizing: int = 64                 # prompts being or waiting to be tokenized
    adapter_meta_ttl_s: float = 0.0          # 0: ask the store every time it is up (it answers
                                             # from its own listing cache, not the object store)
    adapter_meta_max_stale_s: float = 600.0  # how long a cached answer serves while it is down
    store_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_prompt_bytes", "max_stop_strings", "max_stop_bytes", "max_queued",
                     "tokenizer_threads", "max_tokenizing"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.max_queued_tokens, self.retry_after_s, self.adapter_meta_ttl_s,
               self.adapter_meta_max_stale_s) < 0:
            raise ValueError("max_queued_tokens, retry_after_s and the adapter_meta times must be >= 0")
        if self.store_timeout_s <= 0:
            raise ValueError("store_timeout_s must be positive")


class Refused(Exception):
    """A request the scheduler answers with `code` (and optional trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple = ()):
        super().__init__(message)
        self.code, self.message, self.trailers = code, message, trailers


def check_request(request, limits: IntakeLimits) -> None:
    """Step 1: everything that needs nothing but the request. Raises Refused."""
    p = request.params
    try:
        if request.request_id:
            check_request_id(request.request_id)
        if request.adapter_id:
            check_adapter_id(request.adapter_id)
        if not request.prompt:
            raise ValueError("prompt must not be empty")
        n = len(request.prompt.encode("utf-8", "surrogatepass"))
        if n > limits.max_prompt_bytes:
            raise ValueError(f"prompt is {n} bytes; the limit is {limits.max_prompt_bytes}")
        check_sampling(max_tokens=p.max_tokens, temperature=p.temperature,
                       top_p=p.top_p if p.HasField("top_p") else 1.0)
        if len(p.stop) > limits.max_stop_strings:
            raise ValueError(f"at most {limits.max_stop_strings} stop strings, got {len(p.stop)}")
        for s in p.stop:
            if not s or len(s.encode()) > limits.max_stop_bytes:
                raise ValueError(f"each stop string must have 1 to {limits.max_stop_bytes} bytes")
    except InvalidId as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    except ValueError as e:
        msg = str(e)
        if not msg.startswith("prompt"):
            msg = "params." + msg
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, msg) from None


class Intake:
    def __init__(self, store, limits: IntakeLimits, clock):
        self.store = store
        self.limits = limits
        self.meta: AdapterMetaCache[common_pb2.AdapterInfo] = AdapterMetaCache(
            clock, limits.adapter_meta_ttl_s, max_stale_s=limits.adapter_meta_max_stale_s)
        self._pool = ThreadPoolExecutor(limits.tokenizer_threads, thread_name_prefix="tokenize")
        self._tokenizing = 0
        self._reserved: set[str] = set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- request ids ------------------------------------------------------------
    def reserve(self, rid: str) -> None:
        """Atomic on the event loop: no await between the check and the claim."""
        if rid in self._reserved:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"request id {rid!r} is already running")
        self._reserved.add(rid)

    def release(self, rid: str) -> None:
        self._reserved.discard(rid)

    # -- queue bound ------------------------------------------------------------
    def check_room(self, queued: int, queued_tokens: int, tokens: int) -> None:
        lim = self.limits
        full = queued >= lim.max_queued or (
            lim.max_queued_tokens and queued_tokens + tokens > lim.max_queued_tokens)
        if full:
            ms = int(lim.retry_after_s * 1000)
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the scheduler's queue is full ({queued} requests, {queued_tokens} tokens "
                          f"waiting); retry after {lim.retry_after_s:g} s",
                          (("retry-after-ms", str(ms)),))

    # -- adapter metadata ---------------------------------------------------------
    async def adapter_info(self, adapter_id: str, resident_anywhere, metadata=()
                           ) -> common_pb2.AdapterInfo:
        """From the cache when fresh, else from the store; while the store cannot be reached,
        a cached record serves adapters some worker holds (`resident_anywhere(id)`)."""
        info = self.meta.fresh(adapter_id)
        if info is not None:
            return info
        try:
            info = await self.store.StatAdapter(store_pb2.StatAdapterRequest(adapter_id=adapter_id),
                                                timeout=self.limits.store_timeout_s,
                                                metadata=metadata or None)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS):
                self.meta.invalidate(adapter_id)
                raise Refused(code, e.details() or code.name) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise Refused(code, e.details() or code.name) from None
            stale = self.meta.usable_while_store_down(adapter_id, resident_anywhere(adapter_id))
            if stale is not None:
                return stale
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"adapter store: {e.details()}") from None
        self.meta.put(adapter_id, info)
        return info

    def worker_error(self, adapter_id: str | None, code: grpc.StatusCode) -> None:
        if adapter_id and code in INVALIDATING_CODES:
            self.meta.invalidate(adapter_id)

    # -- tokenizing -------------------------------------------------------------
    async def tokenize(self, tokenizer, prompt: str) -> list[int]:
        if self._tokenizing >= self.limits.max_tokenizing:
            ms = int(self.limits.retry_after_s * 1000)
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self._tokenizing} prompts are waiting to be tokenized; retry after "
                          f"{self.limits.retry_after_s:g} s", (("retry-after-ms", str(ms)),))
        self._tokenizing += 1
        try:
            loop = asyncio.get_running_loop()
            # encode_batch, unlike encode, releases the GIL while it works
            enc = await loop.run_in_executor(
                self._pool, lambda: tokenizer.encode_batch([prompt], add_special_tokens=False))
            return enc[0].ids
        finally:
            self._tokenizing -= 1

    def metrics(self) -> dict[str, float]:
        return {**self.meta.metrics(), "tokenizing": float(self._tokenizing)}
