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

import re
from dataclasses import dataclass

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
MANIFEST_FILE = "manifest.json"
VERSIONS_DIR = "versions"
MAX_NAME_CHARS = 128
MAX_VERSION = 10 ** 9
# the same charset as every id crossing a service boundary: no '/', '\\', and no leading '.'
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_NAME_CHARS - 1))
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


class InvalidAdapterId(ValueError):
    pass


@dataclass(frozen=True)
class RegistryRef:
    name: str
    version: int | None = None  # None: the latest

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_ref(text: str) -> RegistryRef:
    name, sep, version = (text or "").partition("@")
    if _NAME.fullmatch(name) is None or (sep and _VERSION.fullmatch(version) is None):
        shown = repr(text) if len(repr(text)) <= 80 else repr(text)[:77] + "..."
        raise InvalidAdapterId(
            f"adapter id {shown} is not valid: use NAME or NAME@VERSION, NAME being 1-{MAX_NAME_CHARS} "
            "letters, digits, '.', '_' or '-' starting with a letter or digit, VERSION a positive integer")
    return RegistryRef(name, int(version) if sep else None)


def plain_key(name: str, file: str) -> str:
    return f"{name}/{file}"


def version_prefix(name: str) -> str:
    return f"{name}/{VERSIONS_DIR}/"


def version_key(name: str, version: int, file: str) -> str:
    return f"{name}/{VERSIONS_DIR}/{version}/{file}"
