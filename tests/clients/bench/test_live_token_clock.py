"""`bench live` counts a request's token events as the simulator does, however the services
merge messages: N modelled tokens (the N-th being end-of-sequence) give N - 1 gaps."""
from __future__ import annotations

import pytest

from clients.bench.live import LiveRecord, _TokenClock


def gaps(chunks):
    rec = LiveRecord("q", None, 0, 1, 0.0)
    clock = _TokenClock(rec)
    for t, tokens, finish in chunks:
        clock.chunk(t, tokens, finish)
    return rec.gaps_s, rec.tokens, rec.first_token_s, rec.finish_s


@pytest.mark.parametrize("chunks,want_gaps,want_tokens", [
    ([(1, 1, None), (2, 1, None), (3, 0, "eos")], [1, 1], 2),          # one message per step
    ([(1, 1, None), (3, 2, None), (4, 0, "eos")], [2, 0.0, 1], 3),     # two steps in one message
    ([(1, 1, None), (2, 1, "eos")], [1, 0.0], 2),                      # the end merged in
    ([(1, 0, None), (1.01, 0, "eos")], [], 0),                         # EOS as the first token
    ([(1, 0, "eos")], [], 0),
    ([(1, 1, None), (2, 1, "length")], [1], 2),                        # max_tokens: no EOS step
])
def test_gaps_per_token_event(chunks, want_gaps, want_tokens):
    got_gaps, tokens, first, finish = gaps(chunks)
    assert got_gaps == pytest.approx(want_gaps) and tokens == want_tokens
    assert first == chunks[0][0] and finish == chunks[-1][0]
