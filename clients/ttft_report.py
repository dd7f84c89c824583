"""The TTFT breakdown of the slowest requests of a load, with their trace ids."""
from __future__ import annotations

from clients.loadgen import LoadResult

COLUMNS = ("ttft_ms", "queue_ms", "fetch_ms", "load_ms", "prefill_ms", "other_ms")


def breakdown(r: LoadResult) -> dict[str, float]:
    """The scheduler's timings as disjoint parts of the TTFT (the fetch from the store is split
    out of the adapter wait; `other` is what the parts leave: RPC hops, engine step waits)."""
    t = r.server_timings
    fetch = t.get("adapter_fetch_ms", 0.0)
    load = max(0.0, t.get("adapter_load_ms", 0.0) - fetch)
    ttft = t.get("ttft_ms", 0.0)
    queue, prefill = t.get("queue_ms", 0.0), t.get("prefill_ms", 0.0)
    return {"ttft_ms": ttft, "queue_ms": queue, "fetch_ms": fetch, "load_ms": load,
            "prefill_ms": prefill, "other_ms": ttft - queue - fetch - load - prefill}


def slowest(results: list[LoadResult], n: int = 5) -> list[LoadResult]:
    ok = [r for r in results if r.error is None and "ttft_ms" in r.server_timings]
    return sorted(ok, key=lambda r: r.server_timings["ttft_ms"], reverse=True)[:n]


def format_slowest(results: list[LoadResult], n: int = 5) -> str:
    rows = slowest(results, n)
    w = max([len("adapter")] + [len(r.request.adapter or "base") for r in rows])
    head = f"{'trace id':<32}  {'adapter':<{w}}" + "".join(f"{c[:-3]:>10}" for c in COLUMNS)
    lines = [f"TTFT breakdown of the {len(rows)} slowest requests (ms; find the trace ids in Jaeger)",
             head, "-" * len(head)]
    for r in rows:
        b = breakdown(r)
        lines.append(f"{r.trace_id or '(untraced)':<32}  {(r.request.adapter or 'base'):<{w}}"
                     + "".join(f"{b[c]:>10.1f}" for c in COLUMNS))
    return "\n".join(lines)
