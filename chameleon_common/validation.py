"""One validator for every identifier and number that crosses a service boundary.

Adapter ids name folders in the store and (through a digest, never directly)
files in the worker's staging area, and request ids travel through every
service, so both are held to a short, path-safe charset: a letter or digit
first, then letters, digits, `.`, `_`, `-` (request ids also allow `:`), at
most 128 characters, matched with `fullmatch` (a `$` anchor would let a
trailing newline through). An adapter id may name a registry version as
`NAME@N` (N a positive integer). A charset without `/` or `\\` and a first
character that is not `.` leave no room for path traversal (`..`, `./x`).
"""
from __future__ import annotations

import math
import re

MAX_ID_CHARS = 128
_ADAPTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}(@[1-9][0-9]{0,8})?" % (MAX_ID_CHARS - 1))
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,%d}" % (MAX_ID_CHARS - 1))


class InvalidId(ValueError):
    """An id that does not follow the rules; the message says what they are."""


def is_adapter_id(value: object) -> bool:
    return isinstance(value, str) and _ADAPTER_ID.fullmatch(value) is not None


def check_adapter_id(value: object) -> str:
    """Returns the id, or raises InvalidId (a ValueError)."""
    if not is_adapter_id(value):
        raise InvalidId(
            f"adapter id {_show(value)} is not valid: use NAME or NAME@VERSION, NAME being "
            f"1-{MAX_ID_CHARS} letters, digits, '.', '_' or '-' starting with a letter or digit, "
            "VERSION a positive integer")
    return value  # type: ignore[return-value]


def check_request_id(value: object) -> str:
    if not isinstance(value, str) or _REQUEST_ID.fullmatch(value) is None:
        raise InvalidId(
            f"request id {_show(value)} is not valid: use 1-{MAX_ID_CHARS} letters, digits, '.', "
            "'_', ':' or '-', starting with a letter or digit")
    return value


def check_finite(name: str, value: float) -> float:
    """Rejects NaN and ±Inf (a NaN slips through every `<`/`>` range check)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


# below this a temperature divides logits into infinities; sampling that cold is greedy anyway
MIN_TEMPERATURE = 1e-3


def check_sampling(*, max_tokens: int, temperature: float, top_p: float) -> None:
    """The rules for sampling parameters, shared by the scheduler and the worker."""
    check_finite("temperature", temperature)
    check_finite("top_p", top_p)
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
