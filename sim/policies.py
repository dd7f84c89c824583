"""The policies the paper's evaluation compares, as combinations of the real services' parts.

Each name is a scheduler policy (scheduler_svc/core/policies.py), a worker cache policy
(gpu_worker/core/memory/policy.py) and a worker admission rule (memory/admission.py):

  slora                 fifo       + no cache (slora)  : S-LoRA (FIFO, adapters dropped when
                                                         unused, queued requests' adapters
                                                         prefetched through the scheduler's hints)
  slora-sjf             sjf        + no cache (slora)  : S-LoRA with shortest-predicted-job-first
  vllm-lru              fifo       + lru slots         : vLLM-style fixed adapter slots, LRU
  chameleon             chameleon  + chameleon cache   : the paper's system
  chameleon-cache-only  fifo       + chameleon cache   : the cache alone ("fifo on the same cache")
  chameleon-sched-only  chameleon  + no cache (slora)  : the scheduler alone
  chameleon-lru         chameleon  + idle-memory cache, LRU eviction
  chameleon-fairshare   chameleon  + idle-memory cache, equal score weights

Every policy uses the same worker admission: S-LoRA's own peak-memory estimate
(`slora-peak`); Chameleon is built on S-LoRA and keeps its memory check, and using one
rule keeps admission out of the comparison. Every policy runs prefetch hints (the
scheduler names the adapters its queues need next; the worker stages them into free or
idle memory), which is S-LoRA's prefetch of queued requests' adapters.

vllm-lru's slots: vLLM preallocates `max_loras` slots of the largest rank. We give it
`LRU_POOL_SHARE` of the pool (10%: the share of GPU memory LoRAX reserves for adapters,
design card section 2) in slots of the workload's largest rank; it is the only
policy-specific number, and it belongs to the policy (the cost model has none).

`service_flags(name)` gives the real services' flags for the same combination
(`chameleon serve scheduler --sched-policy`, `chameleon serve worker --cache-policy`),
so `bench live` runs the same names.
"""
from __future__ import annotations

from dataclasses import dataclass

from gpu_worker.core.memory.policy import CacheConfig

LRU_POOL_SHARE = 0.10
ADMISSION = "slora-peak"


@dataclass(frozen=True)
class PolicySpec:
    name: str
    scheduler: str      # scheduler_svc policy name
    cache: str          # gpu_worker cache policy name
    admission: str = ADMISSION


POLICIES: dict[str, PolicySpec] = {p.name: p for p in (
    PolicySpec("slora", "fifo", "slora"),
    PolicySpec("slora-sjf", "sjf", "slora"),
    PolicySpec("vllm-lru", "fifo", "lru"),
    PolicySpec("chameleon", "chameleon", "chameleon"),
    PolicySpec("chameleon-cache-only", "fifo", "chameleon"),
    PolicySpec("chameleon-sched-only", "chameleon", "slora"),
    PolicySpec("chameleon-lru", "chameleon", "chameleon-lru"),
    PolicySpec("chameleon-fairshare", "chameleon", "chameleon-fairshare"),
)}
POLICY_NAMES = tuple(POLICIES)


def get(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}") from None


def cache_config(spec: PolicySpec, pool_pages: int, max_rank_pages: int) -> CacheConfig:
    """The worker cache configuration of a policy on a pool of `pool_pages`."""
    if spec.cache != "lru":
        return CacheConfig(spec.cache)
    slots = max(1, int(LRU_POOL_SHARE * pool_pages) // max_rank_pages)
    return CacheConfig("lru", lru_slots=slots, lru_slot_pages=max_rank_pages)


def service_flags(name: str) -> dict[str, list[str]]:
    """The real services' flags for policy `name`: {"scheduler": [...], "worker": [...]}, and
    under "admission" the worker admission rule (EngineConfig.admission). vllm-lru's slot
    count depends on the worker's pool, so its worker flags leave --lru-slots to the caller."""
    spec = get(name)
    return {"scheduler": ["--sched-policy", spec.scheduler],
            "worker": ["--cache-policy", spec.cache], "admission": [spec.admission]}
