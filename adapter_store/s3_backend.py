"""S3-compatible object storage (AWS S3, MinIO, SeaweedFS, R2, ...) through obstore.

obstore wraps the Rust `object_store` crate: native async calls (no thread pool
per request), ranged GETs, ETag and version id on every HEAD and LIST entry,
and one small wheel with no botocore dependency. It lives outside core/
because its constructor consults AWS_* environment variables.

Its own retry loop is kept short (the store's callers retry with backoff and a
deadline of their own), so an unreachable endpoint surfaces as
BackendUnavailable within seconds instead of after minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from adapter_store.core.backends import BackendUnavailable, ObjectInfo, ObjectMissing, check_key


@dataclass(frozen=True)
class S3Config:
    bucket: str
    endpoint: str | None = None           # None: AWS itself
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    prefix: str = ""                      # keys live under this prefix in the bucket
    request_timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("an S3 bucket name is required")
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"S3 endpoint {self.endpoint!r} must start with http:// or https://")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both the S3 access key id and secret, or neither")
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("S3 timeouts must be positive and max_retries >= 0")


def _info(meta) -> ObjectInfo:
    # a version id names the content exactly where the bucket keeps versions; else the ETag
    tag = meta.get("version") or meta.get("e_tag") or ""
    return ObjectInfo(str(meta["path"]), int(meta["size"]), str(tag))


class S3Backend:
    kind = "s3"

    def __init__(self, cfg: S3Config):
        from obstore.store import S3Store

        self.cfg = cfg
        kw = {}
        if cfg.access_key_id is not None:
            kw.update(access_key_id=cfg.access_key_id, secret_access_key=cfg.secret_access_key)
        if cfg.endpoint:
            kw["endpoint"] = cfg.endpoint
        self._store = S3Store(
            cfg.bucket, prefix=cfg.prefix or None, region=cfg.region,
            client_options={"allow_http": bool(cfg.endpoint and cfg.endpoint.startswith("http://")),
                            "timeout": timedelta(seconds=cfg.request_timeout_s),
                            "connect_timeout": timedelta(seconds=cfg.connect_timeout_s)},
            retry_config={"max_retries": cfg.max_retries,
                          "retry_timeout": timedelta(seconds=cfg.request_timeout_s),
                          "backoff": {"init_backoff": timedelta(milliseconds=100),
                                      "max_backoff": timedelta(seconds=1), "base": 2}},
            **kw)

    def describe(self) -> str:
        return f"s3://{self.cfg.bucket}/{self.cfg.prefix} at {self.cfg.endpoint or 'AWS'}"

    async def head(self, key: str) -> ObjectInfo | None:
        import obstore

        try:
            return _info(await obstore.head_async(self._store, check_key(key)))
        except FileNotFoundError:
            return None
        except Exception as e:  # obstore raises its own classes for network and server errors
            raise BackendUnavailable(f"S3 HEAD {key}: {_short(e)}") from e

    async def read(self, key: str, offset: int, length: int) -> bytes:
        import obstore

        if length <= 0:
            return b""
        try:
            data = await obstore.get_range_async(self._store, check_key(key), start=offset,
                                                 length=length)
        except FileNotFoundError as e:
            raise ObjectMissing(key) from e
        except Exception as e:
            # a range past the end is not an outage: the object is shorter than asked for
            if "range" in str(e).lower() and "not satisfiable" in str(e).lower():
                return b""
            raise BackendUnavailable(f"S3 GET {key} [{offset}, +{length}): {_short(e)}") from e
        return data.to_bytes()

    async def write(self, key: str, data: bytes) -> ObjectInfo:
        import obstore

        try:
            res = await obstore.put_async(self._store, check_key(key), data)
        except Exception as e:
            raise BackendUnavailable(f"S3 PUT {key}: {_short(e)}") from e
        tag = res.get("version") or res.get("e_tag") or ""
        return ObjectInfo(key, len(data), str(tag))

    async def delete(self, key: str) -> None:
        import obstore

        try:
            await obstore.delete_async(self._store, check_key(key))
        except FileNotFoundError:
            pass
        except Exception as e:
            raise BackendUnavailable(f"S3 DELETE {key}: {_short(e)}") from e

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        import obstore

        try:
            metas = await obstore.list(self._store, prefix=prefix or None).collect_async()
        except Exception as e:
            raise BackendUnavailable(f"S3 LIST {prefix!r}: {_short(e)}") from e
        return sorted((_info(m) for m in metas), key=lambda i: i.key)


def _short(e: Exception) -> str:
    return str(e).split("\n", 1)[0][:300]
