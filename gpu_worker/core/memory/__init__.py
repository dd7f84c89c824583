"""Unified paged memory for KV blocks and cached LoRA adapters (S-LoRA paging + Chameleon cache).

Pure Python: the torch pool tensors are indexed by the page ids decided here.
"""
from .adapter_cache import AdapterCache, AdapterEntry, CacheStats
from .eviction import (CHAMELEON_WEIGHTS, FAIR_SHARE_WEIGHTS, Candidate, EvictionOrder, LruOrder,
                       ScoreOrder, ScoreWeights)
from .layout import (AdapterLayout, AdapterShape, LoraModuleShape, PageGeometry, RowRun,
                     layout_adapter, pages_needed)
from .page_pool import PagePool
from .policy import POLICY_NAMES, CacheConfig, CachePolicy, build_policy
from .prefetch import ArrivalHistogramPrefetcher, PrefetcherConfig

__all__ = [
    "AdapterCache", "AdapterEntry", "CacheStats", "CHAMELEON_WEIGHTS", "FAIR_SHARE_WEIGHTS",
    "Candidate", "EvictionOrder", "LruOrder", "ScoreOrder", "ScoreWeights", "AdapterLayout",
    "AdapterShape", "LoraModuleShape", "PageGeometry", "RowRun", "layout_adapter", "pages_needed",
    "PagePool", "POLICY_NAMES", "CacheConfig", "CachePolicy", "build_policy",
    "ArrivalHistogramPrefetcher", "PrefetcherConfig",
]
