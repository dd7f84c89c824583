"""Next-token sampling: greedy, or temperature + nucleus (top-p) with a per-request seed."""
from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperatures: list[float], top_ps: list[float],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """logits [N, V] -> token ids [N]. Temperature 0 is greedy (argmax)."""
    out = logits.argmax(dim=-1)
    for i, (t, p, g) in enumerate(zip(temperatures, top_ps, generators)):
        if t <= 0:
            continue
        probs = torch.softmax(logits[i].float() / t, dim=-1)
        if p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches p (the top token always stays)
            keep = (sorted_p.cumsum(0) - sorted_p) < p
            sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        out[i] = torch.multinomial(probs / probs.sum(), 1, generator=g)[0]
    return out
