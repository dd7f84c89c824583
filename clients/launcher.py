"""Starts the three services as separate local processes on free loopback ports.

Used by `chameleon demo` and the end-to-end tests. Each process is asked for
port 0 and writes the port it bound to a file, so there is no port race.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    port_file: Path
    log_path: Path
    port: int = 0
    module: str = ""
    args: list[str] = field(default_factory=list)
    metrics_port: int | None = None   # when started with --metrics-port

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class ClusterSpec:
    model: Path | None               # None: the workers model one (--sim-profile in worker_args)
    adapters: Path | None            # a local folder; None when store_args name another backend
    num_workers: int = 1
    policy: str = "fifo"
    worker_args: list[str] = field(default_factory=list)
    scheduler_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 180.0
    env: dict[str, str] = field(default_factory=dict)   # extra environment for every service
    store_args: list[str] = field(default_factory=list)  # e.g. SeaweedFS.store_args()
    # extra environment for one kind of service: "store", "worker" (every worker), "scheduler"
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # for every service: --auth-token-file, --tls-cert/--tls-key/--tls-ca ...
    common_args: list[str] = field(default_factory=list)
    # PEM files the launcher's own health checks use when the services speak TLS
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


class Cluster:
    def __init__(self, spec: ClusterSpec, workdir: Path | None = None):
        self.spec = spec
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="chameleon-"))
        self.procs: list[Proc] = []
        self.store: Proc | None = None
        self.workers: list[Proc] = []
        self.scheduler: Proc | None = None

    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return self.scheduler.address

    def _spawn(self, name: str, module: str, args: list[str], port: int = 0) -> Proc:
        port_file = self.dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        Path(f"{port_file}.metrics").unlink(missing_ok=True)
        log_path = self.dir / f"{name}.log"
        kind = "worker" if name.startswith("worker") else name
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.spec.env,
                   **self.spec.service_env.get(kind, {}))
        cmd = [sys.executable, "-m", module, "--port", str(port), "--port-file", str(port_file),
               *self.spec.common_args, *args]
        popen = subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)
        p = Proc(name, popen, port_file, log_path, module=module, args=list(args))
        self.procs.append(p)
        return p

    def restart(self, p: Proc, kill: bool = True) -> Proc:
        """Stop one service (SIGKILL, or SIGTERM with kill=False) and start it again on the
        same port, so the others find it again; waits until it is healthy."""
        if p.popen.poll() is None:
            p.popen.kill() if kill else p.popen.terminate()
        p.popen.wait(timeout=30)
        at = self.procs.index(p)
        self.procs.remove(p)
        q = self._spawn(p.name, p.module, p.args, port=p.port)
        self.procs.insert(at, self.procs.pop())  # keep the stop order (scheduler first)
        if p in self.workers:
            self.workers[self.workers.index(p)] = q
        if p is self.store:
            self.store = q
        if p is self.scheduler:
            self.scheduler = q
        self._wait_ready(q)
        return q

    def _health_channel(self, address: str) -> grpc.Channel:
        s = self.spec
        if s.tls_ca is None:
            return grpc.insecure_channel(address)
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(s.tls_ca).read_bytes(),
            private_key=Path(s.tls_key).read_bytes() if s.tls_key else None,
            certificate_chain=Path(s.tls_cert).read_bytes() if s.tls_cert else None)
        return grpc.secure_channel(address, creds)

    def _store_args(self) -> list[str]:
        s = self.spec
        backend = ["--adapters", str(s.adapters)] if s.adapters is not None else []
        model = ["--base-model", str(s.model)] if s.model is not None else []
        return [*backend, *model, *s.store_args]

    def kill_store(self) -> None:
        """SIGKILL the adapter store (an outage, no goodbye)."""
        self.store.popen.kill()
        self.store.popen.wait(10)

    def restart_store(self) -> None:
        """Starts the store again on the address it had; the others are not told."""
        port = self.store.port
        if self.store.popen.poll() is None:
            self.kill_store()
        self.procs.remove(self.store)
        self.store = self._spawn("store", "adapter_store.main", self._store_args(), port=port)
        self.procs.insert(0, self.procs.pop())  # still stopped last
        self._wait_ready(self.store)

    def _wait_ready(self, p: Proc) -> None:
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while not p.port_file.exists():
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.name} did not start in time:\n{p.log_tail()}")
            time.sleep(0.05)
        p.port = int(p.port_file.read_text())
        metrics_file = Path(f"{p.port_file}.metrics")   # written before the port file
        p.metrics_port = int(metrics_file.read_text()) if metrics_file.exists() else None
        with self._health_channel(p.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{p.name} not healthy in time:\n{p.log_tail()}")
                time.sleep(0.1)

    def start(self) -> None:
        s = self.spec
        self.store = self._spawn("store", "adapter_store.main", self._store_args())
        self._wait_ready(self.store)
        model = ["--model", str(s.model)] if s.model is not None else []
        for i in range(s.num_workers):
            w = self._spawn(f"worker{i}", "gpu_worker.main",
                            [*model, "--store", self.store.address,
                             "--worker-id", f"worker{i}", *s.worker_args])
            self.workers.append(w)
        for w in self.workers:
            self._wait_ready(w)
        args = ["--store", self.store.address, "--policy", s.policy, *s.scheduler_args]
        for w in self.workers:
            args += ["--worker", w.address]
        self.scheduler = self._spawn("scheduler", "scheduler_svc.main", args)
        self._wait_ready(self.scheduler)

    def stop(self, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM everything (scheduler first, so it drains), then wait; kill stragglers."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for p in reversed(self.procs):
            try:
                codes[p.name] = p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                codes[p.name] = None
        return codes
