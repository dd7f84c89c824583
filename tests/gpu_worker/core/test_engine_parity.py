"""The engine (paged KV, continuous batching, mixed LoRA ranks) against transformers + PEFT."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_worker.core.engine import Engine, EngineConfig
from gpu_worker.core.sequence import Finish, SamplingSpec, Sequence
from gpu_worker.core.unified_pool import stage_adapter
from tests.e2e.hf_reference import hf_greedy

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
           "SELECT name FROM users WHERE", "1, 2, 3, 4,", "Why is the sky blue?"]


def run_engine(model, tok, adapters, jobs, max_tokens, block_size=4, stagger=True, step_tokens=256):
    eng = Engine(model, tok, EngineConfig(block_size=block_size, num_blocks=512, max_running=16,
                                          max_step_tokens=step_tokens, max_context=256),
                 )
    seqs = []
    for i, (prompt, adapter) in enumerate(jobs):
        ids = tok.encode(prompt, add_special_tokens=False).ids
        seqs.append(Sequence(str(i), ids, SamplingSpec(max_tokens=max_tokens), adapter_id=adapter))
    pending = list(seqs)
    while pending or eng.has_work():
        if pending:  # staggered arrivals: new prefills join running decodes
            for _ in range(2 if stagger else len(pending)):
                if pending:
                    for aid in eng.add(pending.pop(0)):
                        eng.install(stage_adapter(adapters[aid], model.config))
        eng.step()
    return seqs


def test_mixed_batch_matches_hf_for_every_adapter_and_base(engine_parts):
    model_dir, model, tok, adapters, adapter_root = engine_parts
    names = sorted(adapters)
    jobs = [(PROMPTS[i % len(PROMPTS)], names[i % len(names)]) for i in range(len(names))]
    jobs += [(PROMPTS[0], None), (PROMPTS[2], None)]
    seqs = run_engine(model, tok, adapters, jobs, max_tokens=10)
    for (prompt, adapter), s in zip(jobs, seqs):
        ref = hf_greedy(model_dir, Path(adapter_root) / adapter if adapter else None,
                        prompt, 10)
        assert s.output_ids == ref, (adapter, prompt)
        assert s.finish in (Finish.LENGTH, Finish.EOS)


def test_chunked_prefill_matches_hf(engine_parts):
    """A 16-token step budget splits every longer prompt over steps, beside running decodes."""
    model_dir, model, tok, adapters, adapter_root = engine_parts
    names = sorted(adapters)
    long = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
    jobs = [(long, names[0]), (PROMPTS[1], None), (long + " every day", names[1]), (PROMPTS[3], names[2])]
    assert len(tok.encode(long, add_special_tokens=False).ids) > 16
    seqs = run_engine(model, tok, adapters, jobs, max_tokens=8, step_tokens=16)
    for (prompt, adapter), s in zip(jobs, seqs):
        ref = hf_greedy(model_dir, Path(adapter_root) / adapter if adapter else None, prompt, 8)
        assert s.output_ids == ref, (adapter, prompt)


def test_batching_does_not_change_tokens(engine_parts):
    _, model, tok, adapters, _ = engine_parts
    names = sorted(adapters)
    jobs = [(PROMPTS[i % len(PROMPTS)], names[i % len(names)] if i % 3 else None) for i in range(8)]
    together = run_engine(model, tok, adapters, jobs, max_tokens=8, block_size=8, stagger=False)
    for job, s in zip(jobs, together):
        alone = run_engine(model, tok, adapters, [job], max_tokens=8)[0]
        assert alone.output_ids == s.output_ids


def test_seeded_sampling_repeats_and_differs_across_seeds(engine_parts):
    _, model, tok, adapters, _ = engine_parts

    def sampled(seed):  # a high temperature: the tiny random model is very peaked
        eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_context=256,
                                              max_step_tokens=256))
        s = Sequence("s", tok.encode("Once upon a time").ids,
                     SamplingSpec(max_tokens=12, temperature=20.0, top_p=0.99, seed=seed))
        eng.add(s)
        while eng.has_work():
            eng.step()
        return s.output_ids

    assert sampled(1) == sampled(1)
    assert sampled(1) != sampled(2)


def test_stop_string_and_length_finish(engine_parts):
    _, model, tok, adapters, _ = engine_parts
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_context=256, max_step_tokens=256))
    full = Sequence("a", tok.encode("Once upon a time").ids, SamplingSpec(max_tokens=12))
    eng.add(full)
    texts = []
    while eng.has_work():
        texts += [e.text for e in eng.step()]
    text = "".join(texts)
    assert full.finish in (Finish.LENGTH, Finish.EOS) and eng.memory.kv_available_pages() == 64
    if len(text) >= 4:
        stop = text[2:4]
        s = Sequence("b", tok.encode("Once upon a time").ids, SamplingSpec(max_tokens=12, stop=[stop]))
        eng.add(s)
        out = []
        while eng.has_work():
            out += [e.text for e in eng.step()]
        assert s.finish == Finish.STOP_STRING and "".join(out) == text[:text.find(stop)]


def test_prompt_longer_than_context_is_rejected(engine_parts):
    _, model, tok, _, _ = engine_parts
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_context=32, max_step_tokens=64))
    with pytest.raises(ValueError, match="context"):
        eng.add(Sequence("x", list(range(40)), SamplingSpec(max_tokens=4)))
