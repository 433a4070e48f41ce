"""Lossless speculative decoding with any pair of Hugging Face causal LMs.

One step reads top to bottom:
    draft   the draft proposes k tokens, one forward each, with its KV cache
    verify  the target scores [last token, d_1..d_k] in ONE forward with its KV cache
    accept  greedy: longest prefix equal to the target's argmax;
            sampling: accept d_i with min(1, p/q), else draw from norm(max(0, p - q)),
            and a bonus token from the target when all k are accepted
    crop    both caches are cut back to the accepted prefix (never recomputed)

Invariant between steps: ``tokens`` holds the sequence; the target cache holds
every token but the last; the draft cache holds a prefix of that (it may lag
by one token, which it feeds at the start of the next proposal).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import torch
from specdistill.serve.policy import DraftLengthPolicy, make_policy
from specdistill.serve.sampling import SamplingParams, accept_greedy, accept_sampled, sample, warp_probs
from specdistill.serve.stats import SpecStats
from specdistill.serve.text import TextTracker, normalize_stop
from transformers import DynamicCache

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


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions. A negative argument drops tokens from
    the end on every transformers version (5.x refuses a positive one)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _timed_forward(model, input_ids, cache, last_only: bool):
    features = _forward_features(model)
    kwargs = {features["cache_arg"]: cache}
    if last_only and features["logits_to_keep"]:
        kwargs["logits_to_keep"] = 1
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    logits = model(input_ids=input_ids, use_cache=True, **kwargs).logits
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    return logits[0], time.perf_counter() - start


def _forward_features(model) -> dict:
    """What the model's forward accepts, looked up once: transformers >= 5.24 names
    the cache argument ``cache`` (``past_key_values`` is deprecated there)."""
    features = getattr(model, "_specdistill_forward_features", None)
    if features is None:
        params = inspect.signature(model.forward).parameters
        features = {"cache_arg": "cache" if "cache" in params else "past_key_values",
                    "logits_to_keep": "logits_to_keep" in params}
        model._specdistill_forward_features = features
    return features


class SpeculativeGenerator:
    """Speculative decoding with a draft model; output is the target's own.

    Greedy output equals ``target.generate(do_sample=False)`` token for token;
    sampled output follows the target's (temperature/top-k/top-p warped)
    distribution exactly.

    ``num_draft_tokens`` is a fixed k, ``"auto"`` (cost-aware: picks k from the
    measured acceptance and step costs), ``"heuristic"`` (Hugging Face's +2/-1
    schedule) or any object with ``next_k()`` and ``update(...)`` (see
    ``specdistill.serve.policy``). ``generate`` returns the whole output;
    ``stream`` and ``astream`` yield it step by step. All three run the same
    decode loop. One prompt at a time; ``generate_batch`` loops over rows."""

    def __init__(self, target, draft, num_draft_tokens: int | str | DraftLengthPolicy = 5, tokenizer=None,
                 draft_tokenizer=None, draft_confidence: float = 0.0):
        check_compatible(target, draft, tokenizer, draft_tokenizer)
        if not 0 <= draft_confidence < 1:
            raise ValueError(f"draft_confidence must be in [0, 1) (0 = off), got {draft_confidence}")
        # Stop drafting early once the draft's probability of its own token falls below this
        # (HF's assistant_confidence_threshold). It looks only at the draft, so it stays lossless.
        self.draft_confidence = draft_confidence
        if isinstance(num_draft_tokens, int) and not isinstance(num_draft_tokens, bool) and num_draft_tokens < 0:
            raise ValueError(f"num_draft_tokens must be >= 0, got {num_draft_tokens}")
        self.draft_length = make_policy(num_draft_tokens)
        self.target = target.eval()
        self.draft = draft.eval()
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
        start = time.perf_counter()
        prompt = self._check_prompt(input_ids, max_new_tokens)
        chunks = list(self.stream(prompt, max_new_tokens, temperature, top_p, top_k, eos_token_id, seed, stop))
        stats = chunks[-1].stats
        stats.total_seconds = time.perf_counter() - start
        new = [token for chunk in chunks for token in chunk.token_ids]
        sequences = torch.tensor([prompt[0].tolist() + new], device=prompt.device)
        text = "".join(chunk.text for chunk in chunks) if self.tokenizer is not None else None
        return GenerationOutput(sequences, stats, text, chunks[-1].finish_reason)

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
        params = SamplingParams(temperature, top_p, top_k)
        ids = self._check_prompt(input_ids, max_new_tokens)
        stops = normalize_stop(stop, self.tokenizer)
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        return self._chunks(ids, max_new_tokens, params, self._eos_ids(eos_token_id), seed, stops)

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

    def generate_batch(self, prompts: list[torch.Tensor], **kwargs) -> list[GenerationOutput]:
        """Several prompts of any lengths, decoded ONE AFTER ANOTHER with their own caches:
        each row gets exactly its single-prompt output (and its own accepted lengths), but
        no batched speed. ``seed`` s gives row i the seed s + i."""
        seed = kwargs.pop("seed", None)
        return [self.generate(ids, seed=None if seed is None else seed + i, **kwargs)
                for i, ids in enumerate(prompts)]

    @torch.inference_mode()
    def _chunks(self, ids, max_new_tokens, params, eos, seed, stops) -> Iterator[StreamChunk]:
        stats = SpecStats()
        start = time.perf_counter()
        text = TextTracker(self.tokenizer, stops) if self.tokenizer is not None else None
        new, reason = 0, None
        for produced, reason in self._decode(ids, max_new_tokens, params, eos, seed, stats):
            delta = ""
            if text is not None:
                produced, delta, stopped = text.push(produced)
                if stopped:
                    reason = "stop"
                elif reason:
                    delta += text.finish()  # flush what was held back
            new += len(produced)
            stats.new_tokens = new
            stats.total_seconds = time.perf_counter() - start
            yield StreamChunk(produced, delta, reason, stats)
            if reason:
                return

    def _decode(self, ids, max_new_tokens, params, eos, seed, stats):
        """The decode loop: yields (tokens produced by the step, finish reason or None)."""
        generator = None if seed is None else torch.Generator(device=ids.device).manual_seed(seed)
        tokens = ids[0].tolist()
        target_cache, draft_cache = DynamicCache(), DynamicCache()
        self._prefill(ids, target_cache, draft_cache, stats)
        new = 0
        while new < max_new_tokens:
            # One target call always yields one token of its own, so draft at most budget - 1.
            k = max(0, min(self.draft_length.next_k(), max_new_tokens - new - 1))
            draft_seconds, target_seconds = stats.draft_seconds, stats.target_seconds
            drafts, draft_probs = self._propose(tokens, draft_cache, k, params, generator, stats)
            k = drafts.shape[0]  # fewer than asked when the draft lost confidence
            target_logits = self._verify(tokens[-1], drafts, target_cache, stats)
            if params.greedy:
                n, next_token = accept_greedy(drafts, target_logits)
            else:
                n, next_token = accept_sampled(drafts, draft_probs, warp_probs(target_logits, params), generator)
            stats.record_step(k, n)
            self.draft_length.update(k, n, stats.draft_seconds - draft_seconds, stats.target_seconds - target_seconds)
            produced = drafts[:n].tolist() + [next_token]
            crop_cache(target_cache, len(tokens) + n)
            crop_cache(draft_cache, len(tokens) + n)
            done, produced = _cut_at_eos(produced, eos)
            tokens += produced
            new += len(produced)
            yield produced, "eos" if done else ("length" if new >= max_new_tokens else None)
            if done:
                return

    def _check_prompt(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
            raise ValueError("input_ids must be an integer tensor of token ids (use the tokenizer first)")
        ids = input_ids if input_ids.dim() == 2 else input_ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"generate takes one prompt of shape [1, L] or [L], got {tuple(input_ids.shape)}; "
                             "use generate_batch for several")
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

    def _prefill(self, ids, target_cache, draft_cache, stats: SpecStats) -> None:
        """Both caches take the prompt minus its last token (the first step feeds it)."""
        if ids.shape[1] < 2:
            return
        _, seconds = _timed_forward(self.target, ids[:, :-1], target_cache, last_only=True)
        stats.prefill_seconds += seconds
        _, seconds = _timed_forward(self.draft, ids[:, :-1], draft_cache, last_only=True)
        stats.prefill_seconds += seconds

    def _propose(self, tokens, draft_cache, k, params, generator, stats):
        """k draft tokens [k] and the warped draft distributions they came from [k, V]."""
        device = self.target.device
        drafts, probs = [], []
        pending = tokens[draft_cache.get_seq_length():]  # the uncached tail, at least one token
        for _ in range(k):
            logits, seconds = _timed_forward(
                self.draft, torch.tensor([pending], device=device), draft_cache, last_only=True
            )
            stats.draft_seconds += seconds
            stats.draft_calls += 1
            if params.greedy:
                token = logits[-1].argmax()
                confidence = logits[-1].float().softmax(-1)[token] if self.draft_confidence else 1.0
            else:
                q = warp_probs(logits[-1], params)
                token = sample(q, generator)
                probs.append(q)
                confidence = q[token]
            drafts.append(token)
            pending = [int(token)]
            if confidence < self.draft_confidence:
                break
        draft_tokens = torch.stack(drafts) if drafts else torch.empty(0, dtype=torch.long, device=device)
        return draft_tokens, (torch.stack(probs) if probs else None)

    def _verify(self, last_token: int, drafts: torch.Tensor, target_cache, stats) -> torch.Tensor:
        """Target logits [k + 1, V] after the last token and after each draft token."""
        candidate = torch.cat([torch.tensor([last_token], device=drafts.device), drafts]).unsqueeze(0)
        logits, seconds = _timed_forward(self.target, candidate, target_cache, last_only=False)
        stats.target_seconds += seconds
        stats.target_calls += 1
        return logits


def _cut_at_eos(produced: list[int], eos: set[int]) -> tuple[bool, list[int]]:
    for i, token in enumerate(produced):
        if token in eos:
            return True, produced[: i + 1]
    return False, produced
