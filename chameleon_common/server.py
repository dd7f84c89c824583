"""Process plumbing shared by the three services: a grpc.aio server with
standard health checking and reflection, a port file for launchers that ask
for port 0, and a graceful drain on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # a peer restarted on its address is found again within ~2 s (gRPC's default backoff
    # grows to 120 s between attempts)
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class Server:
    def __init__(self, host: str, port: int, service_names: list[str], security=None):
        """`security` (chameleon_common.security.SecurityConfig): token, TLS/mTLS, message
        size limit; every server also answers malformed requests with INVALID_ARGUMENT."""
        from chameleon_common.security import SecurityConfig, server_credentials, server_interceptors

        security = security or SecurityConfig()
        self.server = grpc.aio.server(options=security.channel_options(),
                                      interceptors=server_interceptors(security))
        creds = server_credentials(security)
        if creds is None:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self.server.add_secure_port(f"{host}:{port}", creds)
        if self.port == 0:
            raise ValueError(f"cannot bind {host}:{port}")
        self.host = host
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names = list(service_names)
        reflection.enable_server_reflection(
            self._names + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ["", *self._names]:
            self.health.set(name, status)

    async def run(self, *, port_file: str | None = None, grace_s: float = 10.0,
                  drain: Callable[[], Awaitable[None]] | None = None) -> None:
        """Serve until SIGTERM/SIGINT, then stop taking work, drain and exit."""
        await self.server.start()
        self.set_serving(True)
        if port_file:
            tmp = Path(port_file).with_suffix(".tmp")
            tmp.write_text(str(self.port))
            os.replace(tmp, port_file)  # atomic: a launcher never reads half a number
        log.info("listening on %s", self.address)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: draining for up to %.1fs", grace_s)
        self.set_serving(False)
        if drain is not None:
            try:
                await asyncio.wait_for(drain(), timeout=grace_s)
            except asyncio.TimeoutError:
                log.warning("drain did not finish within %.1fs", grace_s)
        await self.server.stop(grace_s)
        log.info("stopped")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
