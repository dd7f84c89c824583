"""Many streams cancelled mid-flight through real processes: no service logs a traceback
(grpc core logs ExecuteBatchError when a handler writes to a stream its client cancelled)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from chameleon.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e


async def _cancel_after_first(stub, i: int) -> bool:
    # a third cancel after the first token, a third after a few, a third run into a short
    # deadline: the scheduler and the worker are still producing tokens for each of them
    call = stub.Generate(scheduler_pb2.GenerateRequest(
        prompt=f"Once upon a time {i}", params=common_pb2.SamplingParams(max_tokens=64)),
        timeout=60 if i % 3 else 0.3 + 0.01 * i)
    n = 0
    async for _ in call:
        n += 1
        if n >= 1 + (i % 3 == 2) * (i % 7):
            call.cancel()
            return True
    return False


def test_cancelling_many_streams_mid_flight_logs_no_traceback(tiny_assets):
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       worker_args=["--max-running", "16", "--block-size", "4"])
    with Cluster(spec) as cluster:
        async def main() -> list:
            async with grpc.aio.insecure_channel(cluster.address) as ch:
                stub = scheduler_pb2_grpc.SchedulerStub(ch)
                out = []
                for _ in range(4):
                    out += await asyncio.gather(*(_cancel_after_first(stub, i) for i in range(40)),
                                                return_exceptions=True)
                await asyncio.sleep(2.0)   # let the services finish unwinding the cancelled streams
                return out
        results = asyncio.run(main())
        assert sum(r is True for r in results) >= 60, results[:5]   # most saw a token first
        assert all(p.popen.poll() is None for p in cluster.procs)
        for p in cluster.procs:
            log = p.log_path.read_text(errors="replace")
            assert "Traceback" not in log, f"{p.name} logged a traceback:\n{log[-3000:]}"
            assert "Task was destroyed" not in log, p.name
