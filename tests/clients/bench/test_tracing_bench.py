"""`chameleon bench tracing` in one small round: tracing off exports nothing, tracing on
exports every request's spans to the receiver, and the throughput ratio comes out."""
from pathlib import Path

import pytest

from clients.bench.tracing import run_bench

pytestmark = pytest.mark.e2e


async def test_quick_round_off_and_on(tiny_assets):
    adapters = Path(tiny_assets["adapters"])
    ids = sorted(p.name for p in adapters.iterdir() if p.is_dir())[:2]
    out = await run_bench(Path(tiny_assets["model"]), adapters, ids, requests=2, max_tokens=4,
                          concurrency=4, rounds=1, policy="fifo")
    off, on = out["rounds"]
    assert (off["mode"], on["mode"]) == ("off", "on")
    assert off["errors"] == on["errors"] == 0
    assert off["spans_received"] == 0
    # 2 timed requests + 1 warm-up, each a trace with spans from scheduler, worker and store
    assert on["spans_received"] >= 3 * 8
    assert out["ratio"] == pytest.approx(on["output_tok_per_s"] / off["output_tok_per_s"])
    assert out["pair_ratios"] == [pytest.approx(out["ratio"])]
