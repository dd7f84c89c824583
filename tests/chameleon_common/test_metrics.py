import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from chameleon_common.metrics import StateCollector, check_metrics_port, rank_class, serve_metrics


def test_rank_classes():
    assert [rank_class(r) for r in (0, 1, 8, 9, 64, 128, 129)] == [
        "base", "r<=8", "r<=8", "r<=16", "r<=64", "r<=128", "r>128"]


def test_state_is_read_at_scrape_time_and_the_port_file_names_the_port(tmp_path):
    value = [1]

    def state():
        g = GaugeMetricFamily("x_state", "a value read at scrape time")
        g.add_metric([], value[0])
        yield g

    reg = CollectorRegistry()
    reg.register(StateCollector(state))
    port = serve_metrics(reg, 0, "127.0.0.1", str(tmp_path / "svc.port"))
    assert int((tmp_path / "svc.port.metrics").read_text()) == port
    value[0] = 7
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "x_state 7.0" in body
    assert serve_metrics(reg, None, "127.0.0.1") is None
    with pytest.raises(ValueError):
        check_metrics_port(70000)
