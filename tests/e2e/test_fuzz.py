"""Fuzzing the public API against running services: hypothesis-generated GenerateRequests,
and raw byte mutations of valid requests on the wire (1,000 + 1,000 cases, derandomized so a
failure reproduces). No call may end with UNKNOWN or INTERNAL, and no service may exit."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chameleon.v1 import common_pb2, scheduler_pb2
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
CASES = 1000
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_cluster(tiny_assets):
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       worker_args=["--max-running", "8", "--block-size", "4"])
    with Cluster(spec) as c:
        with grpc.insecure_channel(c.address) as ch:
            c.generate = ch.unary_stream("/chameleon.v1.Scheduler/Generate")
            c.status = ch.unary_unary("/chameleon.v1.Scheduler/GetStatus")
            c.adapters = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())
            c.seen = {}
            yield c
        assert all(p.popen.poll() is None for p in c.procs), "a service exited"
        for p in c.procs:
            assert "Traceback" not in p.log_path.read_text(errors="replace"), p.log_tail()


def call(c, payload: bytes) -> grpc.StatusCode:
    try:
        for _ in c.generate(payload, timeout=30):
            pass
    except grpc.RpcError as e:
        code = e.code()
    else:
        code = grpc.StatusCode.OK
    c.seen[code] = c.seen.get(code, 0) + 1
    assert code not in FORBIDDEN, payload[:200]
    return code


f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
odd_text = st.text(max_size=40)


@st.composite
def requests(draw, adapters):
    params = common_pb2.SamplingParams(
        max_tokens=draw(st.integers(-3, 4)), temperature=draw(st.one_of(st.just(0.0), f32)),
        min_tokens=draw(st.integers(-2, 5)), ignore_eos=draw(st.booleans()),
        stop=draw(st.lists(odd_text, max_size=3)))
    if draw(st.booleans()):
        params.top_p = draw(f32)
    if draw(st.booleans()):
        params.seed = draw(st.integers(0, 2 ** 64 - 1))
    adapter = draw(st.one_of(st.just(""), st.sampled_from(adapters), odd_text,
                             st.sampled_from(adapters).map(lambda a: a + draw(st.sampled_from(
                                 ["\n", "@1", "@0", "/..", " ", "@99"])))))
    return scheduler_pb2.GenerateRequest(
        prompt=draw(st.one_of(odd_text, st.just("Once upon a time"), st.text(min_size=200, max_size=2000))),
        adapter_id=adapter, params=params, request_id=draw(st.one_of(st.just(""), odd_text)))


def test_generated_requests_never_get_unknown_or_internal(fuzz_cluster):
    c = fuzz_cluster

    @FUZZ
    @given(requests(c.adapters))
    def run(req):
        code = call(c, req.SerializeToString())
        p = req.params
        top_p = p.top_p if p.HasField("top_p") else 1.0
        sane = (req.prompt and p.max_tokens > 0 and math.isfinite(p.temperature)
                and math.isfinite(top_p) and 0 < top_p <= 1)
        if not sane:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, req
    run()


VALID = [scheduler_pb2.GenerateRequest(prompt="Water boils at", adapter_id=a,
                                       params=common_pb2.SamplingParams(max_tokens=2, temperature=t,
                                                                        stop=["\n"]),
                                       request_id=rid).SerializeToString()
         for a, t, rid in (("", 0.0, ""), ("tiny-r8-qv", 0.7, "r-1"), ("tiny-r4-mlp", 0.0, "x:y"))]


@st.composite
def mutations(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "varint", "utf8"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i:i + draw(st.integers(1, 4))]
        elif op == "truncate":
            data = data[:i]
        elif op == "varint":   # a length or value field blown up
            data[i:i] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
        elif op == "utf8":
            data[i:i] = b"\x0a\x02\xc3\x28"   # field 1 = two bytes that are not UTF-8
    return bytes(data)


def test_mutated_bytes_on_the_wire_never_get_unknown_or_internal(fuzz_cluster):
    c = fuzz_cluster

    @FUZZ
    @given(mutations())
    def run(payload):
        call(c, payload)
    run()
    for raw in (b"", b"\x00", struct.pack("<Q", 2 ** 63), b"\x0a\xff\xff\xff\xff\x0f"):
        call(c, raw)
    # the status RPC ignores its (empty) message's content but must parse it safely too
    for raw in (b"\x0a", b"\xff\xff"):
        with pytest.raises(grpc.RpcError) as ei:
            c.status(raw, timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert c.status(b"", timeout=10)
    assert c.seen.get(grpc.StatusCode.OK, 0) > 0 and c.seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0, c.seen
