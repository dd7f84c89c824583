"""Client of the adapter store's registry: push, list, show, delete (`chameleon adapters ...`).

Push and delete present the admin token as `chameleon-admin-token: Bearer <token>`; a
deployment token, when the services use one, travels as `authorization: Bearer <token>`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import AsyncIterator

import grpc

from chameleon.v1 import common_pb2, store_pb2, store_pb2_grpc

ADMIN_TOKEN_HEADER = "chameleon-admin-token"
PUSH_FILES = ("adapter_config.json", "adapter_model.safetensors")
PUSH_CHUNK_BYTES = 1 << 20


class StoreError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class StoreClient:
    def __init__(self, address: str, *, admin_token: str | None = None,
                 auth_token: str | None = None, channel: grpc.aio.Channel | None = None,
                 tls_ca: Path | None = None, tls_cert: Path | None = None,
                 tls_key: Path | None = None):
        """TLS when `tls_ca` is given (the CA that signed the store's certificate); mutual TLS
        when `tls_cert`/`tls_key` are given too."""
        options = [("grpc.max_send_message_length", 64 << 20),
                   ("grpc.max_receive_message_length", 64 << 20)]
        if channel is None and tls_ca is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None)
            channel = grpc.aio.secure_channel(address, creds, options=options)
        self.channel = channel or grpc.aio.insecure_channel(address, options=options)
        self.stub = store_pb2_grpc.AdapterStoreStub(self.channel)
        md = []
        if auth_token:
            md.append(("authorization", f"Bearer {auth_token}"))
        self._md = tuple(md)
        self._admin_md = tuple(md + ([(ADMIN_TOKEN_HEADER, f"Bearer {admin_token}")]
                                     if admin_token else []))

    async def __aenter__(self) -> "StoreClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()

    async def _call(self, coro):
        try:
            return await coro
        except grpc.aio.AioRpcError as e:
            raise StoreError(e.code(), e.details() or "") from None

    async def list(self) -> list[common_pb2.AdapterInfo]:
        r = await self._call(self.stub.ListAdapters(common_pb2.ListAdaptersRequest(),
                                                    metadata=self._md, timeout=60))
        return list(r.adapters)

    async def show(self, ref: str) -> common_pb2.AdapterInfo:
        return await self._call(self.stub.StatAdapter(store_pb2.StatAdapterRequest(adapter_id=ref),
                                                      metadata=self._md, timeout=60))

    async def delete(self, ref: str) -> list[str]:
        r = await self._call(self.stub.DeleteAdapter(store_pb2.DeleteAdapterRequest(adapter_id=ref),
                                                     metadata=self._admin_md, timeout=60))
        return list(r.deleted)

    async def push(self, folder: Path, name: str, timeout: float = 600) -> common_pb2.AdapterInfo:
        folder = Path(folder)
        missing = [f for f in PUSH_FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: no {', '.join(missing)} (a PEFT LoRA adapter folder)")
        return await self._call(self.stub.PushAdapter(_push_messages(folder, name),
                                                      metadata=self._admin_md, timeout=timeout))


async def _push_messages(folder: Path, name: str) -> AsyncIterator[store_pb2.PushAdapterRequest]:
    yield store_pb2.PushAdapterRequest(header=store_pb2.PushHeader(name=name))
    for fname in PUSH_FILES:
        path = folder / fname
        size = path.stat().st_size
        h = hashlib.sha256()
        with open(path, "rb") as f:
            offset = 0
            while True:
                data = f.read(PUSH_CHUNK_BYTES)
                h.update(data)
                last = offset + len(data) >= size
                yield store_pb2.PushAdapterRequest(chunk=store_pb2.AdapterChunk(
                    file_name=fname, offset=offset, data=data, last=last, file_size=size,
                    sha256=h.hexdigest() if last else ""))
                offset += len(data)
                if last:
                    break


def describe(info: common_pb2.AdapterInfo) -> str:
    state = "ok" if info.valid else f"INVALID: {info.invalid_reason}"
    return (f"{info.adapter_id:<32} r={info.rank:<4} {info.size_bytes / 1e6:8.1f} MB  "
            f"{','.join(info.target_modules):<40} {state}")
