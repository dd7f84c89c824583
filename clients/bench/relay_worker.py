"""Fake workers for `chameleon bench relay`: the real Worker gRPC API, no model.

`python -m clients.bench.relay_worker --workers N --batch B --step-s S --port-file F
--stats F2` serves N Worker services on N loopback ports, in one process (one event loop),
so that a single scheduler can be given many workers on a 2-core machine. Each speaks the
protocol a real worker does (gpu_worker/service.py): `hello` first, then for every engine
"step" one token for each of up to B running requests, with the completions of the requests
that reached their `max_tokens`. The output goes out as the real worker's does, through its
`_Stream`: a step joins the TokenBatch still queued when the stream has not taken it yet, so
a scheduler that falls behind gets several steps per message, as it would from a GPU that
does not wait for it. Steps come every S seconds (the engine's pace, whatever the stream
does), or with S = 0 one step each time the stream has taken the previous one (the most a
scheduler can pull, one step per message).

Token i of a request has id i % VOCAB and text TEXT(i) (" 0", " 1", ...), so a client can
check that it got every token in order. Every token put on the wire is counted; the counts
go to `--stats` (JSON) on SIGTERM, so the bench can check that the clients received exactly
the tokens the workers sent.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import deque
from pathlib import Path

import grpc

from chameleon.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from chameleon_common.server import CHANNEL_OPTIONS
from gpu_worker.service import _Stream

# the scheduler never reads token ids (only the worker detokenizes), so a fake vocabulary
# this large lets every position of a request carry its own id
VOCAB = 1 << 16
_TEXTS: list[str] = []


def text_of(i: int) -> str:
    """The text of token i of a request (built once: the fake workers send millions)."""
    while len(_TEXTS) <= i:
        _TEXTS.append(f" {len(_TEXTS)}")
    return _TEXTS[i]


class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """One worker: decodes up to `batch` requests, one token each per step."""

    def __init__(self, worker_id: str, batch: int, step_s: float):
        from gpu_worker.core.sim_engine import sim_tokenizer

        tok = sim_tokenizer()   # the scheduler tokenizes prompts with it
        self.batch, self.step_s = batch, step_s
        self.info = worker_pb2.WorkerInfo(
            worker_id=worker_id, model_name="fake (relay bench: no model)", max_context=1 << 20,
            vocab_size=VOCAB, block_size=16, total_pages=1 << 26,
            max_running=batch, tokenizer_json=tok.to_str().encode(),
            eos_token_ids=[tok.token_to_id("</s>")], device="fake", page_bytes=1)
        self.sent_tokens = 0       # tokens handed to gRPC (TokenEvent.token_ids)
        self.completions = 0
        self.steps = 0
        self.batches = 0           # TokenBatch messages handed to gRPC (steps merge into one)
        self.admitted = 0
        self.cancelled = 0

    async def GetInfo(self, request, context):
        return self.info

    async def Connect(self, request_iterator, context):
        waiting: deque[tuple[str, int]] = deque()   # (request id, max_tokens)
        running: dict[str, list[int]] = {}          # request id -> [tokens left, tokens sent]
        wake = asyncio.Event()
        stream = _Stream(asyncio.Queue())            # the real worker's outgoing queue
        taken = asyncio.Event()                      # the stream took the open batch

        async def read() -> None:
            async for cmd in request_iterator:
                kind = cmd.WhichOneof("kind")
                if kind == "admit":
                    self.admitted += 1
                    waiting.append((cmd.admit.request_id, max(1, cmd.admit.params.max_tokens)))
                    wake.set()
                elif kind == "cancel":
                    self.cancelled += 1
                    running.pop(cmd.cancel.request_id, None)

        async def engine() -> None:
            next_at = time.monotonic()
            while True:
                while waiting and len(running) < self.batch:
                    rid, n = waiting.popleft()
                    running[rid] = [n, 0]
                if not running:
                    wake.clear()
                    await wake.wait()
                    next_at = time.monotonic()
                    continue
                if self.step_s > 0:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    # a late step is not made up for: the pace is one step per step_s at most
                    next_at = max(next_at + self.step_s, time.monotonic())
                elif stream.open_batch is not None:
                    taken.clear()
                    await taken.wait()
                self._step(running, stream.batch())

        reader = asyncio.create_task(read())
        stepper = asyncio.create_task(engine())
        try:
            yield worker_pb2.WorkerEvent(hello=self.info)
            yield worker_pb2.WorkerEvent(state=worker_pb2.WorkerState(
                worker_id=self.info.worker_id, total_pages=self.info.total_pages,
                free_pages=self.info.total_pages))
            while True:
                ev = await stream.out.get()
                if ev is stream.open_batch:
                    stream.open_batch = None   # sent: the next step starts a new batch
                    taken.set()
                self.sent_tokens += sum(len(t.token_ids) for t in ev.batch.tokens)
                self.completions += len(ev.batch.completions)
                self.batches += 1
                if context.done():
                    return
                yield ev
        finally:
            reader.cancel()
            stepper.cancel()
            await asyncio.gather(reader, stepper, return_exceptions=True)

    def _step(self, running: dict[str, list[int]], b: worker_pb2.TokenBatch) -> None:
        """One step into batch `b`: a token for every running request, then the completions."""
        done = []
        add = b.tokens.add
        for rid, st in running.items():
            i = st[1]
            add(request_id=rid, token_ids=(i % VOCAB,), text=text_of(i))
            st[0] -= 1
            st[1] = i + 1
            if st[0] == 0:
                done.append(rid)
                b.completions.add(request_id=rid, finish_reason=common_pb2.FINISH_REASON_LENGTH,
                                  completion_tokens=i + 1)
        for rid in done:
            del running[rid]
        self.steps += 1

    def stats(self) -> dict:
        return {"worker_id": self.info.worker_id, "sent_tokens": self.sent_tokens,
                "completions": self.completions, "steps": self.steps, "batches": self.batches,
                "admitted": self.admitted, "cancelled": self.cancelled}


async def serve(workers: int, batch: int, step_s: float, port_file: Path, stats: Path) -> None:
    servers, fakes, ports = [], [], []
    for i in range(workers):
        fake = FakeWorker(f"fake-{i}", batch, step_s)
        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        worker_pb2_grpc.add_WorkerServicer_to_server(fake, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        fakes.append(fake)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    tmp.replace(port_file)   # the bench reads it only once it is complete
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    stats.write_text(json.dumps([f.stats() for f in fakes]))
    for s in servers:
        await s.stop(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clients.bench.relay_worker", description=__doc__)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--step-s", type=float, required=True)
    ap.add_argument("--port-file", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.workers < 1 or a.batch < 1 or a.step_s < 0:
        ap.error("--workers and --batch must be >= 1, --step-s >= 0")
    asyncio.run(serve(a.workers, a.batch, a.step_s, a.port_file, a.stats))


if __name__ == "__main__":
    main()
