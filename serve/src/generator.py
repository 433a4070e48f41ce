"""Lossless speculative decoding with any pair of Hugging Face causal LMs.

``SpeculativeGenerator`` holds the models, their runners (``runners.py``) and
the draft-length policy. Every way to decode goes through the continuous-batching
engine (``scheduler.SpecEngine``), whose step (``decode.py``) reads top to bottom:

    draft   the draft proposes k tokens, one forward each, with its KV cache
    verify  the target scores [last token, d_1..d_k] in ONE forward with its KV cache
    accept  greedy: longest prefix equal to the target's argmax;
            sampling: accept d_i with min(1, p/q), else draw from norm(max(0, p - q)),
            and a bonus token from the target when all k are accepted
    roll    both caches are rolled back to the accepted prefix (never recomputed)

Invariant between steps, per row: ``tokens`` holds the sequence; the target cache
holds every token but the last; the draft cache holds a prefix of that (it may lag
by a token or two, which it feeds at the start of the next proposal).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import torch
from specdistill.serve.eagle_runner import EagleRunner
from specdistill.serve.llama_fast import LlamaRunner
from specdistill.serve.model_free import ModelFreeDrafter, RetrievalBranch
from specdistill.serve.policy import DraftLengthPolicy, make_policy
from specdistill.serve.runners import NoDraft, make_runner
from specdistill.serve.scheduler import Request, SpecEngine, StreamChunk
from specdistill.serve.stats import SpecStats
from specdistill.serve.tree import TreeShape
from specdistill.serve.tree_sampling import SAMPLED_TREE, check_tree_sampling, sampled_topology, sampled_tree_shape

from specdistill.models import check_compatible, vocab_size
from specdistill.models.eagle3 import Eagle3Head, check_head

__all__ = ["GenerationOutput", "SpeculativeGenerator", "StreamChunk"]


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [1, prompt + new] token ids
    stats: SpecStats
    text: str | None = None  # the new text, cut before a stop string (needs a tokenizer)
    finish_reason: str | None = None  # "eos", "stop" (a stop string) or "length"


class SpeculativeGenerator:
    """Speculative decoding with a draft model; output is the target's own.

    Greedy output equals ``target.generate(do_sample=False)`` token for token;
    sampled output follows the target's (temperature/top-k/top-p warped)
    distribution exactly.

    ``num_draft_tokens`` is a fixed k, ``"auto"`` (cost-aware: picks k from the
    measured acceptance and step costs), ``"heuristic"`` (Hugging Face's +2/-1
    schedule) or any object with ``next_k()`` and ``update_rows(...)`` or ``update(...)`` (see
    ``specdistill.serve.policy``). ``generate`` returns one prompt's output;
    ``stream`` and ``astream`` yield it step by step; ``generate_batch`` decodes
    prompts of any lengths together, each row accepting its own number of drafts;
    ``engine`` returns a continuous-batching engine for servers (requests join and
    leave between steps, each with its own sampling parameters). All of them run
    the same engine.

    ``fast_path``: "auto" runs Llama-family models (Llama, SmolLM, Mistral, Qwen2)
    on the lean runner with a preallocated KV cache and everything else on the
    Hugging Face model; True insists on the lean runner, False never uses it.
    ``compile=True`` wraps the lean runner in ``torch.compile``. ``draft=None`` decodes
    with the target alone on the same engine (a baseline, or to generate data fast);
    ``draft="prompt-lookup"`` or ``"ngram"`` drafts without a model
    (``specdistill.serve.model_free``); an ``Eagle3Head`` (``specdistill.models.eagle3``) drafts
    from the target's own hidden states, which each verification hands it.
    ``draft_vocab`` (token ids, e.g. the most frequent ones from ``draft_vocab.json``
    beside a trained draft) lets the draft propose only those: its LM head shrinks to
    them, which makes draft steps far cheaper for large vocabularies; still lossless.
    ``draft_tree`` (a ``TreeShape`` or ``"DEPTH,TOP_K,NODES"``, head drafts only) drafts a
    tree of guesses and verifies it in one pass (``specdistill.serve.tree``): a higher τ for
    a costlier verification, which pays where verifying more tokens costs little (GPUs).
    Greedy rows draft EAGLE-2's dynamic tree; sampled rows a fixed tree whose siblings are drawn
    without replacement from the head's q and verified by recursive rejection sampling, still exact
    (``specdistill.serve.tree_sampling``; ``sampled_tree`` is its size, "auto" for 5,3,10 where
    verifying many tokens is cheap, a GPU or bf16 on a CPU with bf16 instructions, else 4,2,6;
    ``draft_tree_sampling="top"`` drafts the likeliest siblings instead, ``"chain"`` keeps sampled
    rows on a chain). With ``num_draft_tokens="auto"`` the
    cost-aware policy decides each step between the tree, a chain of k and no drafting, by
    expected tokens/s from the measured acceptance per depth and verification cost per token
    count (a large batch's rows x nodes tokens make the verification compute-bound, so it
    drops the tree there). ``draft_tree_max_batch`` is an optional fixed cap on a tree
    step's rows on top of that (None: no cap). ``draft_retrieval`` (``"ngram"``, ``"prompt-lookup:12"``
    or a ``RetrievalBranch``; trees only) joins the continuation of each row's last n-gram earlier
    in its text to the head's tree as one more branch, verified in the same pass: copy-heavy
    requests (summaries, extraction, questions over a document) gain prompt lookup's tokens. With a
    store (``"ngram:8+served"``, ``"ngram:8+corpus"``; ``"auto"`` is the latter) a row whose text has
    no match takes the continuation from the outputs this generator served so far, and from the
    answers the head trained on (its directory's ``datastore.npz``; else the default target's shipped
    answers, ``serve/src/datastore.py``)."""

    def __init__(self, target, draft=None, num_draft_tokens: int | str | DraftLengthPolicy = 5, tokenizer=None,
                 draft_tokenizer=None, draft_confidence: float = 0.0, fast_path: bool | str = "auto",
                 compile: bool = False, draft_vocab=None, draft_tree: TreeShape | str | None = None,
                 draft_tree_max_batch: int | None = None, draft_retrieval: RetrievalBranch | str | None = None,
                 draft_tree_sampling: str = "sample", sampled_tree: TreeShape | str = SAMPLED_TREE):
        model_free, head = isinstance(draft, str), isinstance(draft, Eagle3Head)
        if head:
            check_head(target, draft)
        elif draft is not None and not model_free:
            check_compatible(target, draft, tokenizer, draft_tokenizer)
        elif draft is None:
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
        self.draft = None if draft is None or model_free else draft.eval()
        self.target_runner = make_runner(self.target, fast_path, compile)
        self.fast_path, self.compile = fast_path, compile
        if model_free:
            self.draft_runner = ModelFreeDrafter(draft, vocab_size(target))
        else:
            self.draft_runner = self._model_runner(self.draft, draft_vocab)
        self.draft_name = draft if model_free else type(draft).__name__ if draft is not None else "none"
        self.draft_tree = TreeShape.parse(draft_tree, head=head)
        if self.draft_tree is not None and not (head and isinstance(self.target_runner, LlamaRunner)):
            raise ValueError("draft_tree needs an EAGLE-3 head as the draft and a Llama-family target on the fast "
                             "path (fast_path 'auto' or True)")
        if self.draft_tree is not None and self.target_runner.sliding_window:
            raise ValueError("draft trees do not support sliding-window attention; use a chain (draft_tree=None)")
        if draft_tree_max_batch is not None and draft_tree_max_batch < 1:
            raise ValueError(f"draft_tree_max_batch must be >= 1 (None: no cap), got {draft_tree_max_batch}")
        self.draft_tree_max_batch = draft_tree_max_batch
        self.draft_tree_sampling = check_tree_sampling(draft_tree_sampling)
        self.sampled_tree = sampled_tree_shape(sampled_tree, next(self.target.parameters()))
        self.sampled_topology = None if self.draft_tree is None else sampled_topology(self.sampled_tree)
        self.draft_retrieval = RetrievalBranch.parse(draft_retrieval)
        if self.draft_retrieval is not None:
            self.draft_retrieval = self.draft_retrieval.for_target(vocab_size(target), draft)
        if self.draft_retrieval is not None and self.draft_tree is None:
            raise ValueError("draft_retrieval joins a head's draft tree: give draft_tree too (an EAGLE-3 head's "
                             "'auto'), or draft with the model-free drafter alone (draft='ngram')")
        self.num_draft_tokens = num_draft_tokens
        self.tokenizer = tokenizer
        self.max_positions = getattr(target.config, "max_position_embeddings", None)

    def _model_runner(self, draft, draft_vocab=None):
        """The draft runner of a model draft (an EAGLE-3 head or a causal LM), or of none."""
        if isinstance(draft, Eagle3Head):
            if draft_vocab is not None:
                raise ValueError("a draft head has its own draft vocabulary; do not pass draft_vocab with it")
            return EagleRunner(draft)
        return NoDraft() if draft is None else make_runner(draft, self.fast_path, self.compile, draft_vocab)

    def draft_runner_for(self, draft, draft_vocab=None):
        """A runner for ``draft``, to replace the serving draft (``SpecEngine.swap_draft``): it must be
        a model of the same kind (an EAGLE-3 head for a head, a causal LM for an LM) made for this
        target; ValueError says why not."""
        serving = self.draft
        if serving is None or isinstance(self.draft_runner, ModelFreeDrafter):
            raise ValueError(f"this generator drafts with {self.draft_name!r}; only a model draft can be swapped")
        if not isinstance(draft, torch.nn.Module):
            raise ValueError(f"{draft!r} is not a model: only a model draft (a head or a causal LM) swaps in")
        if isinstance(serving, Eagle3Head) != isinstance(draft, Eagle3Head):
            kind = "an EAGLE-3 head" if isinstance(serving, Eagle3Head) else "a causal-LM draft"
            raise ValueError(f"the serving draft is {kind}; give one of the same kind")
        if isinstance(draft, Eagle3Head):
            check_head(self.target, draft)
        else:
            check_compatible(self.target, draft, self.tokenizer, None)
        return self._model_runner(draft.eval(), draft_vocab)

    def use_draft(self, draft, runner, name: str) -> None:
        """Draft with ``draft`` (through ``runner``, from ``draft_runner_for``) from now on."""
        self.draft, self.draft_runner, self.draft_name = draft, runner, name
        if self.draft_retrieval is not None:
            self.draft_retrieval.use_corpus_of(draft, vocab_size(self.target))

    def engine(self, max_batch_size: int = 32) -> SpecEngine:
        """A continuous-batching engine over these models: ``add`` requests (from any
        thread), call ``step`` in a loop. See ``specdistill.serve.AsyncEngine`` for asyncio."""
        return SpecEngine(self, max_batch_size)

    # Each call takes the request parameters of ``SpecEngine.make_request``, typed and checked there once:
    # temperature, top_p, top_k (as ``SamplingParams``), eos_token_id, seed and stop.

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 128, **params) -> GenerationOutput:
        """The whole generation of one prompt ([1, L] or [L]). ``stop`` strings end it when they appear
        in the text (needs a tokenizer); ``text`` is then cut before the stop string while ``sequences``
        keeps the tokens up to the one that completed it."""
        return self.generate_batch([input_ids], max_new_tokens, **params)[0]

    def generate_batch(self, prompts: list[torch.Tensor], max_new_tokens: int = 128, max_batch_size: int | None = None,
                       **params) -> list[GenerationOutput]:
        """Several prompts (each [1, L] or [L], of any lengths) decoded together. Each row accepts its own
        number of drafts per step and leaves the batch when it finishes; greedy rows equal their
        single-prompt output. Row i is seeded with ``seed + i``. With ``max_batch_size`` smaller than
        the number of prompts, the rest join as rows finish."""
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError("prompts must be a non-empty list of token id tensors")
        engine = self.engine(max_batch_size or len(prompts))
        seed = params.pop("seed", None)
        requests = [engine.add(ids, max_new_tokens, seed=None if seed is None else seed + i, **params)
                    for i, ids in enumerate(prompts)]
        texts = {id(request): [] for request in requests}
        while engine.has_work():
            for request, chunk in engine.step():
                _raise_if_failed(request)
                texts[id(request)].append(chunk.text)
        return [self._output(request, texts[id(request)]) for request in requests]

    def stream(self, input_ids: torch.Tensor, max_new_tokens: int = 128, **params) -> Iterator[StreamChunk]:
        """An iterator of ``StreamChunk``, one per decode step. Arguments are checked
        now, so a bad request fails before the first chunk."""
        engine = self.engine(1)
        return _chunks(engine, engine.add(input_ids, max_new_tokens, **params))

    async def astream(self, input_ids: torch.Tensor, **kwargs) -> AsyncIterator[StreamChunk]:
        """``stream`` for asyncio code: each step runs in a worker thread
        (``asyncio.to_thread``) so the event loop keeps serving. To serve many requests
        at once, in one batch, use ``AsyncEngine`` instead."""
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

    def _output(self, request: Request, texts: list[str]) -> GenerationOutput:
        sequences = torch.tensor([request.tokens], device=self.target.device, dtype=torch.long)
        return GenerationOutput(sequences, request.stats, "".join(texts) if self.tokenizer else None,
                                request.finish_reason)

    def check_prompt(self, input_ids: torch.Tensor | list[int], max_new_tokens: int) -> list[int]:
        """The prompt's token ids (a tensor [1, L] or [L], or a list of ints), after checking
        it and the budget against the context and the vocabulary."""
        if isinstance(input_ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in input_ids):
            input_ids = torch.tensor(input_ids, dtype=torch.long)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
            raise ValueError("input_ids must be an integer tensor or a list of token ids (use the tokenizer first)")
        ids = input_ids if input_ids.dim() == 2 else input_ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"a prompt has shape [1, L] or [L], got {tuple(input_ids.shape)}; "
                             "pass several prompts to generate_batch as a list")
        if ids.shape[1] == 0:
            raise ValueError("the prompt is empty; give at least one token")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        # The engine never feeds a row past the context, so prompt + budget is all that must fit.
        if self.max_positions and ids.shape[1] + max_new_tokens > self.max_positions:
            raise ValueError(
                f"prompt of {ids.shape[1]} tokens + max_new_tokens {max_new_tokens} exceeds the target's "
                f"context of {self.max_positions} positions; shorten the prompt or max_new_tokens"
            )
        vocab = self.target.config.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"the prompt holds token ids outside the vocabulary [0, {vocab})")
        return ids[0].tolist()

    def eos_ids(self, eos_token_id) -> set[int]:
        """The EOS ids of a request: as given, else the target's generation config."""
        if eos_token_id is None:
            eos_token_id = self.target.generation_config.eos_token_id
        if eos_token_id is None:
            return set()
        return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def _chunks(engine: SpecEngine, request: Request) -> Iterator[StreamChunk]:
    while not request.finished:
        for _, chunk in engine.step():
            _raise_if_failed(request)
            yield chunk


def _raise_if_failed(request: Request) -> None:
    if request.error is not None:
        raise request.error
