"""`chameleon bench relay` on a tiny load: real scheduler process, fake workers speaking the
Worker protocol, the Python client; the JSON's schema and no lost tokens."""
from __future__ import annotations

import json
import sys

from clients.bench import relay
from chameleon.v1 import worker_pb2
from clients.bench.relay_worker import FakeWorker


def test_fake_worker_steps_join_the_unsent_batch_numbered_by_position_and_complete_at_max_tokens():
    w = FakeWorker("w", batch=4, step_s=0.0)
    running = {"a": [1, 0], "b": [2, 0]}
    b = worker_pb2.TokenBatch()
    w._step(running, b)
    w._step(running, b)   # the stream has not taken it: the second step joins
    assert [(t.request_id, list(t.token_ids), t.text) for t in b.tokens] == [
        ("a", [0], " 0"), ("b", [0], " 0"), ("b", [1], " 1")]
    assert [(c.request_id, c.completion_tokens) for c in b.completions] == [("a", 1), ("b", 2)]
    assert running == {} and w.steps == 2


def test_tiny_relay_bench_counts_every_token_the_workers_sent(tmp_path, monkeypatch):
    out = tmp_path / "relay.json"
    monkeypatch.setattr(sys, "argv", ["chameleon"])
    import argparse

    ap = argparse.ArgumentParser()
    relay.add_arguments(ap)
    args = ap.parse_args(["--points", "2x8", "--step-s", "0.002", "--max-tokens", "16",
                          "--min-tokens", "800", "--client-procs", "1", "--json", str(out),
                          "--log-dir", str(tmp_path / "logs")])
    assert relay.run(args) == 0
    data = json.loads(out.read_text())
    assert data["label"] == "live on CPU"
    (p,) = data["points"]
    for key in ("workers", "batch", "streams", "tok_s", "scheduler_cpu_pct",
                "tok_per_scheduler_cpu_s", "tokens_sent", "tokens_received", "lost_tokens"):
        assert key in p, key
    assert (p["workers"], p["batch"], p["streams"]) == (2, 8, 16)
    assert p["requests"] == 16 * 4            # ceil(800 / (16 streams x 16 tokens)) per stream
    assert p["tokens_received"] == p["tokens_sent"] == p["tokens_expected"] == 64 * 16
    assert p["errors"] == 0 and p["short_requests"] == 0 and p["lost_tokens"] == 0
    assert p["disordered_requests"] == 0
    assert p["tok_s"] > 0 and 0 < p["scheduler_cpu_pct"] < 400
