"""A request whose sampling or stop check raises finishes with an error on its own; the
rest of the batch keeps generating the tokens it would have generated anyway."""
from __future__ import annotations

import math

from gpu_worker.core.engine import Engine, EngineConfig
from gpu_worker.core.sequence import Finish, SamplingSpec, Sequence


def make_engine(model, tok):
    return Engine(model, tok, EngineConfig(block_size=4, num_blocks=256, max_running=8,
                                           max_step_tokens=256, max_context=256))


def run(eng, seqs):
    events = []
    for s in seqs:
        assert eng.add(s) == []
    while eng.has_work():
        events += eng.step()
    return events


def seqs_for(tok, n=3, max_tokens=8):
    ids = tok.encode("Once upon a time", add_special_tokens=False).ids
    return [Sequence(f"r{i}", list(ids), SamplingSpec(max_tokens=max_tokens, temperature=0.8, seed=i))
            for i in range(n)]


def test_a_nan_temperature_fails_its_request_alone(engine_parts):
    _, model, tok, _, _ = engine_parts
    ref = seqs_for(tok)
    run(make_engine(model, tok), ref)
    seqs = seqs_for(tok)
    bad = seqs[1]
    bad.spec.temperature = math.nan   # past validation, as a bug elsewhere could let through
    eng = make_engine(model, tok)
    events = run(eng, seqs)
    errors = [e for e in events if e.error is not None]
    assert [e.seq.request_id for e in errors] == ["r1"]
    assert bad.finish == Finish.CANCELLED and bad.output_ids == []
    for s, r in zip(seqs, ref):
        if s is not bad:
            assert s.output_ids == r.output_ids and s.finish == r.finish
    assert eng.idle() and eng.memory.stats().free_pages == eng.memory.stats().total_pages


def test_a_stop_checker_that_raises_fails_its_request_alone(engine_parts):
    _, model, tok, _, _ = engine_parts
    seqs = seqs_for(tok, n=2)
    eng = make_engine(model, tok)
    for s in seqs:
        eng.add(s)

    class Boom:
        def update(self, ids, check=True):
            raise RuntimeError("stop check failed")

        def flush(self):
            return ""
    seqs[0].stop_checker = Boom()
    events = []
    while eng.has_work():
        events += eng.step()
    assert [e.seq.request_id for e in events if e.error] == ["r0"]
    assert seqs[1].finish == Finish.LENGTH and len(seqs[1].output_ids) == 8
