"""Lossless speculative decoding with any pair of Hugging Face causal LMs.

One step reads top to bottom:
    draft   the draft proposes k tokens, one forward each, with its KV cache
    verify  the target scores [last token, d_1..d_k] in ONE forward with its KV cache
    accept  greedy: longest prefix equal to the target's argmax;
            sampling: accept d_i with min(1, p/q), else draw from norm(max(0, p - q)),
            and a bonus token from the target when all k are accepted
    roll    both caches are rolled back to the accepted prefix (never recomputed)

Every step runs a batch of rows (one prompt is a batch of one); each row
accepts its own number of drafts, and the runners (``runners.py``) keep each
row's cache length. Invariant between steps, per row: ``tokens`` holds the
sequence; the target cache holds every token but the last; the draft cache
holds a prefix of that (it may lag by a token or two, which it feeds at the
start of the next proposal).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import torch
from specdistill.serve.policy import DraftLengthPolicy, make_policy
from specdistill.serve.runners import NoDraft, make_runner
from specdistill.serve.sampling import SamplingParams, accept_greedy, accept_sampled, warp_probs
from specdistill.serve.stats import SpecStats
from specdistill.serve.text import TextTracker, normalize_stop

from specdistill.models import check_compatible


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [1, prompt + new] token ids
    stats: SpecStats
    text: str | None = None  # the new text, cut before a stop string (needs a tokenizer)
    finish_reason: str | None = None  # "eos", "stop" (a stop string) or "length"


@dataclass
class StreamChunk:
    """What one step added. ``token_ids`` may be empty on the last chunk; ``text`` is
    the newly stable text ("" without a tokenizer, or while text is held back)."""

    token_ids: list[int]
    text: str
    finish_reason: str | None  # set on the last chunk only
    stats: SpecStats  # running counts of this generation (the same object every chunk)


def _timed(runner, state, input_ids, keep):
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    logits = runner.forward(state, input_ids, keep)
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    return logits, time.perf_counter() - start


@dataclass
class _Row:
    """One prompt being decoded: its tokens, counts and text."""

    index: int  # position in the caller's batch
    tokens: list[int]
    stats: SpecStats
    text: TextTracker | None
    new: int = 0
    finish_reason: str | None = None


class SpeculativeGenerator:
    """Speculative decoding with a draft model; output is the target's own.

    Greedy output equals ``target.generate(do_sample=False)`` token for token;
    sampled output follows the target's (temperature/top-k/top-p warped)
    distribution exactly.

    ``num_draft_tokens`` is a fixed k, ``"auto"`` (cost-aware: picks k from the
    measured acceptance and step costs), ``"heuristic"`` (Hugging Face's +2/-1
    schedule) or any object with ``next_k()`` and ``update(...)`` (see
    ``specdistill.serve.policy``). ``generate`` returns one prompt's output;
    ``stream`` and ``astream`` yield it step by step; ``generate_batch`` decodes
    prompts of any lengths together, each row accepting its own number of drafts.
    All of them run the same decode loop.

    ``fast_path``: "auto" runs Llama-family models (Llama, SmolLM, Mistral, Qwen2)
    on the lean runner with a preallocated KV cache and everything else on the
    Hugging Face model; True insists on the lean runner, False never uses it.
    ``compile=True`` wraps the lean runner in ``torch.compile``. ``draft=None`` decodes
    with the target alone on the same engine (a baseline, or to generate data fast).
    ``draft_vocab`` (token ids, e.g. the most frequent ones from ``draft_vocab.json``
    beside a trained draft) lets the draft propose only those: its LM head shrinks to
    them, which makes draft steps far cheaper for large vocabularies; still lossless."""

    def __init__(self, target, draft=None, num_draft_tokens: int | str | DraftLengthPolicy = 5, tokenizer=None,
                 draft_tokenizer=None, draft_confidence: float = 0.0, fast_path: bool | str = "auto",
                 compile: bool = False, draft_vocab=None):
        if draft is not None:
            check_compatible(target, draft, tokenizer, draft_tokenizer)
        else:
            num_draft_tokens = 0  # the target alone, on the same engine (a baseline, or to generate data)
        if not 0 <= draft_confidence < 1:
            raise ValueError(f"draft_confidence must be in [0, 1) (0 = off), got {draft_confidence}")
        # Stop drafting early once the draft's probability of its own token falls below this
        # (HF's assistant_confidence_threshold). It looks only at the draft, so it stays lossless.
        self.draft_confidence = draft_confidence
        if isinstance(num_draft_tokens, int) and not isinstance(num_draft_tokens, bool) and num_draft_tokens < 0:
            raise ValueError(f"num_draft_tokens must be >= 0, got {num_draft_tokens}")
        self.draft_length = make_policy(num_draft_tokens)
        self.target = target.eval()
        self.draft = None if draft is None else draft.eval()
        self.target_runner = make_runner(self.target, fast_path, compile)
        self.draft_runner = NoDraft() if draft is None else make_runner(self.draft, fast_path, compile, draft_vocab)
        self.num_draft_tokens = num_draft_tokens
        self.tokenizer = tokenizer
        self.max_positions = getattr(target.config, "max_position_embeddings", None)

    def generate(
        self,
        input_ids: torch.Tensor,  # [1, L] or [L]
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | list[int] | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
    ) -> GenerationOutput:
        """The whole generation. ``stop`` strings end it when they appear in the text
        (needs a tokenizer); ``text`` is then cut before the stop string while
        ``sequences`` keeps the tokens up to the one that completed it."""
        return self.generate_batch([input_ids], max_new_tokens, temperature, top_p, top_k, eos_token_id, seed,
                                   stop)[0]

    def generate_batch(
        self,
        prompts: list[torch.Tensor],  # each [1, L] or [L], of any lengths
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | list[int] | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
    ) -> list[GenerationOutput]:
        """Several prompts decoded together. Each row accepts its own number of drafts
        per step and leaves the batch when it finishes; greedy rows equal their
        single-prompt output. ``seed`` seeds the whole batch."""
        start = time.perf_counter()
        steps = self._stream_rows(prompts, max_new_tokens, temperature, top_p, top_k, eos_token_id, seed, stop)
        new = [[] for _ in prompts]
        texts = [[] for _ in prompts]
        finished = [None] * len(prompts)
        for updates in steps:
            for row, chunk in updates:
                new[row] += chunk.token_ids
                texts[row].append(chunk.text)
                finished[row] = chunk
        outputs = []
        for ids, tokens, text, last in zip(prompts, new, texts, finished):
            last.stats.total_seconds = time.perf_counter() - start
            ids = ids.reshape(1, -1)
            sequences = torch.cat([ids.to(self.target.device, torch.long),
                                   torch.tensor([tokens], device=self.target.device, dtype=torch.long)], dim=1)
            outputs.append(GenerationOutput(sequences, last.stats, "".join(text) if self.tokenizer else None,
                                            last.finish_reason))
        return outputs

    def stream(
        self,
        input_ids: torch.Tensor,  # [1, L] or [L]
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | list[int] | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
    ) -> Iterator[StreamChunk]:
        """An iterator of ``StreamChunk``, one per decode step, for servers. Arguments
        are checked now, so a bad request fails before the first chunk."""
        steps = self._stream_rows([input_ids], max_new_tokens, temperature, top_p, top_k, eos_token_id, seed, stop)
        return (chunk for updates in steps for _, chunk in updates)

    async def astream(self, input_ids: torch.Tensor, **kwargs) -> AsyncIterator[StreamChunk]:
        """``stream`` for asyncio servers: each step runs in a worker thread
        (``asyncio.to_thread``) so the event loop keeps serving other requests."""
        steps = self.stream(input_ids, **kwargs)
        end = object()
        try:
            while (chunk := await asyncio.to_thread(next, steps, end)) is not end:
                yield chunk
        finally:
            # A cancelled consumer can leave the step running in its thread; it then
            # refuses to close, and is dropped once that step ends.
            with contextlib.suppress(ValueError):
                steps.close()

    def _stream_rows(self, prompts, max_new_tokens, temperature, top_p, top_k, eos_token_id, seed, stop):
        """Checks every argument now (a bad request fails before any work), then returns
        the iterator of steps: lists of (row, StreamChunk) for the rows the step advanced."""
        params = SamplingParams(temperature, top_p, top_k)
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError("prompts must be a non-empty list of token id tensors")
        prompts = [self._check_prompt(ids, max_new_tokens) for ids in prompts]
        stops = normalize_stop(stop, self.tokenizer)
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        return self._steps(prompts, max_new_tokens, params, self._eos_ids(eos_token_id), seed, stops)

    @torch.inference_mode()
    def _steps(self, prompts, max_new_tokens, params, eos, seed, stops) -> Iterator[list]:
        start = time.perf_counter()
        rows = [_Row(i, ids[0].tolist(), SpecStats(), TextTracker(self.tokenizer, stops) if self.tokenizer else None)
                for i, ids in enumerate(prompts)]
        for updates in self._decode(rows, max_new_tokens, params, eos, seed):
            chunks = []
            for row, produced, reason in updates:
                delta = ""
                if row.text is not None:
                    produced, delta, stopped = row.text.push(produced)
                    if stopped:
                        reason = "stop"
                    elif reason:
                        delta += row.text.finish()  # flush what was held back
                row.tokens += produced
                row.new += len(produced)
                row.stats.new_tokens = row.new
                row.stats.total_seconds = time.perf_counter() - start
                row.finish_reason = reason
                chunks.append((row.index, StreamChunk(produced, delta, reason, row.stats)))
            yield chunks

    def _decode(self, rows: list[_Row], max_new_tokens, params, eos, seed):
        """The decode loop over a batch of rows: yields, per step, (row, tokens the step
        produced, finish reason or None) for every row still running. A row's tokens are
        appended by the caller, which may also finish it (a stop string)."""
        device = self.target.device
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        # Rows past their budget still draft along with the batch: room for a few more.
        capacity = max(len(row.tokens) for row in rows) + max_new_tokens + 8
        target_state = self.target_runner.start(len(rows), capacity)
        draft_state = self.draft_runner.start(len(rows), capacity)
        self._prefill(rows, target_state, draft_state)
        active = list(rows)
        while active:
            # One target call always yields one token of its own, so draft at most budget - 1.
            k = self.draft_length.next_k()
            limits = [max(0, min(k, max_new_tokens - row.new - 1)) for row in active]
            drafts, draft_probs, limits, draft_seconds = self._propose(active, draft_state, limits, params,
                                                                       generator)
            target_logits, target_seconds = self._verify(active, drafts, target_state)
            target_probs = None if params.greedy else warp_probs(target_logits, params)
            updates, lengths, outcomes = [], [], []
            for i, row in enumerate(active):
                n, next_token = self._accept(i, limits[i], drafts, draft_probs, target_logits, target_probs,
                                             params, generator)
                row.stats.record_step(limits[i], n)
                outcomes.append((limits[i], n))
                lengths.append(len(row.tokens) + n)
                done, produced = _cut_at_eos(drafts[i, :n].tolist() + [next_token], eos)
                updates.append((row, produced, "eos" if done else (
                    "length" if row.new + len(produced) >= max_new_tokens else None)))
            self._update_policy(outcomes, drafts.shape[1], draft_seconds, target_seconds)
            self.target_runner.rollback(target_state, lengths)
            self.draft_runner.rollback(draft_state, lengths)
            yield updates
            still = [i for i, row in enumerate(active) if row.finish_reason is None]
            if len(still) < len(active):
                if still:
                    self.target_runner.select(target_state, still)
                    self.draft_runner.select(draft_state, still)
                active = [active[i] for i in still]

    def _update_policy(self, outcomes, k_run, draft_seconds, target_seconds) -> None:
        """A policy that knows batches learns from the step once; others hear of each row."""
        if getattr(self.draft_length, "update_rows", None):
            self.draft_length.update_rows(outcomes, k_run, draft_seconds, target_seconds)
            return
        for k, n in outcomes:
            self.draft_length.update(k, n, draft_seconds, target_seconds)

    def _accept(self, i, k, drafts, draft_probs, target_logits, target_probs, params, generator):
        if params.greedy:
            return accept_greedy(drafts[i, :k], target_logits[i, : k + 1])
        row_probs = None if draft_probs is None else draft_probs[i, :k]
        return accept_sampled(drafts[i, :k], row_probs, target_probs[i, : k + 1], generator)

    def _check_prompt(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
            raise ValueError("input_ids must be an integer tensor of token ids (use the tokenizer first)")
        ids = input_ids if input_ids.dim() == 2 else input_ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"a prompt has shape [1, L] or [L], got {tuple(input_ids.shape)}; "
                             "pass several prompts to generate_batch as a list")
        if ids.shape[1] == 0:
            raise ValueError("the prompt is empty; give at least one token")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        # Drafts never run past the token budget, so prompt + budget is the furthest position.
        if self.max_positions and ids.shape[1] + max_new_tokens > self.max_positions:
            raise ValueError(
                f"prompt of {ids.shape[1]} tokens + max_new_tokens {max_new_tokens} exceeds the target's "
                f"context of {self.max_positions} positions; shorten the prompt or max_new_tokens"
            )
        return ids.to(self.target.device, torch.long)

    def _eos_ids(self, eos_token_id) -> set[int]:
        if eos_token_id is None:
            eos_token_id = self.target.generation_config.eos_token_id
        if eos_token_id is None:
            return set()
        return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)

    def _prefill(self, rows, target_state, draft_state) -> None:
        """Both caches take each prompt minus its last token (the first step feeds it).
        Prompts are right-padded; the padding is rolled back at once."""
        width = max(len(row.tokens) for row in rows) - 1
        if width < 1:
            return
        ids = _right_padded([row.tokens[:-1] for row in rows], width, self.target.device)
        lengths = [len(row.tokens) - 1 for row in rows]
        seconds = 0.0
        for runner, state in ((self.target_runner, target_state), (self.draft_runner, draft_state)):
            _, elapsed = _timed(runner, state, ids, [width - 1] * len(rows))
            runner.rollback(state, lengths)
            seconds += elapsed
        for row in rows:
            row.stats.prefill_seconds += seconds

    def _propose(self, rows, draft_state, limits, params, generator):
        """Drafts [B, K] and their warped distributions [B, K, V] (None when greedy), and
        each row's number of usable drafts (fewer than asked where the draft lost confidence)."""
        device = self.target.device
        drafts, probs = [], []
        steps = max(limits)
        if steps == 0:
            return torch.empty(len(rows), 0, dtype=torch.long, device=device), None, limits, 0.0
        # Each row feeds the tokens its draft cache lacks (one or two, more after k = 0 steps),
        # right-padded to a common width; the padding is rolled back after the call.
        pending = [row.tokens[held:] for row, held in zip(rows, draft_state.lengths)]
        inputs = _right_padded(pending, max(map(len, pending)), device)
        keep = [len(p) - 1 for p in pending]
        seconds = 0.0
        for step in range(steps):
            logits, elapsed = _timed(self.draft_runner, draft_state, inputs, keep)
            seconds += elapsed
            if step == 0:
                self.draft_runner.rollback(draft_state, [len(row.tokens) for row in rows])
            if params.greedy:
                tokens = logits.argmax(-1)
                confidence = logits.float().softmax(-1).gather(1, tokens[:, None])[:, 0] if self.draft_confidence \
                    else None
            else:
                q = warp_probs(logits, params)
                tokens = torch.multinomial(q, 1, generator=generator)[:, 0]
                probs.append(q)
                confidence = q.gather(1, tokens[:, None])[:, 0]
            drafts.append(tokens)
            if confidence is not None and self.draft_confidence:
                low = (confidence < self.draft_confidence).tolist()
                limits = [min(limit, step + 1) if stop else limit for limit, stop in zip(limits, low)]
            if max(limits) <= step + 1:
                break
            inputs, keep = tokens[:, None], [0] * len(rows)
        for row in rows:
            row.stats.draft_seconds += seconds
            row.stats.draft_calls += len(drafts)
        draft_tokens = torch.stack(drafts, 1) if drafts else torch.empty(len(rows), 0, dtype=torch.long,
                                                                          device=device)
        return draft_tokens, (torch.stack(probs, 1) if probs else None), limits, seconds

    def _verify(self, rows, drafts: torch.Tensor, target_state) -> torch.Tensor:
        """Target logits [B, K + 1, V] after each row's last token and after each draft token."""
        last = torch.tensor([[row.tokens[-1]] for row in rows], device=drafts.device)
        logits, seconds = _timed(self.target_runner, target_state, torch.cat([last, drafts], dim=1), None)
        for row in rows:
            row.stats.target_seconds += seconds
            row.stats.target_calls += 1
        return logits, seconds


def _right_padded(sequences: list[list[int]], width: int, device) -> torch.Tensor:
    # The pad id is never attended to: it lands past each row's length and is rolled back.
    return torch.tensor([seq + [0] * (width - len(seq)) for seq in sequences], device=device)


def _cut_at_eos(produced: list[int], eos: set[int]) -> tuple[bool, list[int]]:
    for i, token in enumerate(produced):
        if token in eos:
            return True, produced[: i + 1]
    return False, produced
