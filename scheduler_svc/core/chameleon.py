"""Chameleon's adapter-aware multi-queue admission policy (paper §3; issue #4).

A global dispatcher places each new request on a worker (one that has its adapter
cached, loading or already wanted by another request there, unless that worker is
more than `warm_penalty` of its capacity busier than the least loaded one); that
worker's `WorkerQueues` then admit it (batch.py: Algorithm 1 and bypass; mlq.py: the
queues, quota charges and squash).

Queues are rebuilt every `refresh_s` seconds of the injected clock (the first time as
soon as `first_refresh_samples` requests were seen), and optionally again at each count
of `early_refresh_samples` (off by default: on the simulator it did not change P99 TTFT
against fifo by more than the seed-to-seed spread; README, "Reproducing the paper").
1-D K-means on the WRS of the requests seen in the last `window_s` seconds
picks K and the boundaries (kmeans.py), and quota.py sizes each queue's token quota from
the same window.

Contract with the service, beyond `AdmissionPolicy`:
  * after `schedule()`, `squashes()` lists request ids to stop; the policy has already
    released them, and the service must hand each back through `requeue(req)`;
  * `requeue(req)` puts back a request whose worker was lost (or that was squashed),
    in arrival order, ahead of younger requests; `on_finish` is not called for it;
  * a worker missing from `schedule()`'s list, or with connected=False, gets no new
    work and its queued requests are dispatched elsewhere.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from .batch import RoundParams, form_batch
from .kmeans import choose_clustering
from .mlq import Entry, WorkerQueues, insert_sorted
from .predictor import OutputPredictor, QuantileOutputPredictor, ServiceTimeModel
from .quota import QueueLoad, compute_quotas
from .types import Admission, AdmissionPolicy, Clock, PendingRequest, QueueStat, WorkerView
from .wrs import WrsScale


@dataclass
class ChameleonConfig:
    refresh_s: float = 300.0
    first_refresh_samples: int = 32
    early_refresh_samples: tuple[int, ...] = ()   # e.g. (64, 128, 256); off: see module doc
    window_s: float = 600.0           # WRS maxima and clustering samples
    max_samples: int = 2000
    k_max: int = 4
    min_silhouette: float = 0.65
    slo_s: float = 5.0                # TTFT SLO in the quota formula
    quota_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    bypass: bool = True
    bypass_scan: int = 8
    bypass_margin: float = 1.25
    warm_penalty: float = 0.25
    decode_s_per_token: float = 0.03  # initial value; learned online
    prefill_s_per_token: float = 0.0002
    static_boundaries: tuple[float, ...] | None = None  # fixed queues, equal quotas (static-mlq)
    # Bounded wait (aging). A queue head that has waited `aging` x the recent mean queueing
    # time (an EWMA over admissions), or `max_wait_s` (None: the SLO), whichever is less --
    # and at least `service_aging` x its own processing time at low load (prompt x
    # prefill_s_per_token + predicted output x decode_s_per_token, the configured, not the
    # learned, rates: the learned ones grow with the load) -- goes first whatever its
    # queue's quota (batch.py). Why: when the worker's memory is
    # not what limits it (a compute-bound worker, its admission window full), priority to
    # small queues is strict priority, and the large queues absorb the whole backlog: P99
    # TTFT up to 3x FIFO's at overload (issue #8). The quotas, the phase-1/phase-2 order
    # and bypass/squash stay as the paper has them for every head younger than the bound;
    # the bound only decides who is served first once a head has waited past it. aging=0
    # turns it off. max_wait_s 2 s: such a head has used 40% of the 5 s TTFT SLO; the
    # relative bound alone follows a burst up (the mean wait grows with it) just when the
    # tail forms. Measured on the simulator (README, "Reproducing the paper").
    aging: float = 2.0
    service_aging: float = 1.0
    max_wait_s: float | None = 2.0
    wait_smoothing: float = 0.05

    def __post_init__(self) -> None:
        if self.refresh_s <= 0 or self.window_s <= 0 or self.slo_s <= 0:
            raise ValueError("refresh_s, window_s and slo_s must be > 0")
        if self.first_refresh_samples < 1 or self.max_samples < 1:
            raise ValueError("first_refresh_samples and max_samples must be >= 1")
        if list(self.early_refresh_samples) != sorted(set(self.early_refresh_samples)) or any(
                n < 1 for n in self.early_refresh_samples):
            raise ValueError(f"early_refresh_samples must be increasing and >= 1, got "
                             f"{self.early_refresh_samples}")
        if not 1 <= self.k_max <= len(self.quota_weights):
            raise ValueError(f"k_max must be in 1..{len(self.quota_weights)} (one weight per queue)")
        if any(w < 0 for w in self.quota_weights) or sum(self.quota_weights[:1]) <= 0:
            raise ValueError("quota_weights must be >= 0 and the first one > 0")
        if self.bypass_scan < 0 or self.bypass_margin < 1.0 or self.warm_penalty < 0:
            raise ValueError("bypass_scan >= 0, bypass_margin >= 1 and warm_penalty >= 0 required")
        if self.aging < 0 or (self.max_wait_s is not None and self.max_wait_s < 0):
            raise ValueError("aging and max_wait_s must be >= 0")
        if not 0 < self.wait_smoothing <= 1:
            raise ValueError(f"wait_smoothing must be in (0, 1], got {self.wait_smoothing}")
        sb = self.static_boundaries
        if sb is not None and list(sb) != sorted(set(sb)):
            raise ValueError(f"static_boundaries must be strictly increasing, got {sb}")


class ChameleonPolicy(AdmissionPolicy):
    def __init__(self, clock: Clock, config: ChameleonConfig | None = None,
                 predictor: OutputPredictor | None = None, name: str = "chameleon"):
        self.name = name
        self.config = c = config or ChameleonConfig()
        self._clock = clock
        self.predictor = predictor or QuantileOutputPredictor()
        self.service_time = ServiceTimeModel(c.decode_s_per_token, c.prefill_s_per_token)
        self._scale = WrsScale(c.window_s)
        self._params = RoundParams(c.bypass, c.bypass_scan, c.bypass_margin)
        self.mean_wait_s = 0.0                           # EWMA of queueing time at admission
        self._samples: deque[tuple[float, int, int, int]] = deque(maxlen=c.max_samples)
        self._boundaries: tuple[float, ...] = c.static_boundaries or ()
        self._loads: list[list[tuple[int, int, int]]] = []   # per queue: sample (in, out, bytes)
        self._rate_span_s = 1.0
        self._last_refresh: float | None = None
        self.refreshes = 0
        self._seen = 0                                   # requests ever enqueued
        self._seen_at_refresh = 0
        self._seq = 0
        self._pending: deque[Entry] = deque()            # waiting for a worker
        self._pending_live: dict[str, Entry] = {}
        self._workers: dict[str, WorkerQueues] = {}
        self._queued_on: dict[str, str] = {}             # request id -> worker id
        self._running_on: dict[str, str] = {}
        self._squashed: list[str] = []
        self.squash_count = 0
        self.admitted_count = 0

    # -- AdmissionPolicy -----------------------------------------------------
    def enqueue(self, req: PendingRequest) -> None:
        now = self._clock()
        if req.predicted_output is None:
            req.predicted_output = self.predictor.predict(req)
        self._scale.observe(now, req.input_tokens, req.predicted_output, req.adapter_bytes)
        self._samples.append((now, req.input_tokens, req.predicted_output, req.adapter_bytes))
        self._seen += 1
        self._add_pending(self._entry(req, now))

    def requeue(self, req: PendingRequest) -> None:
        wid = self._running_on.pop(req.request_id, None)
        if wid is not None:
            self._workers[wid].release(req.request_id)
        self.cancel(req.request_id)
        self._add_pending(self._entry(req, self._clock()))

    def cancel(self, request_id: str) -> bool:
        if self._pending_live.pop(request_id, None) is not None:
            return True
        wid = self._queued_on.pop(request_id, None)
        return wid is not None and self._workers[wid].remove(request_id) is not None

    def queued(self) -> int:
        return len(self._pending_live) + len(self._queued_on)

    def on_finish(self, req: PendingRequest, output_tokens: int) -> None:
        self.predictor.observe(req, output_tokens)
        wid = self._running_on.pop(req.request_id, None)
        r = self._workers[wid].release(req.request_id) if wid is not None else None
        if r is not None and output_tokens > 0:
            self.service_time.observe(req.input_tokens, output_tokens, self._clock() - r.admitted_at)

    def squashes(self) -> list[str]:
        out, self._squashed = self._squashed, []
        return out

    def prefetch_hints(self, worker_id: str, limit: int = 8) -> list[str]:
        """Adapters of the requests next in line on that worker: each queue's head first
        (smallest queue first, as batch formation goes), then the requests behind them."""
        wq = self._workers.get(worker_id)
        return wq.upcoming_adapters(limit) if wq is not None else []

    def _round_params(self) -> RoundParams:
        c = self.config
        if c.aging <= 0:
            return self._params
        cap = c.max_wait_s if c.max_wait_s is not None else c.slo_s
        return replace(self._params, max_wait_s=min(cap, c.aging * self.mean_wait_s),
                       service_aging=c.service_aging, aging_prefill_s=c.prefill_s_per_token,
                       aging_decode_s=c.decode_s_per_token)

    def schedule(self, workers: list[WorkerView]) -> list[Admission]:
        c = self.config
        now = self._clock()
        views = {w.worker_id: w for w in workers if w.connected}
        self._sync_workers(views, now)
        self._dispatch(views)
        out: list[Admission] = []
        for wid, view in views.items():
            wq = self._workers[wid]
            admitted, squashed = form_batch(wq, view, now, self._round_params())
            for r in squashed:
                rid = r.entry.req.request_id
                self._running_on.pop(rid, None)
                self._squashed.append(rid)
                self.squash_count += 1
            for e in admitted:
                rid = e.req.request_id
                a = c.wait_smoothing
                self.mean_wait_s = (1 - a) * self.mean_wait_s + a * max(0.0, now - e.req.arrival)
                del self._queued_on[rid]
                self._running_on[rid] = wid
                out.append(Admission(e.req, wid))
            self.admitted_count += len(admitted)
        return out

    # -- dispatch ------------------------------------------------------------
    def _entry(self, req: PendingRequest, now: float) -> Entry:
        self._seq += 1
        return Entry(req, self._scale.wrs(now, req.input_tokens, req.predicted_output or req.max_tokens,
                                          req.adapter_bytes), self._seq)

    def _add_pending(self, e: Entry) -> None:
        insert_sorted(self._pending, e)  # a re-queued request goes ahead of younger ones
        self._pending_live[e.req.request_id] = e

    def _sync_workers(self, views: dict[str, WorkerView], now: float) -> None:
        for wid, wq in self._workers.items():
            if wq.connected and wid not in views:
                wq.connected = False
                for e in wq.take_all_queued():
                    del self._queued_on[e.req.request_id]
                    self._add_pending(e)
        stale = []
        for wid, view in views.items():
            wq = self._workers.get(wid)
            if wq is None:
                wq = self._workers[wid] = WorkerQueues(wid, self._expected_s)
            wq.connected = True
            if wq.update_view(view):
                stale.append(wq)
        due = self._due_refresh(now)
        if due:
            self._refresh(now)
        for wq in (self._live_workers() if due else stale):
            self._layout(wq, rebucket=due)

    def _dispatch(self, views: dict[str, WorkerView]) -> None:
        if not views:
            return
        live = [self._workers[wid] for wid in views]
        while self._pending:
            e = self._pending.popleft()
            rid = e.req.request_id
            if self._pending_live.get(rid) is not e:
                continue
            del self._pending_live[rid]
            best = min(live, key=lambda wq: self._placement_score(e.req, wq, views[wq.worker_id]))
            best.push(e)
            self._queued_on[rid] = best.worker_id

    def _placement_score(self, req: PendingRequest, wq: WorkerQueues, view: WorkerView) -> float:
        load = (wq.queued_cost + sum(wq.held)) / max(1, view.total_tokens)
        aid = req.adapter_id
        warm = aid is not None and (aid in view.cached_adapters or aid in view.loading_adapters
                                    or aid in wq.adapters)
        return load + (0.0 if warm or aid is None else self.config.warm_penalty)

    # -- queue layout --------------------------------------------------------
    def _expected_s(self, req: PendingRequest) -> float:
        return self.service_time.expected_s(req.input_tokens, req.predicted_output or req.max_tokens)

    def _live_workers(self) -> list[WorkerQueues]:
        return [wq for wq in self._workers.values() if wq.connected]

    def _due_refresh(self, now: float) -> bool:
        if self.config.static_boundaries is not None:
            return False
        c = self.config
        if self._last_refresh is None:
            return len(self._samples) >= c.first_refresh_samples
        if now - self._last_refresh >= c.refresh_s:
            return True
        return any(self._seen_at_refresh < n <= self._seen for n in c.early_refresh_samples)

    def _refresh(self, now: float) -> None:
        c = self.config
        while self._samples and self._samples[0][0] < now - c.window_s:
            self._samples.popleft()
        self._last_refresh = now
        self._seen_at_refresh = self._seen
        self.refreshes += 1
        if not self._samples:
            return
        wrs = [self._scale.wrs(now, i, o, b) for _, i, o, b in self._samples]
        self._boundaries = choose_clustering(wrs, c.k_max, c.min_silhouette).boundaries
        self._loads = [[] for _ in range(len(self._boundaries) + 1)]
        probe = WorkerQueues("", self._expected_s)
        probe.boundaries = self._boundaries
        for (_, i, o, b), v in zip(self._samples, wrs):
            self._loads[probe.queue_of(v)].append((i, o, b))
        self._rate_span_s = max(1.0, now - self._samples[0][0])

    def _layout(self, wq: WorkerQueues, rebucket: bool) -> None:
        """Boundaries and quotas for one worker (quotas scale with its capacity)."""
        k = len(self._boundaries) + 1
        total = wq.total_tokens
        if self.config.static_boundaries is not None or len(self._loads) != k:
            quotas = [total // k] * k
            quotas[-1] += total - sum(quotas)
        else:
            n_workers = max(1, len(self._live_workers()))
            loads = []
            for samples in self._loads:
                service = [self.service_time.expected_s(i, o) for i, o, _ in samples]
                tokens = [wq.token_cost(i, o, b) for i, o, b in samples]
                n = max(1, len(samples))
                loads.append(QueueLoad(largest_tokens=max(tokens, default=0),
                                       service_s=sum(service) / n,
                                       arrival_rps=len(samples) / self._rate_span_s / n_workers,
                                       mean_tokens=sum(tokens) / n))
            quotas = compute_quotas(loads, total, self.config.slo_s, self.config.quota_weights)
        now = self._clock()
        rewrs = None
        if rebucket:
            def rewrs(e: Entry) -> float:
                r = e.req
                return self._scale.wrs(now, r.input_tokens, r.predicted_output or r.max_tokens,
                                       r.adapter_bytes)
        wq.set_layout(self._boundaries, quotas, rewrs)

    # -- observability -------------------------------------------------------
    def queue_status(self) -> list[QueueStat]:
        live = self._live_workers()
        k = len(self._boundaries) + 1

        def total(attr: str, q: int) -> int:
            return int(sum(getattr(wq, attr)[q] for wq in live if q < len(getattr(wq, attr))))

        return [QueueStat(q, total("lengths", q), total("quotas", q), total("held", q),
                          self._boundaries[q] if q < len(self._boundaries) else None)
                for q in range(k)]

    def metrics(self) -> dict[str, float]:
        live = self._live_workers()
        k = len(self._boundaries) + 1
        m: dict[str, float] = {
            "num_queues": float(k),
            "pending_dispatch": float(len(self._pending_live)),
            "squashes": float(self.squash_count),
            "admitted": float(self.admitted_count),
            "squash_rate": self.squash_count / self.admitted_count if self.admitted_count else 0.0,
            "bypasses": float(sum(wq.bypasses for wq in self._workers.values())),
            "refreshes": float(self.refreshes),
            "mean_wait_s": self.mean_wait_s,
            "decode_s_per_token": self.service_time.decode_s_per_token,
        }
        for i, b in enumerate(self._boundaries):
            m[f"boundary_{i}"] = b
        for q in range(k):
            m[f"queue_len_{q}"] = float(sum(wq.lengths[q] for wq in live if q < len(wq.lengths)))
            m[f"quota_tokens_{q}"] = float(sum(wq.quotas[q] for wq in live if q < len(wq.quotas)))
            m[f"held_tokens_{q}"] = float(sum(wq.held[q] for wq in live if q < len(wq.held)))
        m.update(self.predictor.accuracy())
        return m
