"""The store's servicer over a sim catalog (live-sim): reads as usual, no weights.

ListAdapters and StatAdapter answer from the `SimCatalog`; FetchAdapter fails with
FAILED_PRECONDITION (a model-running worker pointed at a sim store learns why at
once), and pushes and deletes are refused the same way: the catalog is fixed at start.
"""
from __future__ import annotations

import grpc

from adapter_store.core.sim_catalog import NO_WEIGHTS, SimCatalog
from adapter_store.service import AdapterStoreService


class SimStoreService(AdapterStoreService):
    def __init__(self, catalog: SimCatalog):
        super().__init__(catalog)

    async def FetchAdapter(self, request, context):
        rec = await self._stat(request.adapter_id, context)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"adapter {rec.adapter_id!r} {NO_WEIGHTS}")
        yield  # unreachable: a streaming handler

    async def PushAdapter(self, request_iterator, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "this store serves a fixed sim catalog (--sim-catalog/--sim-adapters); "
                            "it takes no pushes")

    async def DeleteAdapter(self, request, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "this store serves a fixed sim catalog (--sim-catalog/--sim-adapters); "
                            "nothing can be deleted")
