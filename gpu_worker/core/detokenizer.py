"""Incremental detokenization with stop strings.

Text is re-decoded from the full output ids each step (outputs are short, and
this is the only way byte-level BPE yields correct UTF-8), then only the new
suffix is released. Text that could still be the start of a stop string, or an
incomplete UTF-8 sequence, is held back until it is certain.
"""
from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class StopChecker:
    def __init__(self, decoder: Decoder, stop: list[str]):
        self._decoder = decoder
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._sent = 0          # characters of text already released
        self._search_from = 0   # stop strings match from here on (text before min_tokens is out)
        self.text = ""

    def update(self, output_ids: list[int], check: bool = True) -> tuple[str, bool]:
        """Returns (new text to release, stop string hit). With `check` off (the request
        has not reached its min_tokens yet) stop strings are not looked for and all the
        text is released; a stop string can then only match in text that comes later."""
        text = self._decoder.decode(output_ids, skip_special_tokens=True)
        if not check:
            self.text = text
            safe = len(text) - 1 if text.endswith("\ufffd") else len(text)
            if safe <= self._sent:
                return "", False
            delta = text[self._sent:safe]
            self._sent = self._search_from = safe
            return delta, False
        for s in self._stop:
            # search only where a stop string could newly appear
            i = text.find(s, max(self._search_from, self._sent - len(s) + 1))
            if i != -1:
                self.text = text[:i]
                delta = self.text[self._sent:]
                self._sent = len(self.text)
                return delta, True
        self.text = text
        safe = len(text) - self._hold
        if text.endswith("\ufffd"):  # incomplete multi-byte character
            safe = min(safe, len(text) - 1)
        if safe <= self._sent:
            return "", False
        delta = text[self._sent:safe]
        self._sent = safe
        return delta, False

    def flush(self) -> str:
        """Everything still held back (the sequence ended without a stop string)."""
        delta = self.text[self._sent:]
        self._sent = len(self.text)
        return delta
