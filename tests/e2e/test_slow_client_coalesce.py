"""A client that falls behind gets the tokens waiting for it merged into few messages, every
token in order (issue 10 item 4), through real processes: the fake worker of `bench relay`
(the real Worker protocol and the real worker's `_Stream`), a scheduler process, the client."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

from clients.bench.relay import _wait_file
from clients.seaweedfs import free_port
from clients.bench.relay_worker import VOCAB, text_of
from clients.client import ChameleonClient

TOKENS = 6000
PAUSE_S = 3.0   # the worker makes ~2 tokens/ms: more than gRPC's flow-control windows hold


def test_a_paused_client_receives_fewer_messages_than_tokens_and_every_token_in_order(tmp_path):
    procs: list[subprocess.Popen] = []
    try:
        fw = subprocess.Popen([sys.executable, "-m", "clients.bench.relay_worker", "--workers", "1",
                               "--batch", "4", "--step-s", "0.0005", "--port-file",
                               str(tmp_path / "ports"), "--stats", str(tmp_path / "stats")])
        procs.append(fw)
        (port,) = json.loads(_wait_file(tmp_path / "ports", fw, "the fake worker"))
        sched = subprocess.Popen([sys.executable, "-m", "scheduler_svc.main", "--store",
                                  f"127.0.0.1:{free_port()}", "--port", "0", "--port-file",
                                  str(tmp_path / "sched.port"), "--log-level", "WARNING",
                                  "--worker", f"127.0.0.1:{port}"])
        procs.append(sched)
        address = f"127.0.0.1:{int(_wait_file(tmp_path / 'sched.port', sched, 'the scheduler'))}"

        async def slow_client() -> tuple[int, list[int], str]:
            messages, ids, text = 0, [], []
            async with ChameleonClient(address) as c:
                async for ch in c.generate("tok tok", max_tokens=TOKENS, ignore_eos=True):
                    if messages == 0:
                        await asyncio.sleep(PAUSE_S)   # fall behind: the stream backs up
                    messages += 1
                    ids += ch.token_ids
                    text.append(ch.text)
            return messages, ids, "".join(text)

        messages, ids, text = asyncio.run(asyncio.wait_for(slow_client(), 120))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    assert ids == [i % VOCAB for i in range(TOKENS)]
    assert text == "".join(text_of(i) for i in range(TOKENS))
    # one message per token (plus the completion) without merging; many fewer with it
    assert messages < TOKENS * 0.9, messages
