import asyncio
import time

import pytest

from adapter_store.core.backends import MemoryBackend
from adapter_store.core.throttle import ThrottleConfig, ThrottledBackend


class SlowBackend(MemoryBackend):
    async def read(self, key, offset, length):
        await asyncio.sleep(0.05)
        return await super().read(key, offset, length)


async def test_concurrency_is_capped():
    be = SlowBackend()
    await be.write("a/x", b"0123456789")
    t = ThrottledBackend(be, ThrottleConfig(requests_per_s=1000, max_concurrent=3))
    await asyncio.gather(*[t.read("a/x", i, 1) for i in range(10)])
    assert t.peak_in_flight == 3


async def test_rate_is_capped():
    be = MemoryBackend()
    await be.write("a/x", b"x")
    t = ThrottledBackend(be, ThrottleConfig(requests_per_s=5, max_concurrent=8))
    t0 = time.monotonic()
    await asyncio.gather(*[t.read("a/x", 0, 1) for i in range(11)])
    assert time.monotonic() - t0 >= 2.0   # 5 in the first second, 5 in the next, the 11th after


def test_config_is_validated():
    with pytest.raises(ValueError):
        ThrottleConfig(requests_per_s=0)
