"""Capture of served traffic (``specdistill serve --capture DIR``): each finished request
becomes one JSON line, which ``specdistill train --data DIR`` reads back as (prompt, answer)
records. The files hold users' prompts: keep them as you keep logs.

A record (one per choice of a response):

    request_id, index, time, route     the response's id, the choice, unix seconds, the route
    target, model, draft, draft_version the target that answered (training checks it), the served
                                        name, the draft that drafted and its version
    messages | prompt                   the request as sent: chat messages, or completion text/ids
    prompt_ids, answer_ids              the token ids the target read and wrote (answer_ids: its output,
                                        EOS included when it ended there, cut after a stop string)
    sampling                            temperature, top_p, top_k, seed, max_tokens, stop
    finish_reason, status               the OpenAI finish reason; status finished, cancelled, failed
                                        or timeout (only finished records train)
    drafted, accepted                   draft tokens proposed and accepted for it
    states                              with ``--capture-features``: the key of the record's target
                                        states in ``DIR/states`` (``specdistill.models.target_states``)

Writing happens in a thread of its own, fed by a queue, so a decode step never waits for a
disk; files rotate at ``max_bytes`` (capture-<start>-<n>.jsonl). A finished request's target
states (its head's features and the final hidden state at every position the target read, about
4.6 KB a token for SmolLM2-135M with a 3-layer head, in bf16) are written before its record, so a
record that names them finds them. The states waiting for the writer are bounded
(``max_pending_states``, 1 GiB): past it a record is queued without its states (counted in
``states_skipped``), so a slow disk costs ``specdistill adapt`` a recomputation, never the server
its memory.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from pathlib import Path

import torch

from specdistill.models.target_states import record_key, save_states

log = logging.getLogger(__name__)
_END = object()


class TrafficCapture:
    """Appends records to rotated JSON-lines files in ``directory`` from a background thread.
    ``sample`` is the share of requests kept (decided per request by ``wants``)."""

    def __init__(self, directory: str | Path, sample: float = 1.0, max_bytes: int = 64 << 20, seed: int | None = None,
                 max_pending_states: int = 1 << 30):
        if not 0 < sample <= 1:
            raise ValueError(f"capture sample must be in (0, 1], got {sample}")
        if max_pending_states < 0:
            raise ValueError(f"capture max_pending_states must be >= 0 bytes, got {max_pending_states}")
        if max_bytes < 1:
            raise ValueError(f"capture max_bytes must be >= 1, got {max_bytes}")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample, self.max_bytes, self.max_pending_states = sample, max_bytes, max_pending_states
        self.states_skipped = 0  # records queued without their states, past max_pending_states
        self._pending_states, self._pending_lock, self._behind = 0, threading.Lock(), False
        self._random = random.Random(seed)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._prefix = f"capture-{time.strftime('%Y%m%d-%H%M%S')}"
        self._file, self._index, self._size = None, 0, 0
        self._thread = threading.Thread(target=self._write_all, name="specdistill-capture", daemon=True)
        self._thread.start()

    @property
    def pending_states(self) -> int:
        """Bytes of target states queued and not yet written."""
        return self._pending_states

    def wants(self) -> bool:
        return self.sample >= 1 or self._random.random() < self.sample

    def add(self, record: dict, states=None) -> None:
        """Queue a record; never blocks. ``states``: (the request's ``target_states`` pieces, the head's
        layer ids, the target's hidden size), written to ``DIR/states`` when the request finished; dropped
        when the states already waiting would exceed ``max_pending_states`` bytes."""
        if record.get("status") != "finished":
            states = None  # only finished records train: the writer would drop them
        size = sum(p.numel() * p.element_size() for p in states[0]) if states else 0
        with self._pending_lock:
            if size and self._pending_states + size > self.max_pending_states:
                if not self._behind:  # once per backlog, not per record
                    log.warning("capture: the writer is %d MB of target states behind; records are queued "
                                "without them until it catches up (adapt computes them)", self._pending_states >> 20)
                self._behind = True
                self.states_skipped += 1
                states, size = None, 0
            self._pending_states += size
        self._queue.put((record, states, size))

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(_END)
        self._thread.join(timeout=30)

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not _END:
            record, states, size = item
            try:
                if states:  # ``add`` keeps them for finished records only
                    record["states"] = self._write_states(record, *states)
            except Exception:  # the record is still worth keeping: adapt computes its states
                log.exception("capture: a request's target states could not be written")
            with self._pending_lock:
                self._pending_states -= size
                self._behind = self._behind and self._pending_states > self.max_pending_states // 2
            del item, states  # nothing of this record stays alive while the writer waits for the next
            try:
                self._write(json.dumps(record, ensure_ascii=False) + "\n")
            except Exception:  # a full disk must not stop serving; the record is lost, and said so
                log.exception("capture: a record could not be written")
        if self._file is not None:
            self._file.close()

    def _write_states(self, record: dict, pieces: list[torch.Tensor], layer_ids: list[int], hidden: int) -> str:
        # The target read every token but the last; a stop string may have cut the answer shorter.
        joined = torch.cat(pieces)[: len(record["prompt_ids"]) + len(record["answer_ids"])]
        key = record_key(record["prompt_ids"], record["answer_ids"])
        save_states(self.directory / "states", key, joined[:, :-hidden], joined[:, -hidden:], layer_ids,
                    record["target"])
        return key

    def _write(self, line: str) -> None:
        size = len(line.encode())
        if self._file is None or (self._size and self._size + size > self.max_bytes):
            if self._file is not None:
                self._file.close()
            self._index += 1
            self._file = open(self.directory / f"{self._prefix}-{self._index:04d}.jsonl", "a", encoding="utf-8")
            self._size = 0
        self._file.write(line)
        self._file.flush()
        self._size += size


STATUS = {"eos": "finished", "stop": "finished", "length": "finished", "error": "failed"}


def status_of(finish_reason: str | None) -> str:
    """A request's capture status from its engine finish reason (None: ended before it finished)."""
    return STATUS.get(finish_reason, "cancelled")


def choice_records(base: dict, body, choices, status: str | None = None) -> list[dict]:
    """The records of a response's choices. ``base`` holds what they share (ids, route, names);
    ``status`` overrides each choice's own (a timeout, say)."""
    prompts = body.prompts() if hasattr(body, "prompts") else None
    request_part = ({"messages": [m.as_template_input() for m in body.messages]} if prompts is None else {})
    records = []
    for choice in choices:
        request = choice.request
        sampling = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
                    "seed": None if body.seed is None else body.seed + choice.index,  # as the choice was seeded
                    "max_tokens": request.max_new_tokens, "stop": body.stop}
        prompt = {} if prompts is None else {"prompt": prompts[choice.index // body.n]}
        records.append(base | request_part | prompt | {
            "index": choice.index, "prompt_ids": request.prompt, "answer_ids": request.tokens[len(request.prompt):],
            "sampling": sampling, "finish_reason": choice.finish_reason,
            "status": status or status_of(request.finish_reason),
            "drafted": request.stats.proposed, "accepted": request.stats.accepted})
    return records
