"""A catalog of PEFT LoRA adapters kept in a backend (a local folder by default).

An adapter is a folder `<root>/<adapter_id>/` with `adapter_config.json` and
`adapter_model.safetensors`. The catalog validates every adapter against the
served base model before it is offered, so a worker never starts loading
weights that cannot fit; invalid adapters stay listed, with the reason.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from chameleon_common.adapters import adapter_digest

from .safetensors_header import SafetensorsFormatError, read_tensor_shapes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# validate(config, tensor_shapes) -> list of problems (empty when the adapter fits)
Validator = Callable[[dict, dict[str, tuple[int, ...]]], list[str]]


class AdapterNotFound(KeyError):
    pass


class InvalidAdapterId(ValueError):
    pass


class AdapterInvalid(ValueError):
    """The adapter exists but does not fit the base model (message names the tensor)."""


@dataclass
class FileRecord:
    name: str
    size_bytes: int
    sha256: str


@dataclass
class AdapterRecord:
    adapter_id: str
    rank: int = 0
    lora_alpha: float = 0.0
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=list)
    size_bytes: int = 0
    sha256: str = ""
    valid: bool = False
    invalid_reason: str = ""
    files: list[FileRecord] = field(default_factory=list)


class AdapterBackend(Protocol):
    """Where adapter files live (local folder now; object storage later)."""

    def list_ids(self) -> list[str]: ...
    def file_version(self, adapter_id: str, name: str) -> tuple[int, float] | None:
        """(size, mtime) or None when the file does not exist."""
        ...
    def read(self, adapter_id: str, name: str, offset: int, length: int) -> bytes: ...
    def local_path(self, adapter_id: str, name: str) -> Path | None: ...


class LocalFolderBackend:
    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"adapter folder {self.root} does not exist")

    def list_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _ID_RE.match(p.name) and (p / CONFIG_FILE).exists())

    def file_version(self, adapter_id: str, name: str) -> tuple[int, float] | None:
        p = self.root / adapter_id / name
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime

    def read(self, adapter_id: str, name: str, offset: int, length: int) -> bytes:
        with open(self.root / adapter_id / name, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def local_path(self, adapter_id: str, name: str) -> Path | None:
        return self.root / adapter_id / name


def check_adapter_id(adapter_id: str) -> None:
    if not _ID_RE.match(adapter_id or ""):
        raise InvalidAdapterId(
            f"adapter id {adapter_id!r} is not valid: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit")


class AdapterCatalog:
    """Validated, digest-stamped view of a backend; re-reads an adapter when its files change."""

    def __init__(self, backend: AdapterBackend, validate: Validator, chunk_bytes: int = 1 << 20):
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.backend = backend
        self._validate = validate
        self.chunk_bytes = chunk_bytes
        self._cache: dict[str, tuple[tuple, AdapterRecord]] = {}

    def list(self) -> list[AdapterRecord]:
        return [self.stat(i) for i in self.backend.list_ids()]

    def stat(self, adapter_id: str) -> AdapterRecord:
        check_adapter_id(adapter_id)
        versions = tuple(self.backend.file_version(adapter_id, n) for n in ADAPTER_FILES)
        if versions[0] is None:
            self._cache.pop(adapter_id, None)
            raise AdapterNotFound(adapter_id)
        hit = self._cache.get(adapter_id)
        if hit is not None and hit[0] == versions:
            return hit[1]
        rec = self._build(adapter_id, versions)
        self._cache[adapter_id] = (versions, rec)
        return rec

    def require_valid(self, adapter_id: str) -> AdapterRecord:
        rec = self.stat(adapter_id)
        if not rec.valid:
            raise AdapterInvalid(f"adapter {adapter_id!r} cannot be served: {rec.invalid_reason}")
        return rec

    def iter_chunks(self, adapter_id: str, chunk_bytes: int | None = None
                    ) -> Iterator[tuple[FileRecord, int, bytes, bool]]:
        """(file, offset, data, is_last) for every file of a valid adapter."""
        rec = self.require_valid(adapter_id)
        size = chunk_bytes or self.chunk_bytes
        for f in rec.files:
            offset = 0
            while True:
                data = self.backend.read(adapter_id, f.name, offset, size)
                last = offset + len(data) >= f.size_bytes or not data
                yield f, offset, data, last
                offset += len(data)
                if last:
                    break

    def _build(self, adapter_id: str, versions: tuple) -> AdapterRecord:
        rec = AdapterRecord(adapter_id=adapter_id)
        files: list[FileRecord] = []
        for name, ver in zip(ADAPTER_FILES, versions):
            if ver is None:
                rec.invalid_reason = f"missing {name}"
                return rec
            files.append(FileRecord(name, ver[0], self._sha256(adapter_id, name, ver[0])))
        rec.files = files
        rec.sha256 = adapter_digest({f.name: f.sha256 for f in files})
        try:
            config = json.loads(self.backend.read(adapter_id, CONFIG_FILE, 0, versions[0][0]))
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            rec.invalid_reason = f"{CONFIG_FILE} is not valid JSON: {e}"
            return rec
        rec.rank = _max_rank(config)
        rec.lora_alpha = float(config.get("lora_alpha") or 0)
        rec.use_rslora = bool(config.get("use_rslora", False))
        tm = config.get("target_modules") or []
        rec.target_modules = [tm] if isinstance(tm, str) else [str(t) for t in tm]
        try:
            shapes = self._shapes(adapter_id)
        except SafetensorsFormatError as e:
            rec.invalid_reason = str(e)
            return rec
        rec.size_bytes = versions[1][0]
        problems = self._validate(config, shapes)
        rec.valid = not problems
        rec.invalid_reason = "; ".join(problems[:5])
        return rec

    def _shapes(self, adapter_id: str) -> dict[str, tuple[int, ...]]:
        path = self.backend.local_path(adapter_id, WEIGHTS_FILE)
        if path is not None:
            return read_tensor_shapes(path)
        raise SafetensorsFormatError("only local backends are supported for validation")

    def _sha256(self, adapter_id: str, name: str, size: int) -> str:
        h = hashlib.sha256()
        offset = 0
        while offset < size:
            data = self.backend.read(adapter_id, name, offset, self.chunk_bytes)
            if not data:
                break
            h.update(data)
            offset += len(data)
        return h.hexdigest()


def _max_rank(config: dict) -> int:
    ranks = [int(config.get("r") or 0)]
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, dict):
        ranks += [int(v) for v in pattern.values() if isinstance(v, (int, float))]
    return max(ranks)
