"""Thin gRPC servicer over the adapter catalog."""
from __future__ import annotations

import asyncio

import grpc

from adapter_store.core.catalog import (AdapterCatalog, AdapterInvalid, AdapterNotFound,
                                        AdapterRecord, InvalidAdapterId)
from chameleon.v1 import common_pb2, store_pb2, store_pb2_grpc


def record_to_proto(rec: AdapterRecord) -> common_pb2.AdapterInfo:
    return common_pb2.AdapterInfo(
        adapter_id=rec.adapter_id, rank=rec.rank, lora_alpha=rec.lora_alpha,
        use_rslora=rec.use_rslora, target_modules=rec.target_modules,
        size_bytes=rec.size_bytes, sha256=rec.sha256, valid=rec.valid,
        invalid_reason=rec.invalid_reason,
        files=[common_pb2.AdapterFile(name=f.name, size_bytes=f.size_bytes, sha256=f.sha256)
               for f in rec.files])


class AdapterStoreService(store_pb2_grpc.AdapterStoreServicer):
    def __init__(self, catalog: AdapterCatalog):
        self.catalog = catalog

    async def _stat(self, adapter_id: str, context) -> AdapterRecord:
        try:
            # hashing a large adapter the first time is file I/O: keep the loop free
            return await asyncio.to_thread(self.catalog.stat, adapter_id)
        except InvalidAdapterId as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except AdapterNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"adapter {adapter_id!r} not found in the adapter store")
        raise AssertionError("unreachable")

    async def ListAdapters(self, request, context):
        recs = await asyncio.to_thread(self.catalog.list)
        return common_pb2.ListAdaptersResponse(adapters=[record_to_proto(r) for r in recs])

    async def StatAdapter(self, request, context):
        return record_to_proto(await self._stat(request.adapter_id, context))

    async def FetchAdapter(self, request, context):
        rec = await self._stat(request.adapter_id, context)
        if not rec.valid:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"adapter {rec.adapter_id!r} cannot be served: {rec.invalid_reason}")
        if request.chunk_bytes < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunk_bytes must be >= 0")
        chunks = self.catalog.iter_chunks(rec.adapter_id, request.chunk_bytes or None)
        while True:
            try:
                item = await asyncio.to_thread(next, chunks, None)
            except AdapterInvalid as e:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            if item is None:
                return
            f, offset, data, last = item
            yield store_pb2.AdapterChunk(file_name=f.name, offset=offset, data=data, last=last,
                                         sha256=f.sha256 if last else "", file_size=f.size_bytes)
