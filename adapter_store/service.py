"""Thin gRPC servicer over the adapter registry, its hot cache and its streams.

Status codes: a malformed reference is INVALID_ARGUMENT, an unknown or deleted
one NOT_FOUND, an adapter that does not fit the base model FAILED_PRECONDITION
(a refused push says why), stored bytes that fail their sha256 DATA_LOSS, an
object store that cannot be reached UNAVAILABLE, a digest that changed under a
resumed stream ABORTED, and push/delete without the admin token UNAUTHENTICATED.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from adapter_store.core.backends import BackendUnavailable, InvalidKey, ObjectMissing
from adapter_store.core.catalog import (AdapterCatalog, AdapterInvalid, AdapterNotFound,
                                        AdapterRecord, InvalidAdapterId)
from adapter_store.core.hot_cache import HotCache
from adapter_store.core.refs import ADAPTER_FILES
from adapter_store.core.streaming import AdapterCorrupt, stream_adapter
from adapter_store.metrics import StoreMetrics
from chameleon_common.chunk_wire import Buffer, join_chunk
from chameleon_common.tracing import from_grpc
from chameleon.v1 import common_pb2, store_pb2, store_pb2_grpc

log = logging.getLogger(__name__)

# metadata key of the admin token (`Bearer <token>`); `authorization` carries the deployment token
ADMIN_TOKEN_HEADER = "chameleon-admin-token"


def record_to_proto(rec: AdapterRecord) -> common_pb2.AdapterInfo:
    return common_pb2.AdapterInfo(
        adapter_id=rec.adapter_id, rank=rec.rank, lora_alpha=rec.lora_alpha,
        use_rslora=rec.use_rslora, target_modules=rec.target_modules,
        size_bytes=rec.size_bytes, sha256=rec.sha256, valid=rec.valid,
        invalid_reason=rec.invalid_reason, content_mismatch=rec.content_mismatch,
        files=[common_pb2.AdapterFile(name=f.name, size_bytes=f.size_bytes, sha256=f.sha256)
               for f in rec.files],
        name=rec.name, version=rec.version or 0, versions=rec.versions,
        created_unix=rec.created_unix)


def _serialize_chunk(item: tuple[store_pb2.AdapterChunk, Buffer]) -> bytes:
    return join_chunk(*item)


class _FetchSerializerSwap:
    """Stands in for the server while the generated code registers the store's methods, and
    registers them on it with FetchAdapter's responses serialized by join_chunk: the servicer
    yields (message without data, data) pairs. The rest is registered as generated."""

    def __init__(self, server: grpc.aio.Server):
        self.server = server
        self.registered = False

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass   # built again below from the same method handlers, with the swap

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        fetch = handlers["FetchAdapter"]
        handlers = dict(handlers, FetchAdapter=grpc.unary_stream_rpc_method_handler(
            fetch.unary_stream, request_deserializer=fetch.request_deserializer,
            response_serializer=_serialize_chunk))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self.server.add_registered_method_handlers(service, handlers)
        self.registered = True


class AdapterStoreService(store_pb2_grpc.AdapterStoreServicer):
    def __init__(self, catalog: AdapterCatalog, hot: HotCache | None = None,
                 admin_token: str | None = None, readahead: int = 4, tracer=None):
        self.catalog = catalog
        self.tracer = tracer
        self.metrics = StoreMetrics()
        self.hot = hot if hot is not None else HotCache(0)
        self._admin_token = admin_token
        self.readahead = readahead
        self._watchers: set[asyncio.Queue] = set()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register this servicer (not with store_pb2_grpc's function: FetchAdapter needs its own
        response serializer)."""
        swap = _FetchSerializerSwap(server)
        store_pb2_grpc.add_AdapterStoreServicer_to_server(self, swap)
        if not swap.registered:
            raise RuntimeError("the generated store_pb2_grpc did not register its method handlers")

    def _publish(self, kind: int, name: str, refs: list[str]) -> None:
        ev = store_pb2.WatchAdaptersResponse(kind=kind, name=name, refs=refs)
        for q in list(self._watchers):
            if q.qsize() < 1000:   # a watcher that stopped reading loses events, not memory
                q.put_nowait(ev)

    @contextlib.contextmanager
    def _span(self, name: str, context, adapter_id: str):
        """Counts the call by its end status, and (with a tracer) a server span for it: a child
        of the caller's span, whose context comes in the call's metadata. Not made current:
        FetchAdapter is a generator, and context set in one step of it must not leak."""
        span = None
        if self.tracer is not None:
            span = self.tracer.start_span(
                f"chameleon.v1.AdapterStore/{name}", context=from_grpc(context), kind=SpanKind.SERVER,
                attributes={"chameleon.adapter_id": adapter_id})
        try:
            yield span
        except BaseException as e:
            code = context.code() if hasattr(context, "code") else None
            status = code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"
            self.metrics.ended(name, status)
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, f"{status}: {context.details() or e}"))
            raise
        else:
            self.metrics.ended(name, "OK")
        finally:
            if span is not None:
                span.end()

    async def _abort_for(self, e: Exception, ref: str, context) -> None:
        if isinstance(e, (InvalidAdapterId, InvalidKey)):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if isinstance(e, (AdapterNotFound, ObjectMissing)):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"adapter {ref!r} not found in the adapter store")
        if isinstance(e, AdapterInvalid):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        if isinstance(e, AdapterCorrupt):
            await context.abort(grpc.StatusCode.DATA_LOSS, str(e))
        if isinstance(e, BackendUnavailable):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"object store unavailable: {e}")
        raise e

    async def _stat(self, ref: str, context) -> AdapterRecord:
        try:
            return await self.catalog.stat(ref)
        except Exception as e:
            await self._abort_for(e, ref, context)
        raise AssertionError("unreachable")

    async def _require_admin(self, context) -> None:
        if self._admin_token is None:
            return
        md = dict(context.invocation_metadata() or ())
        given = md.get(ADMIN_TOKEN_HEADER, "")
        expected = f"Bearer {self._admin_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"this call needs the admin token in '{ADMIN_TOKEN_HEADER}: Bearer ...'")

    # -- reads ------------------------------------------------------------------
    async def ListAdapters(self, request, context):
        try:
            recs = await self.catalog.list()
        except Exception as e:
            await self._abort_for(e, "", context)
        return common_pb2.ListAdaptersResponse(adapters=[record_to_proto(r) for r in recs])

    async def StatAdapter(self, request, context):
        with self._span("StatAdapter", context, request.adapter_id):
            return record_to_proto(await self._stat(request.adapter_id, context))

    async def FetchAdapter(self, request, context):
        with self._span("FetchAdapter", context, request.adapter_id) as span:
            sent = 0
            async for head, data in self._fetch(request, context, span):
                sent += len(data)
                self.metrics.fetch_bytes.inc(len(data))
                yield head, data
            if span is not None:
                span.set_attribute("chameleon.bytes", sent)

    async def _fetch(self, request, context, span):
        rec = await self._stat(request.adapter_id, context)
        if rec.content_mismatch:
            await context.abort(grpc.StatusCode.DATA_LOSS,
                                f"adapter {rec.adapter_id!r} cannot be served: {rec.invalid_reason}")
        if span is not None:
            span.set_attributes({"chameleon.digest": rec.sha256,
                                 "chameleon.resume_offset": request.resume_offset})
        if not rec.valid:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"adapter {rec.adapter_id!r} cannot be served: {rec.invalid_reason}")
        if request.chunk_bytes < 0 or request.resume_offset < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "chunk_bytes and resume_offset must be >= 0")
        if request.expect_sha256 and request.expect_sha256 != rec.sha256:
            await context.abort(grpc.StatusCode.ABORTED,
                                f"adapter {request.adapter_id!r} changed since the stream began; "
                                "fetch it again from the start")
        chunk = min(request.chunk_bytes or self.catalog.chunk_bytes, self.catalog.chunk_bytes * 4)
        try:
            stream = stream_adapter(self.catalog, self.hot, rec, chunk_bytes=chunk,
                                    start_file=request.resume_file,
                                    start_offset=request.resume_offset, readahead=self.readahead)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            async for c in stream:
                # the data goes next to its message, not into it: join_chunk serializes the two
                # with one copy of the data (protobuf would make two, see chunk_wire)
                yield store_pb2.AdapterChunk(
                    file_name=c.file.name, offset=c.offset, last=c.last,
                    sha256=c.file.sha256 if c.last else "", file_size=c.file.size_bytes,
                    adapter_sha256=rec.sha256), c.data
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (AdapterCorrupt, BackendUnavailable, ObjectMissing) as e:
            log.warning("fetch of %s failed: %s", rec.adapter_id, e)
            if isinstance(e, AdapterCorrupt):   # flagged in ListAdapters, refused from now on
                self.catalog.mark_corrupt(rec.adapter_id, str(e))
            if isinstance(e, ObjectMissing):  # deleted while streaming
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"adapter {rec.adapter_id!r} was deleted during the fetch")
            await self._abort_for(e, rec.adapter_id, context)

    # -- writes -----------------------------------------------------------------
    async def PushAdapter(self, request_iterator, context):
        await self._require_admin(context)
        name = None
        files: dict[str, bytearray] = {}
        sums: dict[str, str] = {}
        limit = self.catalog.limits.max_weights_bytes + self.catalog.limits.max_config_bytes
        total = 0
        async for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            if kind == "header":
                if name is not None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a push has one header")
                name = msg.header.name
                continue
            if name is None or kind != "chunk":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "a push starts with its header, then file chunks")
            c = msg.chunk
            if c.file_name not in ADAPTER_FILES:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"unexpected file {c.file_name!r}: a push carries "
                                    f"{' and '.join(ADAPTER_FILES)}")
            buf = files.setdefault(c.file_name, bytearray())
            if c.offset != len(buf):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{c.file_name}: chunk at offset {c.offset}, expected {len(buf)}")
            total += len(c.data)
            if total > limit:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"the push exceeds the size limit ({limit} bytes)")
            buf += c.data
            if c.last and c.sha256:
                sums[c.file_name] = c.sha256
        if name is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty push")
        for fname, want in sums.items():
            if hashlib.sha256(files[fname]).hexdigest() != want:
                await context.abort(grpc.StatusCode.DATA_LOSS,
                                    f"{fname} arrived damaged: its sha256 does not match")
        try:
            rec = await self.catalog.push(name, {k: bytes(v) for k, v in files.items()})
        except Exception as e:
            await self._abort_for(e, name, context)
        log.info("pushed %s (%d bytes, digest %s)", rec.adapter_id, total, rec.sha256[:12])
        self._publish(store_pb2.ADAPTER_CHANGE_KIND_PUSHED, rec.name, [rec.adapter_id])
        return record_to_proto(rec)

    async def DeleteAdapter(self, request, context):
        await self._require_admin(context)
        try:
            rec = await self.catalog.stat(request.adapter_id)
        except AdapterNotFound:
            rec = None
        except Exception as e:
            await self._abort_for(e, request.adapter_id, context)
        try:
            deleted = await self.catalog.delete(request.adapter_id)
        except Exception as e:
            await self._abort_for(e, request.adapter_id, context)
        if rec is not None:
            self.hot.drop(rec.sha256)  # streams already running hold their own bytes
        log.info("deleted %s", ", ".join(deleted))
        self._publish(store_pb2.ADAPTER_CHANGE_KIND_DELETED, request.adapter_id.split("@")[0], deleted)
        return store_pb2.DeleteAdapterResponse(deleted=deleted)

    async def WatchAdapters(self, request, context):
        q: asyncio.Queue = asyncio.Queue()
        self._watchers.add(q)
        await context.send_initial_metadata(())  # the watcher knows it is subscribed from here on
        try:
            while True:
                yield await q.get()
        finally:
            self._watchers.discard(q)
