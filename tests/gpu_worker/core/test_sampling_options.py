"""min_tokens and ignore_eos in the engine, against transformers' min_new_tokens."""
from __future__ import annotations

import pytest
import torch

from gpu_worker.core.engine import Engine, EngineConfig
from gpu_worker.core.sequence import Finish, SamplingSpec, Sequence

PROMPT = "Once upon a time"


def generate(engine_parts, spec: SamplingSpec, eos: set[int] | None = None) -> Sequence:
    _, model, tok, _, _ = engine_parts
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=64, max_context=256,
                                          max_step_tokens=256))
    if eos is not None:
        eng.eos_ids = eos
    s = Sequence("s", tok.encode(PROMPT, add_special_tokens=False).ids, spec)
    eng.add(s)
    while eng.has_work():
        eng.step()
    return s


def test_min_tokens_masks_eos_like_transformers_min_new_tokens(engine_parts):
    model_dir = engine_parts[0]
    free = generate(engine_parts, SamplingSpec(max_tokens=10), eos=set())
    eos = {free.output_ids[0]}   # make the greedy first token the end of sequence
    stopped = generate(engine_parts, SamplingSpec(max_tokens=10), eos=eos)
    assert stopped.finish == Finish.EOS and stopped.output_ids == []
    forced = generate(engine_parts, SamplingSpec(max_tokens=10, min_tokens=10), eos=eos)
    assert forced.finish == Finish.LENGTH and len(forced.output_ids) == 10
    assert not eos & set(forced.output_ids)

    from transformers import AutoTokenizer, LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(str(model_dir))(PROMPT, add_special_tokens=False,
                                                          return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=10, min_new_tokens=10, eos_token_id=sorted(eos),
                          pad_token_id=0)
    assert forced.output_ids == ref[0, ids.shape[1]:].tolist()


def test_min_tokens_short_of_max_lets_eos_end_it_afterwards(engine_parts):
    free = generate(engine_parts, SamplingSpec(max_tokens=10), eos=set())
    eos = {free.output_ids[3]}
    s = generate(engine_parts, SamplingSpec(max_tokens=10, min_tokens=2), eos=eos)
    # the masked steps may change the path; either EOS ended it after min_tokens, or it ran out
    assert len(s.output_ids) >= 2 and not eos & set(s.output_ids)
    assert (s.finish == Finish.EOS) == (len(s.output_ids) < 10)


def test_ignore_eos_streams_eos_tokens_and_runs_to_max_tokens(engine_parts):
    free = generate(engine_parts, SamplingSpec(max_tokens=10), eos=set())
    eos = {free.output_ids[0]}
    s = generate(engine_parts, SamplingSpec(max_tokens=10, ignore_eos=True), eos=eos)
    assert s.finish == Finish.LENGTH and s.output_ids == free.output_ids


def test_min_tokens_holds_off_stop_strings(engine_parts):
    _, _, tok, _, _ = engine_parts
    free = generate(engine_parts, SamplingSpec(max_tokens=10), eos=set())
    text = tok.decode(free.output_ids)
    if len(text) < 3:
        pytest.skip("the tiny model's text is too short for a stop string")
    stop = text[:2]
    cut = generate(engine_parts, SamplingSpec(max_tokens=10, stop=[stop]), eos=set())
    assert cut.finish == Finish.STOP_STRING
    held = generate(engine_parts, SamplingSpec(max_tokens=10, min_tokens=10, stop=[stop]), eos=set())
    assert held.finish == Finish.LENGTH and held.output_ids == free.output_ids


@pytest.mark.parametrize("kw", [{"min_tokens": -1}, {"min_tokens": 5}])
def test_min_tokens_out_of_range_is_rejected(kw):
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingSpec(max_tokens=4, **kw)
