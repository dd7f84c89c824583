"""`--sim-profile` worker (live-sim): the real worker service around a modelled device.

The process serves the same Worker API over the same gRPC streams as a model-running
worker, with `SimEngine` (gpu_worker/core/sim_engine.py) in place of the model: step
times, the pool's size and adapter copies come from the device profile's cost model.
Adapters are described, not loaded: `SimAdapterLoader` asks the store for an adapter's
rank and target modules (StatAdapter; a `--sim-catalog` store lists synthetic ones and
serves no weights) and builds its page layout; the host-to-device copy is then modelled
on the worker's one shared link. As in the paper's setup (adapters kept in host memory),
the store-to-host transfer costs only the StatAdapter round trip.
"""
from __future__ import annotations

import logging

import grpc

from chameleon_common.server import CHANNEL_OPTIONS
from chameleon.v1 import store_pb2, store_pb2_grpc
from gpu_worker.adapter_fetcher import AdapterFetchError
from gpu_worker.core.memory.sim_pool import SimAdapter

log = logging.getLogger("gpu_worker")


class SimAdapterLoader:
    """Adapters as the store describes them (rank, target modules), with no weights.

    Descriptions are read once (`preload`: the store's whole list at start; StatAdapter for
    an id it did not list) and kept, as the paper's host memory keeps every adapter, so a
    load costs no store round trip: only its modelled host-to-device copy."""

    def __init__(self, store_address: str, cost):
        self.channel = grpc.aio.insecure_channel(store_address, options=CHANNEL_OPTIONS)
        self.stub = store_pb2_grpc.AdapterStoreStub(self.channel)
        self.cost = cost
        self._known: dict[str, SimAdapter] = {}

    @property
    def known(self) -> dict[str, SimAdapter]:
        """Every adapter described so far, by id."""
        return dict(self._known)

    async def preload(self) -> int:
        """Describe every valid adapter the store lists; returns how many."""
        from chameleon.v1 import common_pb2

        try:
            r = await self.stub.ListAdapters(common_pb2.ListAdaptersRequest(), timeout=30)
        except grpc.aio.AioRpcError as e:
            log.warning("live-sim: the store's adapter list is unavailable (%s); adapters will "
                        "be described one by one", e.code())
            return 0
        for info in r.adapters:
            try:
                self._known[info.adapter_id] = self._describe(info)
            except AdapterFetchError:
                pass
        return len(self._known)

    async def load(self, adapter_id: str) -> SimAdapter:
        known = self._known.get(adapter_id)
        if known is not None:
            return known
        try:
            info = await self.stub.StatAdapter(store_pb2.StatAdapterRequest(adapter_id=adapter_id),
                                               timeout=30)
        except grpc.aio.AioRpcError as e:
            raise AdapterFetchError(e.code(), e.details() or str(e.code())) from e
        self._known[adapter_id] = adapter = self._describe(info)
        return adapter

    def _describe(self, info) -> SimAdapter:
        from gpu_worker.core.sim_engine import sim_adapter

        adapter_id = info.adapter_id
        if not info.valid:
            raise AdapterFetchError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"adapter {adapter_id!r}: {info.invalid_reason}")
        modules = list(info.target_modules)
        unknown = [m for m in modules if m not in self.cost.lora_modules]
        if unknown or info.rank <= 0:
            raise AdapterFetchError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"adapter {adapter_id!r} (rank {info.rank}, modules {modules}) does "
                                    f"not fit the modelled {self.cost.profile['model']['name']}, whose "
                                    f"LoRA modules are {sorted(self.cost.lora_modules)}")
        return sim_adapter(adapter_id, info.rank, modules, self.cost, digest=info.sha256)

    async def close(self) -> None:
        await self.channel.close()


def engine_config(cfg, cost):
    """The EngineConfig of a --sim-profile worker: the profile's pool and context."""
    from gpu_worker.core.engine import EngineConfig
    from gpu_worker.core.memory import CacheConfig, PrefetcherConfig, layout_adapter
    from gpu_worker.core.memory.layout import AdapterShape
    from gpu_worker.core.memory.geometry import row_geometry
    from gpu_worker.core.sim_engine import model_config

    mc = model_config(cost)
    pages = cost.pool_pages(cfg.block_size)
    cache = CacheConfig(cfg.cache_policy)
    if cfg.cache_policy == "lru":   # slots sized for --lru-max-rank on the profile's LoRA modules
        shape = AdapterShape.uniform(mc.num_layers, cfg.lru_max_rank, dict(cost.lora_modules))
        slot_pages = layout_adapter(row_geometry(mc, cfg.block_size), shape).num_pages
        cache = CacheConfig("lru", lru_slots=cfg.lru_slots, lru_slot_pages=slot_pages)
        if cfg.lru_slots * slot_pages + -(-cost.max_context // cfg.block_size) > pages:
            raise SystemExit(f"--cache-policy lru: {cfg.lru_slots} slots of rank {cfg.lru_max_rank} "
                             f"need {cfg.lru_slots * slot_pages} of the profile's {pages} pages plus "
                             f"room for one full-context request: lower --lru-slots")
    max_context = min(cfg.max_context, cost.max_context)
    return EngineConfig(block_size=cfg.block_size, num_blocks=pages, max_running=cfg.max_running,
                        max_step_tokens=max(cfg.max_step_tokens, max_context), max_context=max_context,
                        cache=cache, admission=cfg.admission,
                        prefetch=PrefetcherConfig() if cfg.predictive_prefetch else None)


async def serve_sim(cfg) -> None:
    from chameleon_common.server import Server
    from chameleon.v1 import worker_pb2, worker_pb2_grpc
    from gpu_worker.core.sim_engine import SimEngine, sim_tokenizer
    from gpu_worker.service import WorkerService
    from sim.cost_model import CostModel

    cost = CostModel.from_profile(cfg.sim_profile)
    ecfg = engine_config(cfg, cost)
    tok = sim_tokenizer()
    engine = SimEngine(cost, tok, ecfg, max_step_tokens=cfg.max_step_tokens or ecfg.max_step_tokens)
    info = worker_pb2.WorkerInfo(
        worker_id=cfg.worker_id, model_name=f"{cost.profile['model']['name']} (modelled)",
        max_context=ecfg.max_context, vocab_size=tok.get_vocab_size(), block_size=cfg.block_size,
        total_pages=ecfg.num_blocks, max_running=cfg.max_running,
        tokenizer_json=tok.to_str().encode(), eos_token_ids=sorted(engine.eos_ids),
        device=f"sim:{cost.name}", page_bytes=cost.page_bytes(cfg.block_size),
        cache_policy=cfg.cache_policy)
    loader = SimAdapterLoader(cfg.store, cost)
    log.info("live-sim: %d adapter descriptions read from the store (in host memory)",
             await loader.preload())
    engine.host.update(loader.known)
    service = WorkerService(engine, None, info, loader=loader)
    server = Server(cfg.host, cfg.port, ["chameleon.v1.Worker"])
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server.server)
    service.start()
    log.info("worker %s: live-sim of %s (profile %s), pool of %d pages of %d tokens, cache policy "
             "%s, admission %s, %d tokens per step: step times and adapter copies are modelled",
             cfg.worker_id, cost.profile["model"]["name"], cost.name, ecfg.num_blocks,
             cfg.block_size, cfg.cache_policy, cfg.admission, engine.planner.max_step_tokens)
    try:
        await server.run(port_file=cfg.port_file, grace_s=cfg.grace_s, drain=service.drain)
    finally:
        service.thread.stop()
        log.info("live-sim: %d steps, %.1f s modelled, %.2f s behind the modelled pace",
                 engine.steps, engine.modelled_s, engine.late_s)
        await loader.close()
