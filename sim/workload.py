"""Synthetic many-adapter workloads after the paper's evaluation (section 5), deterministic by seed.

API (stable; `chameleon bench paper`, `bench live` and the simulator use it):

    cfg = WorkloadConfig(rps=8.0, duration_s=1800, num_adapters=100, seed=0)
    wl = Workload.generate(cfg)              # or Workload.generate(cfg, seed=3)
    wl.requests                              # list[Request], by arrival
    wl.adapters                              # list[AdapterSpec] (id, rank)
    wl.save_jsonl(path); Workload.load_jsonl(path)

A `Request` carries what a client sends (arrival, adapter, prompt length, max_tokens) and,
separately, `output_tokens`: how many tokens the model will really produce (EOS). A
simulator hands the client part to the scheduler and worker and keeps the true length in
an oracle that only answers "does it end at this token?" (sim/engine.py), so no policy
can read it before the request finishes.

Arrivals: Poisson (exponential gaps) or Gamma gaps with a configurable coefficient of
variation (cv > 1 is burstier than Poisson; cv = 1 is Poisson).

Adapters: `num_adapters` (10-150) spread evenly over the ranks {8, 16, 32, 64, 128}
(the paper: 100 adapters, 20 per rank). A request picks a rank (uniformly, as the
paper, or by a power law 1/(i+1)^rank_exponent with the smallest rank most popular),
then an adapter within the rank by a power law 1/(j+1)^adapter_exponent (paper:
power-law within a rank; exponent 1 by default).

Lengths: log-normal fits to the published statistics of the Azure LLM inference trace
2023, "conversation" (AzureLLMInferenceTrace_conv; Patel et al., Splitwise, ISCA 2024):
median prompt 1020 tokens and median output 129 tokens (Splitwise section III), with
means 1155 and 211 tokens (the summary statistics commonly reported for that trace).
A log-normal with median m and mean u has mu = ln m and sigma = sqrt(2 ln(u / m)), so
    input  ~ LogNormal(ln 1020, 0.498),  output ~ LogNormal(ln 129, 0.992).
Both are then scaled by `length_scale` (the paper scales lengths down "to fit memory"
without saying by how much). Default 0.2: the paper sets its TTFT SLO of 5 s to "5x the
mean execution time at low load", i.e. a mean execution of ~1 s, and 0.2 x (211 output
tokens) x ~21 ms per decode step on the A40 model plus the prefill gives ~1 s
(tests/sim check the implied mean execution time). Scaled lengths are clipped to
[1, max_input] and [1, max_tokens]; clients ask `max_tokens` = length_scale x 2048 (the
scaled Llama-7B context), so a request never ends by length unless its true output does.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

RANKS = (8, 16, 32, 64, 128)
AZURE_CONV_MEDIAN_INPUT = 1020
AZURE_CONV_MEDIAN_OUTPUT = 129
AZURE_CONV_MEAN_INPUT = 1155
AZURE_CONV_MEAN_OUTPUT = 211
PAPER_LENGTH_SCALE = 0.2
LLAMA_CONTEXT = 2048


def _sigma(median: float, mean: float) -> float:
    return math.sqrt(2.0 * math.log(mean / median))


INPUT_SIGMA = _sigma(AZURE_CONV_MEDIAN_INPUT, AZURE_CONV_MEAN_INPUT)
OUTPUT_SIGMA = _sigma(AZURE_CONV_MEDIAN_OUTPUT, AZURE_CONV_MEAN_OUTPUT)


def reference_prompt_tokens(length_scale: float = PAPER_LENGTH_SCALE) -> int:
    """The mean scaled prompt of the paper workload (the cost model's calibration prompt)."""
    return round(length_scale * AZURE_CONV_MEAN_INPUT)


@dataclass(frozen=True)
class AdapterSpec:
    adapter_id: str
    rank: int


@dataclass(frozen=True)
class Request:
    request_id: str
    arrival_s: float
    adapter_id: str | None
    rank: int
    input_tokens: int
    max_tokens: int
    output_tokens: int  # the true length: for the simulator's oracle only


@dataclass(frozen=True)
class WorkloadConfig:
    rps: float = 8.0
    duration_s: float = 1800.0
    arrival: str = "poisson"              # "poisson" | "gamma"
    cv: float = 1.0                       # gamma: coefficient of variation of the gaps
    num_adapters: int = 100
    ranks: tuple[int, ...] = RANKS
    rank_popularity: str = "uniform"      # "uniform" | "power-law"
    rank_exponent: float = 1.0
    adapter_exponent: float = 1.0         # power law within a rank
    length_scale: float = PAPER_LENGTH_SCALE
    max_input: int = 1024
    max_tokens: int = 0                   # 0: round(length_scale * LLAMA_CONTEXT)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rps > 0 or not self.duration_s > 0:
            raise ValueError(f"rps and duration_s must be > 0, got {self.rps}, {self.duration_s}")
        if self.arrival not in ("poisson", "gamma"):
            raise ValueError(f"arrival must be 'poisson' or 'gamma', got {self.arrival!r}")
        if not self.cv > 0:
            raise ValueError(f"cv must be > 0, got {self.cv}")
        if not self.ranks or any(r <= 0 for r in self.ranks):
            raise ValueError(f"ranks must be positive, got {self.ranks}")
        if self.num_adapters < len(self.ranks):
            raise ValueError(f"need at least one adapter per rank: num_adapters >= {len(self.ranks)}")
        if self.rank_popularity not in ("uniform", "power-law"):
            raise ValueError(f"rank_popularity must be 'uniform' or 'power-law', got {self.rank_popularity!r}")
        if self.rank_exponent < 0 or self.adapter_exponent < 0:
            raise ValueError("exponents must be >= 0")
        if not 0 < self.length_scale <= 1:
            raise ValueError(f"length_scale must be in (0, 1], got {self.length_scale}")
        if self.max_input < 1 or self.max_tokens < 0:
            raise ValueError("max_input must be >= 1 and max_tokens >= 0")

    @property
    def client_max_tokens(self) -> int:
        return self.max_tokens or max(1, round(self.length_scale * LLAMA_CONTEXT))


def make_adapters(cfg: WorkloadConfig) -> list[AdapterSpec]:
    """num_adapters spread evenly over the ranks (leftovers to the smallest ranks)."""
    per, extra = divmod(cfg.num_adapters, len(cfg.ranks))
    out = []
    for i, r in enumerate(cfg.ranks):
        out += [AdapterSpec(f"r{r}-{j:03d}", r) for j in range(per + (1 if i < extra else 0))]
    return out


@dataclass
class Workload:
    config: WorkloadConfig
    adapters: list[AdapterSpec]
    requests: list[Request] = field(default_factory=list)

    @classmethod
    def generate(cls, cfg: WorkloadConfig, seed: int | None = None) -> "Workload":
        if seed is not None:
            cfg = replace(cfg, seed=seed)
        rng = random.Random(f"workload-{cfg.seed}")
        adapters = make_adapters(cfg)
        by_rank = {r: [a for a in adapters if a.rank == r] for r in cfg.ranks}
        if cfg.rank_popularity == "uniform":
            rank_w = [1.0] * len(cfg.ranks)
        else:
            rank_w = [1.0 / (i + 1) ** cfg.rank_exponent for i in range(len(cfg.ranks))]
        within = {r: [1.0 / (j + 1) ** cfg.adapter_exponent for j in range(len(v))]
                  for r, v in by_rank.items()}
        max_tokens = cfg.client_max_tokens
        shape = 1.0 / (cfg.cv * cfg.cv)
        out, t, n = [], 0.0, 0
        while True:
            if cfg.arrival == "poisson":
                t += rng.expovariate(cfg.rps)
            else:
                t += rng.gammavariate(shape, 1.0 / (cfg.rps * shape))
            if t > cfg.duration_s:
                break
            rank = rng.choices(cfg.ranks, rank_w)[0]
            ad = rng.choices(by_rank[rank], within[rank])[0]
            inp = rng.lognormvariate(math.log(AZURE_CONV_MEDIAN_INPUT), INPUT_SIGMA)
            outp = rng.lognormvariate(math.log(AZURE_CONV_MEDIAN_OUTPUT), OUTPUT_SIGMA)
            inp_t = max(1, min(cfg.max_input, round(inp * cfg.length_scale)))
            out_t = max(1, min(max_tokens, round(outp * cfg.length_scale)))
            out.append(Request(f"q{n:06d}", round(t, 6), ad.adapter_id, ad.rank, inp_t, max_tokens, out_t))
            n += 1
        return cls(cfg, adapters, out)

    # -- JSONL ------------------------------------------------------------------
    def save_jsonl(self, path: str | Path) -> None:
        with open(path, "w") as f:
            f.write(json.dumps({"config": asdict(self.config),
                                "adapters": [asdict(a) for a in self.adapters]}) + "\n")
            for r in self.requests:
                f.write(json.dumps(asdict(r)) + "\n")

    @classmethod
    def load_jsonl(cls, path: str | Path) -> "Workload":
        with open(path) as f:
            head = json.loads(f.readline())
            c = head["config"]
            c["ranks"] = tuple(c["ranks"])
            cfg = WorkloadConfig(**c)
            adapters = [AdapterSpec(**a) for a in head["adapters"]]
            reqs = [Request(**json.loads(line)) for line in f if line.strip()]
        return cls(cfg, adapters, reqs)
