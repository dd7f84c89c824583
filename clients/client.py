"""Async Python client for the Scheduler API.

    async with ChameleonClient("127.0.0.1:50051") as client:
        async for chunk in client.generate("Hello", adapter="sql-r16", max_tokens=32):
            print(chunk.text, end="")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import grpc

from opentelemetry.trace import SpanKind, Status, StatusCode

from chameleon_common.server import CHANNEL_OPTIONS
from chameleon_common.tracing import breakdown_attributes, grpc_metadata, span_context
from chameleon.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

FINISH_NAMES = {common_pb2.FINISH_REASON_EOS: "eos", common_pb2.FINISH_REASON_LENGTH: "length",
                common_pb2.FINISH_REASON_STOP_STRING: "stop", common_pb2.FINISH_REASON_CANCELLED: "cancelled"}


class ChameleonError(Exception):
    """A request failed; `code` is the gRPC status code, `message` says what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass
class Chunk:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None = None      # eos | length | stop | cancelled, on the last chunk
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    trace_id: str = ""                    # on the first chunk, when the request is traced


class ChameleonClient:
    """`tracer` (an OpenTelemetry tracer): each generate() starts its trace with a client
    span. Without one, a trace context the caller passes (or has current) is propagated.
    With `tls_ca` the channel speaks TLS and trusts that CA; `tls_cert`/`tls_key` add a
    client certificate for a scheduler that requires one (mTLS)."""

    def __init__(self, address: str, tracer=None, *, tls_ca: Path | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None):
        self.address = address
        self.tracer = tracer
        if tls_ca is None:
            self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None)
            self._channel = grpc.aio.secure_channel(address, creds, options=CHANNEL_OPTIONS)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    async def __aenter__(self) -> "ChameleonClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(self, prompt: str, *, adapter: str | None = None, max_tokens: int = 64,
                       temperature: float = 0.0, top_p: float | None = None,
                       seed: int | None = None, stop: list[str] | None = None,
                       min_tokens: int = 0, ignore_eos: bool = False,
                       request_id: str = "", timeout: float | None = None,
                       trace_context=None,
                       sim_output_tokens: int | None = None) -> AsyncIterator[Chunk]:
        """Streams the completion. `min_tokens`: EOS and stop strings cannot end it earlier;
        `ignore_eos`: EOS tokens are generated like any other, only max_tokens or a stop
        string ends it. `trace_context` (an OpenTelemetry Context; default: the current one)
        is the parent of the request's trace. `sim_output_tokens` (live-sim only): a
        --sim-profile worker ends the output with EOS as this token; real models ignore it."""
        params = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                           stop=stop or [], min_tokens=min_tokens,
                                           ignore_eos=ignore_eos)
        if top_p is not None:
            params.top_p = top_p
        if seed is not None:
            params.seed = seed
        if sim_output_tokens is not None:
            params.sim_output_tokens = sim_output_tokens
        req = scheduler_pb2.GenerateRequest(prompt=prompt, adapter_id=adapter or "", params=params,
                                            request_id=request_id)
        span = None
        if self.tracer is not None:
            span = self.tracer.start_span("chameleon.v1.Scheduler/Generate", context=trace_context,
                                          kind=SpanKind.CLIENT,
                                          attributes={"chameleon.adapter_id": adapter or ""})
            trace_context = span_context(span)
        call = self._stub.Generate(req, timeout=timeout, metadata=grpc_metadata(trace_context))
        last: dict[str, float] = {}
        try:
            async for r in call:
                timings = {}
                if r.HasField("timings"):
                    t = r.timings
                    timings = {"queue_ms": t.queue_ms, "adapter_load_ms": t.adapter_load_ms,
                               "adapter_fetch_ms": t.adapter_fetch_ms, "prefill_ms": t.prefill_ms,
                               "ttft_ms": t.ttft_ms, "total_ms": t.total_ms,
                               "tbt_p99_ms": t.tbt_p99_ms}
                    last = timings
                yield Chunk(r.request_id, r.text, list(r.token_ids),
                            FINISH_NAMES.get(r.finish_reason), r.prompt_tokens,
                            r.completion_tokens, timings, r.trace_id)
                if span is not None and r.finish_reason:
                    span.set_attributes(breakdown_attributes(
                        ttft_ms=last.get("ttft_ms", 0.0), queue_ms=last.get("queue_ms", 0.0),
                        adapter_wait_ms=last.get("adapter_load_ms", 0.0),
                        adapter_fetch_ms=last.get("adapter_fetch_ms", 0.0),
                        prefill_ms=last.get("prefill_ms", 0.0), tbt_p99_ms=last.get("tbt_p99_ms", 0.0),
                        output_tokens=r.completion_tokens))
        except grpc.aio.AioRpcError as e:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, f"{e.code().name}: {e.details()}"))
            raise ChameleonError(e.code(), e.details() or "") from None
        finally:
            call.cancel()  # leaving the loop early cancels the generation server-side
            if span is not None:
                span.end()

    async def complete(self, prompt: str, **kw) -> tuple[str, list[int], str | None]:
        """The whole completion: (text, token ids, finish reason)."""
        text, ids, finish = [], [], None
        async for c in self.generate(prompt, **kw):
            text.append(c.text)
            ids += c.token_ids
            finish = c.finish_reason or finish
        return "".join(text), ids, finish

    async def list_adapters(self) -> list[common_pb2.AdapterInfo]:
        try:
            r = await self._stub.ListAdapters(common_pb2.ListAdaptersRequest(), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise ChameleonError(e.code(), e.details() or "") from None
        return list(r.adapters)

    async def status(self) -> scheduler_pb2.GetStatusResponse:
        try:
            return await self._stub.GetStatus(scheduler_pb2.GetStatusRequest(), timeout=10)
        except grpc.aio.AioRpcError as e:
            raise ChameleonError(e.code(), e.details() or "") from None
