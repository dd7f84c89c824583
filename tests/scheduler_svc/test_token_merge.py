"""Tokens wait for a slow client merged, and one worker message carries a step of many requests."""
from __future__ import annotations

import asyncio

from chameleon.v1 import worker_pb2
from gpu_worker.service import _Stream
from scheduler_svc.service import _Live


async def test_tokens_a_client_has_not_been_sent_go_out_as_one_message():
    live = _Live(lc=None, admit=None)
    first = worker_pb2.TokenEvent(request_id="r", token_ids=[7], text="a")
    first.timings.prefill_ms = 3.0
    live.put("token", first)
    for i in range(2):
        live.put("token", worker_pb2.TokenEvent(request_id="r", token_ids=[i], text=str(i)))
    live.put("done", worker_pb2.Completion(request_id="r", text="!"))
    live.put("token", worker_pb2.TokenEvent(request_id="r", token_ids=[9], text="z"))
    kind, ev = await live.get()
    assert kind == "token" and list(ev.token_ids) == [7, 0, 1] and ev.text == "a01"
    assert ev.timings.prefill_ms == 3.0        # the first event's timings stay
    kind, ev = await live.get()
    assert kind == "done" and ev.text == "!"    # never merged across a completion
    kind, ev = await live.get()
    assert kind == "token" and list(ev.token_ids) == [9]
    waiter = asyncio.create_task(live.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    live.put("token", worker_pb2.TokenEvent(request_id="r", token_ids=[5]))
    assert list((await asyncio.wait_for(waiter, 1))[1].token_ids) == [5]


async def test_worker_steps_join_the_batch_still_queued():
    st = _Stream(asyncio.Queue())
    st.batch().tokens.add(request_id="a", token_ids=[1])
    st.batch().tokens.add(request_id="b", token_ids=[2])
    st.batch().completions.add(request_id="a")
    assert st.out.qsize() == 1
    ev = st.out.get_nowait()
    assert [t.request_id for t in ev.batch.tokens] == ["a", "b"]
    assert [c.request_id for c in ev.batch.completions] == ["a"]
