"""Adapter references (`name`, `name@version`), the object layout, and the content digest.

Layout in any backend:
- `<name>/adapter_config.json`, `<name>/adapter_model.safetensors`: a plain adapter
  folder (what `chameleon prepare` writes, or one copied in by hand). It is served
  as `name`, unversioned; its digest follows its content.
- `<name>/versions/<n>/{adapter_config.json, adapter_model.safetensors, manifest.json}`:
  version n (1, 2, ...) pushed through the store. The manifest is written last and
  holds each file's size and sha256; a version never changes after that, so its
  digest is fixed. `name` alone means the highest version (the plain folder only
  when there is no version).
"""
from __future__ import annotations

from dataclasses import dataclass

from chameleon_common.validation import InvalidId, check_adapter_id

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
MANIFEST_FILE = "manifest.json"
VERSIONS_DIR = "versions"


class InvalidAdapterId(InvalidId):
    pass


@dataclass(frozen=True)
class RegistryRef:
    name: str
    version: int | None = None  # None: the latest

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_ref(text: str) -> RegistryRef:
    """`name` or `name@version`, by the one id validator every service uses."""
    try:
        check_adapter_id(text)
    except InvalidId as e:
        raise InvalidAdapterId(str(e)) from None
    name, sep, version = text.partition("@")
    return RegistryRef(name, int(version) if sep else None)


def plain_key(name: str, file: str) -> str:
    return f"{name}/{file}"


def version_prefix(name: str) -> str:
    return f"{name}/{VERSIONS_DIR}/"


def version_key(name: str, version: int, file: str) -> str:
    return f"{name}/{VERSIONS_DIR}/{version}/{file}"
