"""Incremental detokenization and stop strings for streaming.

Decoding token by token is not stable: a multi-byte character can be split
across tokens (the prefix decodes to U+FFFD), and a stop string can arrive in
pieces. So the tracker re-decodes all generated tokens after each step and
emits only text that cannot change any more: it holds back trailing U+FFFD and
any suffix that could still grow into a stop string. The final text equals
``tokenizer.decode(generated)`` cut before the first stop string, as the
OpenAI API does.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def normalize_stop(stop: str | list[str] | None, tokenizer) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    if stops and tokenizer is None:
        raise ValueError("stop strings are matched on text: pass tokenizer= to SpeculativeGenerator")
    return stops


class TextTracker:
    """The generated text so far, what of it was emitted, and stop-string matches."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.ids: list[int] = []
        self.emitted_text = ""  # the text already handed out
        self.text = ""  # final text once finished

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, new_ids: list[int]) -> tuple[list[int], str, bool]:
        """Add one step's tokens. Returns (the tokens to keep, the new stable text,
        whether a stop string ended the generation). On a stop, the kept tokens end
        with the one that completed the stop string."""
        before = len(self.ids)
        self.ids.extend(new_ids)
        text = self._decode(self.ids)
        cut = self._find_stop(text)
        if cut is not None:
            keep = self._tokens_up_to_stop(before)
            self.ids = self.ids[:keep]
            return new_ids[: keep - before], self._finish(text[:cut]), True
        stable = text.rstrip("\ufffd")
        stable = stable[: len(stable) - self._partial_stop(stable)]
        if not stable.startswith(self.emitted_text[: len(stable)]):
            log.debug("decoding changed already emitted text; the stream may differ from the final text")
        delta = stable[len(self.emitted_text):]
        self.emitted_text += delta
        return new_ids, delta, False

    def finish(self) -> str:
        """The rest of the text at the end of generation (held-back characters included)."""
        return self._finish(self._decode(self.ids))

    def _finish(self, text: str) -> str:
        self.text = text
        delta = text[len(self.emitted_text):]
        self.emitted_text += delta
        return delta

    def _find_stop(self, text: str) -> int | None:
        # Emitted text never contains a stop string nor a suffix that could start one,
        # so a match can only begin at or after the emitted characters.
        hits = [i for i in (text.find(s, len(self.emitted_text)) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _tokens_up_to_stop(self, before: int) -> int:
        """Fewest tokens whose text contains a stop string (at most one step to scan)."""
        for keep in range(before + 1, len(self.ids)):
            if self._find_stop(self._decode(self.ids[:keep])) is not None:
                return keep
        return len(self.ids)

    def _partial_stop(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
