"""One request inside the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from chameleon_common.validation import check_sampling


class Finish(Enum):
    EOS = 1
    LENGTH = 2
    STOP_STRING = 3
    CANCELLED = 4


@dataclass
class SamplingSpec:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # EOS and stop strings cannot end the generation before min_tokens (EOS is masked)
    min_tokens: int = 0
    # EOS tokens are ordinary output tokens: only max_tokens or a stop string ends it
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], "
                             f"got {self.min_tokens}")
        check_sampling(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p)


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    spec: SamplingSpec
    adapter_id: str | None = None
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0          # tokens whose K/V are in the cache
    finish: Finish | None = None
    order: int = 0                 # admission order on this worker (set by the engine)
    # a --sim-profile worker's modelled model ends with EOS as this token (None: max_tokens)
    sim_output_tokens: int | None = None
    # timings (engine clock, seconds)
    arrival: float = 0.0
    prefill_ms: float = 0.0
    prefill_started_at: float | None = None   # its first prefill forward pass began
    adapter_wait_s: float = 0.0    # adapter load time on this request's critical path
    first_token_at: float | None = None
    # per-request state owned by the engine
    generator: object | None = None
    stop_checker: object | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_len(self) -> int:
        return len(self.prompt_ids) + self.spec.max_tokens
