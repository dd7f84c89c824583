"""Fetches adapters from the adapter store into host staging files.

Each file arrives in chunks; its sha256 is checked against the digest the
store sends with the last chunk before anything is loaded, so a torn or
corrupted transfer can never reach the model.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import grpc

from chameleon_common.adapters import adapter_digest
from chameleon_common.server import CHANNEL_OPTIONS
from chameleon.v1 import store_pb2, store_pb2_grpc


class AdapterFetchError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class AdapterFetcher:
    def __init__(self, store_address: str, staging_dir: Path):
        self.channel = grpc.aio.insecure_channel(store_address, options=CHANNEL_OPTIONS)
        self.stub = store_pb2_grpc.AdapterStoreStub(self.channel)
        self.staging = Path(staging_dir)
        self.staging.mkdir(parents=True, exist_ok=True)

    async def fetch(self, adapter_id: str) -> tuple[Path, int, str]:
        """Returns (folder with the adapter's files, bytes received, digest of its files).

        The digest is chameleon_common.adapters.adapter_digest, the one the store
        publishes as AdapterInfo.sha256 for the same files."""
        dest = self.staging / adapter_id
        tmp = self.staging / f".{adapter_id}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        total = 0
        hashes: dict[str, "hashlib._Hash"] = {}
        handles = {}
        try:
            call = self.stub.FetchAdapter(store_pb2.FetchAdapterRequest(adapter_id=adapter_id))
            async for chunk in call:
                name = os.path.basename(chunk.file_name)
                if name not in handles:
                    handles[name] = open(tmp / name, "wb")
                    hashes[name] = hashlib.sha256()
                handles[name].write(chunk.data)
                hashes[name].update(chunk.data)
                total += len(chunk.data)
                if chunk.last:
                    handles.pop(name).close()
                    if hashes[name].hexdigest() != chunk.sha256:
                        raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                                f"adapter {adapter_id!r}: {name} failed its sha256 check")
        except grpc.aio.AioRpcError as e:
            raise AdapterFetchError(e.code(), e.details() or str(e.code())) from e
        finally:
            for h in handles.values():
                h.close()
        if handles:
            raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                    f"adapter {adapter_id!r}: transfer ended mid-file")
        if not hashes:
            raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                    f"adapter {adapter_id!r}: the store sent no files")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        digest = adapter_digest({n: h.hexdigest() for n, h in hashes.items()})
        return dest, total, digest

    async def close(self) -> None:
        await self.channel.close()
