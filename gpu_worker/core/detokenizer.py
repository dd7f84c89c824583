"""Incremental detokenization with stop strings.

Each step decodes only a short window of the output ids, not the whole output:
the ids from `prefix` on, against the ids from `prefix` to `read` (the part
already committed); the difference is the new text. The window moves up once its
text is complete (it does not end in U+FFFD, half a multi-byte character), so a
character split over several byte-level tokens is decoded from all of them
together, and decoders that treat a sequence's first token specially see the
same first token in both decodes. Text that could still be the start of a stop
string, or an incomplete UTF-8 sequence, is held back until it is certain.
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
        self._prefix = self._read = 0   # the decode window: ids[_prefix:], committed up to _read
        self._committed = ""            # text of ids[:_read]
        self.text = ""

    def _decode(self, output_ids: list[int]) -> str:
        """The text of all of output_ids, decoding only the window."""
        dec = self._decoder.decode
        head = dec(output_ids[self._prefix:self._read], skip_special_tokens=True)
        full = dec(output_ids[self._prefix:], skip_special_tokens=True)
        if len(full) > len(head) and not full.endswith("\ufffd"):
            self._committed += full[len(head):]
            self._prefix, self._read = self._read, len(output_ids)
            return self._committed
        return self._committed + full[len(head):]

    def update(self, output_ids: list[int], check: bool = True) -> tuple[str, bool]:
        """Returns (new text to release, stop string hit). With `check` off (the request
        has not reached its min_tokens yet) stop strings are not looked for and all the
        text is released; a stop string can then only match in text that comes later."""
        text = self._decode(output_ids)
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
