"""Authentication and transport security shared by the three services.

- A deployment shares one secret token (`--auth-token-file`). A service started with
  it refuses every call (health checks aside) that does not present the token as
  `authorization: Bearer <token>`, with UNAUTHENTICATED; the comparison is constant
  time. Its clients (the scheduler towards workers and store, the worker towards the
  store) present the same token.
- `--tls-cert/--tls-key` serve TLS; `--tls-ca` adds mutual TLS: the server then asks
  every client for a certificate signed by that CA. On the client side of a link the
  same flags mean: trust servers signed by `--tls-ca`, and present `--tls-cert/--tls-key`.
- Malformed requests (a truncated message, invalid UTF-8 in a string field) are
  answered with INVALID_ARGUMENT rather than UNKNOWN with a logged traceback.
- `--max-message-bytes` bounds what a service accepts in one message.
"""
from __future__ import annotations

import argparse
import hmac
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TOKEN_HEADER = "authorization"
# calls a probe makes without credentials (orchestrators' health checks)
OPEN_METHODS = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class SecurityConfig:
    auth_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        for name in ("auth_token_file", "tls_cert", "tls_key", "tls_ca"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise ValueError(f"--{name.replace('_', '-')} {p}: no such file")
        if self.max_message_bytes < 1024:
            raise ValueError(f"--max-message-bytes must be >= 1024, got {self.max_message_bytes}")
        if self.auth_token_file is not None and not self.token():
            raise ValueError(f"--auth-token-file {self.auth_token_file} is empty")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def token(self) -> str | None:
        if self.auth_token_file is None:
            return None
        return Path(self.auth_token_file).read_text().strip()

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.max_receive_message_length", self.max_message_bytes)]


def add_arguments(ap: argparse.ArgumentParser, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
                  ) -> None:
    g = ap.add_argument_group("security")
    g.add_argument("--auth-token-file", type=Path,
                   help="file holding this deployment's shared token: required from callers, "
                        "presented to the services this one calls")
    g.add_argument("--tls-cert", type=Path, help="PEM certificate (server, and client cert for mTLS)")
    g.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    g.add_argument("--tls-ca", type=Path,
                   help="PEM CA: verify peers with it (on a server: require client certificates)")
    g.add_argument("--max-message-bytes", type=int, default=max_message_bytes,
                   help=f"largest gRPC message accepted (default {max_message_bytes})")


def config_from_args(a: argparse.Namespace) -> SecurityConfig:
    return SecurityConfig(auth_token_file=a.auth_token_file, tls_cert=a.tls_cert, tls_key=a.tls_key,
                          tls_ca=a.tls_ca, max_message_bytes=a.max_message_bytes)


# -- server side --------------------------------------------------------------
def server_credentials(cfg: SecurityConfig) -> grpc.ServerCredentials | None:
    if not cfg.tls:
        return None
    pair = (Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())
    ca = Path(cfg.tls_ca).read_bytes() if cfg.tls_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def _deny_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
                  ) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers `code` at once."""
    async def unary(request_or_iterator, context):
        await context.abort(code, message)

    async def streaming(request_or_iterator, context):
        await context.abort(code, message)
        yield  # pragma: no cover  (makes this an async generator)

    kw = dict(request_deserializer=handler.request_deserializer,
              response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for every call without the deployment's token (health checks aside)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def _ok(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        for key, value in metadata or ():
            if key == TOKEN_HEADER:
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        if self._ok(details.invocation_metadata):
            return handler
        return _deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                             "this service needs the deployment's token (authorization: Bearer ...)")


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


def _safe(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError, UnicodeDecodeError, ...
            return _Malformed(e)
    return parse


_BAD = "malformed request: the message could not be parsed ({})"


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Requests that fail to parse get INVALID_ARGUMENT instead of UNKNOWN."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                    or handler.stream_stream)
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # grpc's own synchronous servicers (health) are left as they are
        de = _safe(handler.request_deserializer)
        kw = dict(request_deserializer=de, response_serializer=handler.response_serializer)
        if handler.unary_unary:
            inner = handler.unary_unary

            async def uu(request, context):
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _BAD.format(request.error))
                return await inner(request, context)
            return grpc.unary_unary_rpc_method_handler(uu, **kw)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def us(request, context):
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _BAD.format(request.error))
                async for item in inner_us(request, context):
                    yield item
            return grpc.unary_stream_rpc_method_handler(us, **kw)

        async def checked(iterator, context):
            async for request in iterator:
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _BAD.format(request.error))
                yield request

        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def su(iterator, context):
                return await inner_su(checked(iterator, context), context)
            return grpc.stream_unary_rpc_method_handler(su, **kw)
        inner_ss = handler.stream_stream

        async def ss(iterator, context):
            async for item in inner_ss(checked(iterator, context), context):
                yield item
        return grpc.stream_stream_rpc_method_handler(ss, **kw)


def server_interceptors(cfg: SecurityConfig) -> list[grpc.aio.ServerInterceptor]:
    out: list[grpc.aio.ServerInterceptor] = []
    token = cfg.token()
    if token:
        out.append(TokenAuthInterceptor(token))
    out.append(MalformedRequestInterceptor())
    return out


# -- client side --------------------------------------------------------------
class _WithToken:
    def __init__(self, token: str):
        self._pair = (TOKEN_HEADER, f"Bearer {token}")

    def _details(self, d):
        md = list(d.metadata or []) + [self._pair]
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


# grpc.aio files each interceptor under the first call type it matches, so one class per type
class _TokenUU(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _TokenUS(_WithToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _TokenSU(_WithToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _TokenSS(_WithToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def channel_credentials(cfg: SecurityConfig) -> grpc.ChannelCredentials | None:
    if not (cfg.tls or cfg.tls_ca):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(cfg.tls_ca).read_bytes() if cfg.tls_ca else None,
        private_key=Path(cfg.tls_key).read_bytes() if cfg.tls_key else None,
        certificate_chain=Path(cfg.tls_cert).read_bytes() if cfg.tls_cert else None)


def aio_channel(address: str, cfg: SecurityConfig | None = None,
                options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """A channel to another service of the deployment, with its token and TLS settings."""
    cfg = cfg or SecurityConfig()
    opts = list(options if options is not None else cfg.channel_options())
    token = cfg.token()
    interceptors = [k(token) for k in (_TokenUU, _TokenUS, _TokenSU, _TokenSS)] if token else None
    creds = channel_credentials(cfg)
    if creds is None:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
    return grpc.aio.secure_channel(address, creds, options=opts, interceptors=interceptors)


def internal_channel_options(cfg: SecurityConfig) -> list[tuple[str, Any]]:
    """Options for links between services: the message limit, and a peer restarted on its
    address is found again within ~2 s (gRPC's default backoff grows to 120 s)."""
    return cfg.channel_options() + [("grpc.initial_reconnect_backoff_ms", 250),
                                    ("grpc.max_reconnect_backoff_ms", 2000)]
