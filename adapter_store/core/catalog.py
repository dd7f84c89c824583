"""The adapter registry over one object backend (layout and references: refs.py).

Every adapter is validated against the served base model before it is offered,
so a worker never starts loading weights that cannot fit; invalid plain
adapters stay listed, with the reason, and an invalid push is refused with it.

Round trips: `stat` costs one LIST of the adapter's prefix, and none within
`stat_ttl_s` of the last one; a version's record is read once (it is
immutable); a plain adapter is re-hashed only when an object's etag changed.
When the backend cannot be reached, the last known record is served (stale
if error), so adapters already known keep working while the store is away.

Content is pinned at registration: the first time a plain adapter is found valid
its digest is recorded (and its float tensors are checked once for NaN/Inf, as a
push's are). If its files later hash to another digest, or a stream finds bytes
that differ from the record (`mark_corrupt`), the record says `content_mismatch`
and is not valid: the store refuses it with DATA_LOSS and lists it flagged. To
publish new weights under a name, push a version (or restart the store).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from chameleon_common.adapters import adapter_digest

from .backends import BackendUnavailable, ObjectBackend, ObjectInfo
from .refs import (ADAPTER_FILES, CONFIG_FILE, MANIFEST_FILE, VERSIONS_DIR, WEIGHTS_FILE,
                   InvalidAdapterId, parse_ref, version_key, version_prefix)
from .safetensors_header import (SafetensorsFormatError, TensorMeta, header_length, parse_header,
                                 read_header)
from .tensor_check import non_finite_in_buffer, non_finite_tensors

__all__ = ["AdapterCatalog", "AdapterRecord", "FileRecord", "AdapterNotFound", "AdapterInvalid",
           "InvalidAdapterId", "PushLimits", "Validator"]

# validate(config, tensors) -> list of problems (empty when the adapter fits the base model)
Validator = Callable[[dict, dict[str, TensorMeta]], list[str]]


class AdapterNotFound(KeyError):
    pass


class AdapterInvalid(ValueError):
    """The adapter exists (or was pushed) but cannot be served; the message says why."""


@dataclass(frozen=True)
class PushLimits:
    max_config_bytes: int = 1 << 20
    max_weights_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        if self.max_config_bytes <= 0 or self.max_weights_bytes <= 0:
            raise ValueError("push limits must be positive")


@dataclass(frozen=True)
class FileRecord:
    name: str
    size_bytes: int
    sha256: str
    key: str = ""
    etag: str = ""


@dataclass
class AdapterRecord:
    adapter_id: str                 # the resolved reference: `name` (plain) or `name@n`
    name: str = ""
    version: int | None = None
    rank: int = 0
    lora_alpha: float = 0.0
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=list)
    size_bytes: int = 0
    sha256: str = ""                # adapter_digest over the files
    valid: bool = False
    invalid_reason: str = ""
    files: list[FileRecord] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    created_unix: float = 0.0
    content_mismatch: bool = False  # bytes differ from the digest pinned at registration


@dataclass
class _Listing:
    checked_at: float
    plain: dict[str, ObjectInfo]            # file name -> object
    manifests: dict[int, ObjectInfo]        # version -> manifest object


class AdapterCatalog:
    def __init__(self, backend: ObjectBackend, validate: Validator, *, chunk_bytes: int = 1 << 20,
                 stat_ttl_s: float = 1.0, limits: PushLimits = PushLimits(),
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        if stat_ttl_s < 0:
            raise ValueError("stat_ttl_s must be >= 0")
        self.backend = backend
        self._validate = validate
        self.chunk_bytes = chunk_bytes
        self.stat_ttl_s = stat_ttl_s
        self.limits = limits
        self._clock, self._wall = clock, wall_clock
        self._listings: dict[str, _Listing] = {}
        self._plain: dict[str, tuple[tuple, AdapterRecord]] = {}
        self._versions: dict[tuple[str, int], tuple[str, AdapterRecord]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pins: dict[str, str] = {}      # plain adapter name -> digest at registration
        self._corrupt: dict[str, str] = {}   # adapter id -> why its stored bytes are bad

    # -- reading ----------------------------------------------------------------
    async def list(self) -> list[AdapterRecord]:
        """Every adapter's latest record, from one LIST of the whole backend."""
        objects = await self.backend.list("")
        now = self._clock()
        by_name: dict[str, list[ObjectInfo]] = {}
        for o in objects:
            by_name.setdefault(o.key.split("/", 1)[0], []).append(o)
        names = sorted({o.key.split("/", 1)[0] for o in objects if _is_entry(o.key)})
        for n in names:
            self._listings[n] = _parse_listing(n, by_name[n], now)
        out = []
        for n in names:
            try:
                out.append(await self.stat(n))
            except AdapterNotFound:
                pass
        return out

    async def stat(self, ref_text: str) -> AdapterRecord:
        ref = parse_ref(ref_text)
        listing = await self._listing(ref.name)
        versions = sorted(listing.manifests)
        if ref.version is not None:
            if ref.version not in listing.manifests:
                raise AdapterNotFound(str(ref))
            rec = await self._version_record(ref.name, ref.version, listing.manifests[ref.version])
        elif versions:
            rec = await self._version_record(ref.name, versions[-1], listing.manifests[versions[-1]])
        elif CONFIG_FILE in listing.plain:
            rec = await self._plain_record(ref.name, listing.plain)
        else:
            raise AdapterNotFound(str(ref))
        reason = self._corrupt.get(rec.adapter_id)
        if reason is not None and rec.valid:
            return replace(rec, versions=versions, valid=False, content_mismatch=True,
                           invalid_reason=reason)
        return replace(rec, versions=versions)

    def mark_corrupt(self, adapter_id: str, reason: str) -> None:
        """A stream found bytes that differ from the record: refuse and flag the adapter."""
        self._corrupt[adapter_id] = reason

    async def require_valid(self, ref_text: str) -> AdapterRecord:
        rec = await self.stat(ref_text)
        if not rec.valid:
            raise AdapterInvalid(f"adapter {rec.adapter_id!r} cannot be served: {rec.invalid_reason}")
        return rec

    async def read(self, f: FileRecord, offset: int, length: int) -> bytes:
        return await self.backend.read(f.key, offset, length)

    def forget(self, name: str) -> None:
        """Drops what is known about `name`; the next stat asks the backend."""
        self._listings.pop(name, None)
        self._plain.pop(name, None)
        for k in [k for k in self._versions if k[0] == name]:
            del self._versions[k]

    async def _listing(self, name: str) -> _Listing:
        now = self._clock()
        hit = self._listings.get(name)
        if hit is not None and now - hit.checked_at < self.stat_ttl_s:
            return hit
        try:
            objects = await self.backend.list(f"{name}/")
        except BackendUnavailable:
            if hit is not None:
                return hit  # stale if error: what was there a moment ago still is, most likely
            raise
        listing = _parse_listing(name, objects, now)
        self._listings[name] = listing
        return listing

    async def _plain_record(self, name: str, objects: dict[str, ObjectInfo]) -> AdapterRecord:
        stamp = tuple((n, objects[n].etag, objects[n].size) if n in objects else (n,)
                      for n in ADAPTER_FILES)
        hit = self._plain.get(name)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        rec = AdapterRecord(adapter_id=name, name=name)
        missing = [n for n in ADAPTER_FILES if n not in objects]
        if missing:
            rec.invalid_reason = f"missing {', '.join(missing)}"
        else:
            files = [FileRecord(n, objects[n].size, await self._sha256(objects[n]), objects[n].key,
                                objects[n].etag) for n in ADAPTER_FILES]
            pin = self._pins.get(name)
            await self._describe(rec, files, check_values=pin is None)
            if pin is not None and rec.sha256 != pin:
                rec.valid, rec.content_mismatch = False, True
                rec.invalid_reason = (f"the files' bytes no longer match the digest pinned at "
                                      f"registration ({pin[:12]}..., now {rec.sha256[:12]}...)")
            elif pin is not None:
                self._corrupt.pop(name, None)   # the pinned bytes are back
            elif rec.valid:
                self._pins[name] = rec.sha256
        self._plain[name] = (stamp, rec)
        return rec

    async def _version_record(self, name: str, version: int, manifest: ObjectInfo) -> AdapterRecord:
        hit = self._versions.get((name, version))
        if hit is not None and hit[0] == manifest.etag:
            return hit[1]
        ref = f"{name}@{version}"
        rec = AdapterRecord(adapter_id=ref, name=name, version=version)
        try:
            m = json.loads(await self.backend.read(manifest.key, 0, manifest.size))
            rec.created_unix = float(m.get("created_unix", 0.0))
            files = [FileRecord(f["name"], int(f["size_bytes"]), str(f["sha256"]),
                                version_key(name, version, f["name"])) for f in m["files"]]
            if sorted(f.name for f in files) != sorted(ADAPTER_FILES):
                raise ValueError("manifest does not list the adapter's two files")
        except (ValueError, KeyError, TypeError) as e:
            rec.invalid_reason = f"{MANIFEST_FILE} of {ref} is unreadable: {e}"
        else:
            await self._describe(rec, files)
        self._versions[(name, version)] = (manifest.etag, rec)
        return rec

    async def _describe(self, rec: AdapterRecord, files: list[FileRecord],
                        check_values: bool = False) -> None:
        """Fills rec from its files: config fields, digest, and the validation verdict;
        `check_values` also reads every float tensor for NaN/Inf."""
        rec.files = files
        rec.sha256 = adapter_digest({f.name: f.sha256 for f in files})
        by_name = {f.name: f for f in files}
        cfg_file, w_file = by_name[CONFIG_FILE], by_name[WEIGHTS_FILE]
        rec.size_bytes = w_file.size_bytes
        if cfg_file.size_bytes > self.limits.max_config_bytes:
            rec.invalid_reason = f"{CONFIG_FILE} is larger than {self.limits.max_config_bytes} bytes"
            return
        try:
            config = _parse_config(await self.read(cfg_file, 0, cfg_file.size_bytes))
        except ValueError as e:
            rec.invalid_reason = str(e)
            return
        _fill_config(rec, config)
        try:
            tensors = await read_header(lambda o, n: self.read(w_file, o, n), w_file.size_bytes,
                                        WEIGHTS_FILE)
        except SafetensorsFormatError as e:
            rec.invalid_reason = str(e)
            return
        problems = self._validate(config, tensors)
        if not problems and check_values:
            start = 8 + header_length(await self.read(w_file, 0, 8), w_file.size_bytes, WEIGHTS_FILE)
            bad = await non_finite_tensors(lambda o, n: self.read(w_file, o, n), tensors, start)
            problems = [f"tensor {n} holds NaN or Inf values" for n in bad]
        rec.valid = not problems
        rec.invalid_reason = "; ".join(problems[:5])

    async def _sha256(self, obj: ObjectInfo) -> str:
        h = hashlib.sha256()
        offset = 0
        while offset < obj.size:
            data = await self.backend.read(obj.key, offset, self.chunk_bytes)
            if not data:
                break
            h.update(data)
            offset += len(data)
        return h.hexdigest()

    # -- writing ----------------------------------------------------------------
    def check_push(self, name: str, files: dict[str, bytes]) -> tuple[dict, dict[str, TensorMeta]]:
        """Everything a push must pass before anything is written; raises AdapterInvalid."""
        ref = parse_ref(name)
        if ref.version is not None:
            raise InvalidAdapterId(f"push a name, not a version ({name!r}): versions are assigned")
        if sorted(files) != sorted(ADAPTER_FILES):
            raise AdapterInvalid(f"a push carries exactly {' and '.join(ADAPTER_FILES)}; got "
                                 f"{', '.join(sorted(files)) or 'no files'}")
        cfg, weights = files[CONFIG_FILE], files[WEIGHTS_FILE]
        if len(cfg) > self.limits.max_config_bytes:
            raise AdapterInvalid(f"{CONFIG_FILE} is {len(cfg)} bytes; the limit is "
                                 f"{self.limits.max_config_bytes}")
        if len(weights) > self.limits.max_weights_bytes:
            raise AdapterInvalid(f"{WEIGHTS_FILE} is {len(weights)} bytes; the limit is "
                                 f"{self.limits.max_weights_bytes}")
        config = _parse_config(cfg)
        try:
            n = header_length(weights[:8], len(weights), WEIGHTS_FILE)
            tensors = parse_header(weights[8:8 + n], len(weights) - 8 - n, WEIGHTS_FILE)
        except SafetensorsFormatError as e:
            raise AdapterInvalid(str(e)) from e
        problems = self._validate(config, tensors)
        if not problems:
            bad = non_finite_in_buffer(weights, tensors, 8 + n)
            problems = [f"tensor {t} holds NaN or Inf values" for t in bad]
        if problems:
            raise AdapterInvalid("; ".join(problems[:5]))
        return config, tensors

    async def push(self, name: str, files: dict[str, bytes]) -> AdapterRecord:
        """Validates and stores a new immutable version of `name`; returns its record."""
        self.check_push(name, files)
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._listings.pop(name, None)
            listing = await self._listing(name)
            version = max(listing.manifests, default=0) + 1
            sums = {}
            for fname in sorted(files, key=lambda n: n != WEIGHTS_FILE):  # the big one first
                await self.backend.write(version_key(name, version, fname), files[fname])
                sums[fname] = hashlib.sha256(files[fname]).hexdigest()
            manifest = {"name": name, "version": version, "created_unix": self._wall(),
                        "digest": adapter_digest(sums),
                        "files": [{"name": n, "size_bytes": len(files[n]), "sha256": sums[n]}
                                  for n in ADAPTER_FILES]}
            # the manifest commits the version: until it exists, nobody sees the files
            await self.backend.write(version_key(name, version, MANIFEST_FILE),
                                     json.dumps(manifest, indent=1).encode())
            self._listings.pop(name, None)
        return await self.stat(f"{name}@{version}")

    async def delete(self, ref_text: str) -> list[str]:
        """Deletes one version (`name@n`) or every version and plain file of `name`."""
        ref = parse_ref(ref_text)
        async with self._locks.setdefault(ref.name, asyncio.Lock()):
            self._listings.pop(ref.name, None)
            listing = await self._listing(ref.name)
            if ref.version is not None:
                targets = [ref.version] if ref.version in listing.manifests else []
                plain = False
            else:
                targets, plain = sorted(listing.manifests), bool(listing.plain)
            if not targets and not plain:
                raise AdapterNotFound(str(ref))
            deleted = []
            for v in targets:
                await self.backend.delete(version_key(ref.name, v, MANIFEST_FILE))  # gone from here on
                for f in ADAPTER_FILES:
                    await self.backend.delete(version_key(ref.name, v, f))
                deleted.append(f"{ref.name}@{v}")
            if plain:
                for o in listing.plain.values():
                    await self.backend.delete(o.key)
                deleted.append(ref.name)
            self.forget(ref.name)
        return deleted


def _parse_listing(name: str, objects: list[ObjectInfo], now: float) -> _Listing:
    listing = _Listing(now, {}, {})
    vp = version_prefix(name)
    for o in objects:
        rest = o.key[len(name) + 1:]
        if rest in ADAPTER_FILES:
            listing.plain[rest] = o
        elif o.key.startswith(vp) and o.key.endswith("/" + MANIFEST_FILE):
            v = o.key[len(vp):-len(MANIFEST_FILE) - 1]
            if v.isdigit() and not v.startswith("0"):
                listing.manifests[int(v)] = o
    return listing


def _is_entry(key: str) -> bool:
    parts = key.split("/")
    return (len(parts) == 2 and parts[1] == CONFIG_FILE) or (
        len(parts) == 4 and parts[1] == VERSIONS_DIR and parts[3] == MANIFEST_FILE)


def _parse_config(raw: bytes) -> dict:
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterInvalid(f"{CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise AdapterInvalid(f"{CONFIG_FILE} is not a JSON object")
    return config


def _fill_config(rec: AdapterRecord, config: dict) -> None:
    ranks = [config.get("r") or 0]
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, dict):
        ranks += list(pattern.values())
    rec.rank = max((int(r) for r in ranks if isinstance(r, (int, float))), default=0)
    try:
        rec.lora_alpha = float(config.get("lora_alpha") or 0)
    except (TypeError, ValueError):
        rec.lora_alpha = 0.0
    rec.use_rslora = bool(config.get("use_rslora", False))
    tm = config.get("target_modules") or []
    rec.target_modules = [tm] if isinstance(tm, str) else [str(t) for t in tm]
