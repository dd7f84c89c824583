"""Next-token sampling: greedy, or temperature + nucleus (top-p) with a per-request seed."""
from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperatures: list[float], top_ps: list[float],
           generators: list[torch.Generator | None],
           failures: dict[int, Exception] | None = None) -> torch.Tensor:
    """logits [N, V] -> token ids [N]. Temperature 0 is greedy (argmax).

    With `failures` given, a row whose sampling raises (non-finite probabilities, say)
    is recorded there by index and the other rows are still sampled; without it the
    exception propagates."""
    out = logits.argmax(dim=-1)
    for i, (t, p, g) in enumerate(zip(temperatures, top_ps, generators)):
        if t <= 0:
            continue
        if failures is None:
            out[i] = _sample_row(logits[i], t, p, g)
            continue
        try:
            out[i] = _sample_row(logits[i], t, p, g)
        except Exception as e:  # noqa: BLE001 (isolated per request by the caller)
            failures[i] = e
    return out


def _sample_row(row: torch.Tensor, t: float, p: float, g: torch.Generator | None) -> torch.Tensor:
    probs = torch.softmax(row.float() / t, dim=-1)
    if p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches p (the top token always stays)
        keep = (sorted_p.cumsum(0) - sorted_p) < p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return torch.multinomial(probs / probs.sum(), 1, generator=g)[0]
