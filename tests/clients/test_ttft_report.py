from clients.loadgen import LoadRequest, LoadResult
from clients.ttft_report import breakdown, format_slowest, slowest


def result(ttft, trace="", error=None, adapter="a"):
    r = LoadResult(LoadRequest("p", adapter, 4), error=error, trace_id=trace)
    r.server_timings = {"ttft_ms": ttft, "queue_ms": 10.0, "adapter_load_ms": 30.0,
                        "adapter_fetch_ms": 20.0, "prefill_ms": 5.0}
    return r


def test_slowest_five_with_disjoint_parts_and_trace_ids():
    rs = [result(t, trace=f"{t:032d}") for t in (50, 90, 10, 70, 80, 60, 40)]
    rs.append(result(999, error="UNAVAILABLE"))
    assert [r.server_timings["ttft_ms"] for r in slowest(rs)] == [90, 80, 70, 60, 50]
    b = breakdown(rs[0])
    assert (b["fetch_ms"], b["load_ms"], b["other_ms"]) == (20.0, 10.0, 5.0)
    text = format_slowest(rs)
    lines = text.splitlines()
    assert len(lines) == 3 + 5 and lines[3].startswith(f"{90:032d}")
    assert "999" not in text


def test_columns_line_up_for_long_adapter_names():
    rs = [result(10, trace="a" * 32, adapter="x" * 40), result(20, trace="b" * 32, adapter="y")]
    lines = format_slowest(rs).splitlines()
    assert len({len(line) for line in lines[1:]}) == 1
