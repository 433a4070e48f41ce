"""Continuous batching: requests join and leave the running batch between steps.

``SpecEngine`` holds the running rows and a queue of waiting requests. Each
``step()``:

    leave    cancelled rows leave the batch at once
    admit    waiting requests (as many as fit) are prefilled together in caches of
             their own, which are then appended to the running batch's caches
    decode   one speculative step for every running row (``serve/src/decode.py``);
             each row drafts, verifies and accepts with its own sampling parameters,
             budget, EOS ids, stop strings and random generator
    finish   rows that hit EOS, a stop string or their budget leave the batch

No request waits for another to finish. ``add`` and ``cancel`` may be called from
any thread while one thread calls ``step`` (``AsyncEngine`` runs it that way);
nothing else is thread-safe. An exception inside a step fails the requests of
that step only (``Request.error``); the engine goes on with the others.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import torch
from specdistill.serve import decode, kv_rows
from specdistill.serve.sampling import SamplingParams
from specdistill.serve.stats import SpecStats
from specdistill.serve.text import TextTracker, normalize_stop
from specdistill.serve.tree import accept_tree, add_branches, draft_tree, verify_tree
from specdistill.serve.tree_sampling import accept_sampled_tree, draft_sampled_tree

log = logging.getLogger(__name__)
_ids = itertools.count()


@dataclass
class StreamChunk:
    """What one step added to a request. ``token_ids`` may be empty on the last chunk;
    ``text`` is the newly stable text ("" without a tokenizer, or while text is held back)."""

    token_ids: list[int]
    text: str
    finish_reason: str | None  # "eos", "stop", "length", "cancelled" or "error"; on the last chunk only
    stats: SpecStats  # running counts of this request (the same object every chunk)


@dataclass
class DraftVersion:
    """One draft the engine served with, and the engine's counts (``SpecStats.counts``) when it began
    and, once swapped out, when it ended: its own acceptance is the difference."""

    version: int
    name: str
    start: dict
    end: dict | None = None

    def counts(self, now: dict) -> dict:
        end = self.end or now
        return {key: end[key] - self.start[key] for key in end}


@dataclass(eq=False)
class Request:
    """One request and its row's state: everything that differs between rows lives here."""

    request_id: str
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams
    eos: frozenset[int]
    text: TextTracker | None
    generator: torch.Generator | None  # seeded per request; None draws from torch's global generator
    tokens: list[int] = field(default_factory=list)  # prompt + generated (cut after a stop string)
    stats: SpecStats = field(default_factory=SpecStats)
    finish_reason: str | None = None
    error: BaseException | None = None
    cancelled: bool = False
    arrival: float = field(default_factory=time.perf_counter)
    # With ``SpecEngine.capture_states``: the target's head features and final state [n, F + H] of each
    # position fed, in pieces as they came (None once a swap changed the head's layers mid-request).
    target_states: list[torch.Tensor] | None = field(default_factory=list)
    state_layers: list[int] | None = None  # the head's layers those features are of

    @property
    def new(self) -> int:
        return len(self.tokens) - len(self.prompt)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class SpecEngine:
    """A batch in flight over a ``SpeculativeGenerator``'s models, runners and draft-length
    policy. Make one with ``generator.engine(max_batch_size)``."""

    def __init__(self, generator, max_batch_size: int = 32):
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        self.gen = generator
        self.device = generator.target.device
        limits = [getattr(r, "max_rows", None) for r in (generator.target_runner, generator.draft_runner)]
        self.max_batch_size = min([max_batch_size] + [n for n in limits if n])
        self.stats = SpecStats()  # every request's counts; each shared call and second counted once
        self.running: list[Request] = []
        self._waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Lock()
        self._target_state = self._draft_state = None
        self.draft_versions = [DraftVersion(1, generator.draft_name, self.stats.counts())]
        # Keep each request's target states for a head (``serve --capture-features``): what the target
        # computes anyway, so a head adapting to the captured traffic need not run it again.
        self.capture_states = False

    # ---- requests in, from any thread --------------------------------------------------------

    def add(self, input_ids, *args, **params) -> Request:
        """Check a request (a bad one raises ValueError here, before any work) and queue it.
        The arguments are those of ``make_request``."""
        return self.enqueue(self.make_request(input_ids, *args, **params))

    def make_request(self, input_ids, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                     top_k: int = 0, eos_token_id: int | list[int] | None = None, seed: int | None = None,
                     stop: str | list[str] | None = None, request_id: str | None = None) -> Request:
        """A checked request, not queued yet (``enqueue`` it); ValueError says what is wrong."""
        params = SamplingParams(temperature, top_p, top_k)
        prompt = self.gen.check_prompt(input_ids, max_new_tokens)
        stops = normalize_stop(stop, self.gen.tokenizer)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        tracker = TextTracker(self.gen.tokenizer, stops) if self.gen.tokenizer is not None else None
        return Request(request_id or f"req-{next(_ids)}", prompt, max_new_tokens, params,
                       frozenset(self.gen.eos_ids(eos_token_id)), tracker, generator, tokens=list(prompt))

    def enqueue(self, request: Request) -> Request:
        with self._lock:
            self._waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """The request leaves at the next step (its last chunk says "cancelled")."""
        request.cancelled = True

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    # ---- the step ------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, StreamChunk]]:
        """Admit, decode one step, finish. Returns a chunk for every request that moved or ended."""
        out: list[tuple[Request, StreamChunk]] = []
        self._leave([r for r in self.running if r.cancelled], "cancelled", out)
        self._admit(out)
        if not self.running:
            return out
        try:
            results = self._decode()
        except Exception as err:  # the step's requests fail; the engine stays usable for the next ones
            log.exception("a decode step failed; failing its %d requests", len(self.running))
            self._fail(self.running, err, out)
            self.running, self._target_state, self._draft_state = [], None, None
            return out
        for request, produced, reason in results:
            out.append((request, self._push(request, produced, reason)))
        self._leave([r for r in self.running if r.finished], None, out)
        return out

    def _decode(self) -> list[tuple[Request, list[int], str | None]]:
        rows, gen = self.running, self.gen
        branches, retrieval_seconds = self._retrieved(rows)
        if self._use_tree(rows, branches):
            results = self._decode_tree(rows, branches, retrieval_seconds)
            if results is not None:
                return results
        # One target call always yields one token of its own, so draft at most budget - 1;
        # and no row may be fed past the target's context, drafts included.
        policy = gen.draft_length
        k = policy.next_k()
        if gen.max_positions:
            k = min(k, min(gen.max_positions - len(r.tokens) for r in rows))
        if any(branches) and hasattr(policy, "use_branch") and policy.use_branch(list(map(len, branches))):
            return self._decode_branches(rows, branches, retrieval_seconds)
        limits = [max(0, min(k, r.max_new_tokens - r.new - 1)) for r in rows]
        drafts, draft_probs, limits, draft_seconds, draft_calls = decode.propose(
            gen.draft_runner, self._draft_state, rows, limits, gen.draft_confidence, self.device)
        learn = functools.partial(policy.update_rows, k_run=drafts.shape[1], draft_seconds=draft_seconds)
        return self._verify_chain(rows, drafts, draft_probs, limits, draft_seconds, draft_calls, learn)

    def _decode_branches(self, rows, branches: list[list[int]], retrieval_seconds: float):
        """One step that verifies the rows' retrieval branches alone, as chains: no draft model runs."""
        width = max(map(len, branches))
        drafts = decode.right_padded(branches, width, self.device)
        learn = functools.partial(self.gen.draft_length.update_branch, width=width)
        return self._verify_chain(rows, drafts, None, list(map(len, branches)), retrieval_seconds, 0, learn)

    def _verify_chain(self, rows, drafts, draft_probs, limits, draft_seconds, draft_calls, learn):
        """Verify each row's chain of ``limits[b]`` drafts in one pass, accept, tell the policy
        (``learn(outcomes, verify_seconds=...)``) and roll both caches to what was accepted."""
        gen = self.gen
        layers = self._feature_layers()
        target_out, target_seconds = decode.verify(gen.target_runner, self._target_state, rows, drafts, layers)
        target_logits = target_out[0] if layers else target_out
        accepted = decode.accept(rows, limits, drafts, draft_probs, target_logits)
        outcomes = [(k_row, n) for k_row, (n, _) in zip(limits, accepted)]
        self._account(rows, outcomes, draft_seconds, draft_calls, target_seconds)
        learn(outcomes, verify_seconds=target_seconds)
        lengths = [len(r.tokens) + n for r, (n, _) in zip(rows, accepted)]
        gen.target_runner.rollback(self._target_state, lengths)
        gen.draft_runner.rollback(self._draft_state, lengths)
        if layers:  # the features of the last token and the accepted drafts, for the next proposal
            self._take_features(rows, self._draft_state, target_out[1], [n + 1 for n, _ in accepted])
        return self._results(rows, [drafts[i, :n].tolist() + [token] for i, (n, token) in enumerate(accepted)])

    def _retrieved(self, rows: list[Request]) -> tuple[list[list[int]], float]:
        """Each row's retrieval branch for a tree step (``model_free.RetrievalBranch``; none when not
        configured, or when a row samples), within its budget and the target's context; and the seconds."""
        gen, began = self.gen, time.perf_counter()
        if gen.draft_retrieval is None or gen.draft_tree is None or not all(r.params.greedy for r in rows):
            return [[] for _ in rows], 0.0
        may_pay = getattr(gen.draft_length, "branches_may_pay", None)
        if may_pay and not may_pay(len(rows), gen.draft_retrieval.max_tokens, gen.draft_tree.depth,
                                   gen.draft_tree.nodes):
            return [[] for _ in rows], 0.0  # neither a tree nor branches alone could win: not looked up
        limit = gen.max_positions
        limits = [min(r.max_new_tokens - r.new - 1, limit - len(r.tokens) if limit else r.max_new_tokens)
                  for r in rows]
        return gen.draft_retrieval.branches(rows, limits), time.perf_counter() - began

    def _use_tree(self, rows: list[Request], branches: list[list[int]]) -> bool:
        """A tree for a batch whose nodes all fit in the target's context (with sampled rows, unless
        they draft chains: ``draft_tree_sampling``), within the optional ``draft_tree_max_batch`` cap,
        when the draft-length policy prices it (with the rows' retrieval ``branches``) above a chain
        (a policy that does not price trees, a fixed k, always takes it)."""
        gen = self.gen
        tree, cap, limit = gen.draft_tree, gen.draft_tree_max_batch, gen.max_positions
        if tree is None or (cap is not None and len(rows) > cap):
            return False
        greedy = all(r.params.greedy for r in rows)
        if not greedy and gen.draft_tree_sampling == "chain":
            return False
        # The tree the step would draft: the greedy shape, or a sampled batch's fixed topology.
        depth, nodes = (tree.depth, tree.nodes) if greedy else (gen.sampled_topology.depth, gen.sampled_topology.nodes)
        if limit and any(len(r.tokens) + depth > limit for r in rows):
            return False
        use_tree = getattr(gen.draft_length, "use_tree", None)
        lengths = list(map(len, branches))
        extra = max(lengths)
        return use_tree is None or use_tree(len(rows), max(depth, extra), nodes + extra, lengths)

    def _decode_tree(self, rows: list[Request], branches: list[list[int]],
                     retrieval_seconds: float) -> list[tuple[Request, list[int], str | None]] | None:
        """One step with a draft tree (``serve/src/tree.py``) and the rows' retrieval branches joined to it;
        None when the head has nothing to draft from."""
        gen = self.gen
        limits = [r.max_new_tokens - r.new - 1 for r in rows]
        if all(r.params.greedy for r in rows):  # EAGLE-2's dynamic tree, and the retrieval branches
            (tree, draft_calls), draft_seconds = decode.clocked(draft_tree, gen.draft_runner, self._draft_state, rows,
                                                                gen.draft_tree, self.device)
            if tree is None:
                return None
            tree, draft_seconds = add_branches(tree, branches), draft_seconds + retrieval_seconds
            accept = functools.partial(accept_tree, tree)
            # The longest path a step can accept: the head's tree, or a longer branch.
            longest = [max(min(gen.draft_tree.depth, gen.draft_tree.nodes), len(branch)) for branch in branches]
        else:  # sampled rows: a fixed topology, verified by recursive rejection sampling
            (drafted, draft_calls), draft_seconds = decode.clocked(
                draft_sampled_tree, gen.draft_runner, self._draft_state, rows, gen.sampled_topology,
                gen.draft_tree_sampling, self.device)
            if drafted is None:
                return None
            tree = drafted.tree
            accept = functools.partial(accept_sampled_tree, drafted, rows)
            longest = [gen.sampled_topology.depth] * len(rows)
        (logits, features), target_seconds, base = verify_tree(gen.target_runner, self._target_state, rows, tree,
                                                               self._feature_layers())
        accepted = accept(logits, limits)
        self._account(rows, [(min(most, limit), len(path)) for most, limit, (path, _) in
                             zip(longest, limits, accepted)], draft_seconds, draft_calls, target_seconds, tree=True)
        if hasattr(gen.draft_length, "update_tree"):
            gen.draft_length.update_tree([len(path) for path, _ in accepted], max(longest), tree.tokens.shape[1],
                                         draft_seconds, target_seconds)
        paths = [[0] + path for path, _ in accepted]  # node indices, root (the last token) first
        # The target held all but each row's last token; it now holds the root and the path after them.
        gen.target_runner.keep_path(self._target_state, base, paths, [len(r.tokens) - 1 for r in rows])
        gen.draft_runner.rollback(self._draft_state, [len(r.tokens) + len(path) for r, (path, _) in
                                                      zip(rows, accepted)])
        width = max(map(len, paths))
        index = torch.tensor([p + [p[-1]] * (width - len(p)) for p in paths], device=features.device)
        path_features = features.gather(1, index[:, :, None].expand(-1, -1, features.shape[-1]))
        self._take_features(rows, self._draft_state, path_features, list(map(len, paths)))
        tokens = tree.tokens.tolist()
        return self._results(rows, [[tokens[i][node - 1] for node in path] + [token]
                                    for i, (path, token) in enumerate(accepted)])

    def _feature_layers(self) -> list[int] | None:
        """The hidden states the target's passes return: the head's layers (None for other drafts), and
        with ``capture_states`` the final normed state after them (HF's ``hidden_states[num_layers]``)."""
        layers = decode.feature_layers(self.gen.draft_runner)
        if layers and self.capture_states:
            return layers + [self.gen.target.config.num_hidden_layers]
        return layers

    def _take_features(self, rows: list[Request], state, features: torch.Tensor, counts: list[int]) -> None:
        """Each row's first ``counts[b]`` target features [B, T, F] go to the head; with ``capture_states``
        they carry the final state too, and the row's request keeps both (a copy: ``features`` is a view)."""
        if self.capture_states:
            host = features[:, : max(counts)].to("cpu")  # one copy off an accelerator, not one per row
            for row, n, row_states in zip(rows, counts, host):
                if n and row.target_states is not None:
                    row.target_states.append(row_states[:n].clone())
                    row.state_layers = self.gen.draft_runner.feature_layers
            features = features[..., : -self.gen.target.config.hidden_size]
        self.gen.draft_runner.take_features(state, features, counts)

    @staticmethod
    def _results(rows: list[Request], produced_by_row: list[list[int]]) -> list[tuple[Request, list[int], str | None]]:
        """Each row's new tokens, cut at EOS, and why it finished (None: it goes on)."""
        results = []
        for request, produced in zip(rows, produced_by_row):
            done, produced = decode.cut_at_eos(produced, request.eos)
            full = request.new + len(produced) >= request.max_new_tokens
            results.append((request, produced, "eos" if done else "length" if full else None))
        return results

    def _account(self, rows, outcomes, draft_seconds, draft_calls, target_seconds, tree: bool = False) -> None:
        """Each row its share of the shared forwards; the engine's totals count them once."""
        share = 1 / len(rows)
        for request, (k, n) in zip(rows, outcomes):
            for stats in (request.stats, self.stats):
                stats.record_step(k, n, tree)
            request.stats.draft_seconds += draft_seconds * share
            request.stats.draft_calls += draft_calls * share
            request.stats.target_seconds += target_seconds * share
            request.stats.target_calls += share
        self.stats.draft_seconds += draft_seconds
        self.stats.draft_calls += draft_calls
        self.stats.target_seconds += target_seconds
        self.stats.target_calls += 1

    def _push(self, request: Request, produced: list[int], reason: str | None) -> StreamChunk:
        """The step's tokens into the request: text, stop strings, counts."""
        delta = ""
        if request.text is not None:
            produced, delta, stopped = request.text.push(produced)
            if stopped:
                reason = "stop"
            elif reason:
                delta += request.text.finish()  # flush what was held back
        request.tokens += produced
        request.stats.new_tokens += len(produced)
        self.stats.new_tokens += len(produced)
        request.stats.total_seconds = time.perf_counter() - request.arrival
        request.finish_reason = reason
        return StreamChunk(produced, delta, reason, request.stats)

    # ---- swapping the draft ------------------------------------------------------------------

    @torch.inference_mode()
    def swap_draft(self, draft, name: str, draft_vocab=None) -> DraftVersion:
        """Draft with ``draft`` from the next step on; call between steps, from the thread that steps.
        Running rows keep their places: the new draft's cache is prefilled over their tokens so far
        (a head's from a pass of the target that keeps nothing), so they continue with it at once and
        their output stays the target's. A draft of the wrong kind or target raises ValueError and the
        old one keeps drafting."""
        gen = self.gen
        runner = gen.draft_runner_for(draft, draft_vocab)
        if decode.feature_layers(runner) != decode.feature_layers(gen.draft_runner):
            for request in self.running:  # their states so far are another head's features
                request.target_states = None
        state = None
        if self.running:
            capacity = max(len(r.prompt) + r.max_new_tokens for r in self.running) + self._lookahead()
            state = runner.start(len(self.running), capacity)
            scratch = gen.target_runner.start(len(self.running), capacity)  # its cache is thrown away
            decode.prefill(gen.target_runner, scratch, runner, state, self.running, self.device)
        gen.use_draft(draft, runner, name)
        self._draft_state = state
        if hasattr(gen.draft_length, "new_draft"):  # the old draft's acceptance must not price the new one
            gen.draft_length.new_draft()
        self.draft_versions[-1].end = self.stats.counts()
        self.draft_versions.append(DraftVersion(self.draft_versions[-1].version + 1, name, self.stats.counts()))
        return self.draft_versions[-1]

    # ---- joining and leaving -------------------------------------------------------------------

    def _admit(self, out) -> None:
        batch = []
        with self._lock:
            while self._waiting and len(self.running) + len(batch) < self.max_batch_size:
                request = self._waiting.popleft()
                if request.cancelled:
                    request.finish_reason = "cancelled"
                    out.append((request, StreamChunk([], "", "cancelled", request.stats)))
                else:
                    batch.append(request)
        if not batch:
            return
        gen = self.gen
        # Room for the prompt, the budget and the drafts past it (the runners grow if needed).
        capacity = max(len(r.tokens) + r.max_new_tokens for r in batch) + self._lookahead()
        try:
            target_state = gen.target_runner.start(len(batch), capacity)
            draft_state = gen.draft_runner.start(len(batch), capacity)
            seconds = decode.prefill(gen.target_runner, target_state, gen.draft_runner, draft_state, batch,
                                     self.device, self._feature_layers(),
                                     functools.partial(self._take_features, batch, draft_state))
        except Exception as err:  # out of memory, say: these requests fail, the running ones go on
            log.exception("prefilling %d requests failed", len(batch))
            self._fail(batch, err, out)
            return
        for request in batch:
            request.stats.prefill_seconds += seconds / len(batch)
        self.stats.prefill_seconds += seconds
        if not self.running:
            self._target_state, self._draft_state = target_state, draft_state
        else:
            try:
                gen.target_runner.extend(self._target_state, target_state)
                gen.draft_runner.extend(self._draft_state, draft_state)
            except Exception as err:  # the running caches may be half-extended: nothing in them is safe
                log.exception("adding %d rows to the batch failed", len(batch))
                self._fail(self.running + batch, err, out)
                self.running, self._target_state, self._draft_state = [], None, None
                return
        self.running += batch

    def _lookahead(self) -> int:
        """Cache slots a step may use past a row's budget: a chain's drafts, or a tree's nodes with
        a retrieval branch (the target's) and its drafted levels (the head's)."""
        tree, retrieval = self.gen.draft_tree, self.gen.draft_retrieval
        if tree is None:
            return 8
        branch = retrieval.max_tokens if retrieval is not None else 0
        return max(8, tree.nodes + branch + 1, (tree.depth - 1) * tree.top_k + 1)

    def _leave(self, leaving: list[Request], reason: str | None, out) -> None:
        if not leaving:
            return
        retrieval = self.gen.draft_retrieval
        for request in leaving:
            if reason:
                request.finish_reason = reason
                out.append((request, StreamChunk([], "", reason, request.stats)))
            elif retrieval is not None and request.error is None:  # finished: later rows may retrieve from it
                retrieval.learn(request.tokens[len(request.prompt):])
        # The last rows fill the leavers' slots, so the runners move as few rows as they can.
        still = kv_rows.fewest_moves([i for i, r in enumerate(self.running) if r not in leaving])
        if still:
            self.gen.target_runner.select(self._target_state, still)
            self.gen.draft_runner.select(self._draft_state, still)
        else:
            self._target_state = self._draft_state = None
        self.running = [self.running[i] for i in still]

    @staticmethod
    def _fail(requests: list[Request], err: BaseException, out) -> None:
        for request in requests:
            request.error, request.finish_reason = err, "error"
            out.append((request, StreamChunk([], "", "error", request.stats)))
