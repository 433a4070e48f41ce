"""Measure a draft: acceptance (α, τ, per position) and tokens/s against the target alone."""

from __future__ import annotations

import itertools
import time

import torch
from tqdm.auto import tqdm

from specdistill.data.prompts import Conversation, chat_ids, chat_prompt_ids
from specdistill.serve import SpecStats, SpeculativeGenerator
from specdistill.serve.tree_sampling import SAMPLED_TREE


def expected_tokens_per_call(alpha: float, k: int) -> float:
    """Tokens per target call with k drafts and constant per-token acceptance α:
    (1 - α^(k+1)) / (1 - α)."""
    if alpha >= 1:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, k: int, cost_ratio: float, verify_ratio: float = 1.0) -> float:
    """Walltime speedup over the target alone; cost_ratio = draft step / target step,
    verify_ratio = verification pass / target step (1 for a short chain; a draft tree's
    many tokens cost more: 11 of them 1.24 to 1.36 target steps on 2 CPU cores)."""
    return expected_tokens_per_call(alpha, k) / (k * cost_ratio + verify_ratio)


def _eos(tokenizer):
    return tokenizer.eos_token_id if tokenizer is not None else None


def answer_turns(tokenizer, prompt: str | Conversation, answer) -> list[list[int]]:
    """Each turn's answer ids, from ``answer(ids)`` on the chat so far ([1, L] token ids). The
    answer's text joins the chat before the next turn, so a second turn follows the model's own
    first answer, as in MT-bench."""
    conversation = Conversation.of(prompt)
    messages, outputs = list(conversation.context), []
    for turn in conversation.turns:
        messages.append({"role": "user", "content": turn})
        outputs.append(answer(torch.tensor([chat_ids(tokenizer, messages)])))
        messages.append({"role": "assistant", "content": tokenizer.decode(outputs[-1], skip_special_tokens=True)})
    return outputs


@torch.inference_mode()
def measure_target(target, tokenizer, prompts: list[str | Conversation], max_new_tokens: int = 96,
                   progress: bool = True, temperature: float = 0.0) -> dict:
    """Plain decoding with Hugging Face ``generate`` (greedy, or sampling at ``temperature`` with no
    top-k / top-p, as our engine's rows): tokens/s and the outputs (one per turn)."""
    outputs, seconds = [], 0.0
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {
        "do_sample": False}

    def answer(ids):
        nonlocal seconds
        ids = ids.to(target.device)
        start = time.perf_counter()
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                              eos_token_id=_eos(tokenizer), pad_token_id=_eos(tokenizer), **sampling)
        seconds += time.perf_counter() - start
        return out[0, ids.shape[1]:].tolist()

    for prompt in tqdm(prompts, desc="target alone", disable=not progress, leave=False):
        outputs += answer_turns(tokenizer, prompt, answer)
    return target_summary(outputs, seconds)


def target_summary(outputs: list[list[int]], seconds: float) -> dict:
    """Plain decoding's figures from its answers (one per turn) and the seconds they took."""
    new_tokens = sum(len(out) for out in outputs)
    return {"tokens_per_s": new_tokens / seconds, "new_tokens": new_tokens, "seconds": seconds,
            "step_seconds": seconds / max(new_tokens, 1), "outputs": outputs}


def measure_speculative(target, draft, tokenizer, prompts: list[str | Conversation], num_draft_tokens: int = 5,
                        max_new_tokens: int = 96, temperature: float = 0.0, seed: int = 0,
                        progress: bool = True, draft_confidence: float = 0.0, draft_vocab=None,
                        draft_tree=None, draft_retrieval=None, draft_tree_sampling="sample",
                        sampled_tree=SAMPLED_TREE, generator: SpeculativeGenerator | None = None) -> dict:
    """Speculative decoding over the prompts (every turn of each); merged raw counts and derived
    rates. ``draft=None`` measures the target alone on our engine. ``generator``: one built already
    (the draft settings are then its own), so that what its policy learned carries over between calls."""
    generator = generator or SpeculativeGenerator(target, draft, num_draft_tokens=num_draft_tokens,
                                                  draft_confidence=draft_confidence, draft_vocab=draft_vocab,
                                                  draft_tree=draft_tree, draft_retrieval=draft_retrieval,
                                                  draft_tree_sampling=draft_tree_sampling, sampled_tree=sampled_tree)
    stats, outputs, seeds = SpecStats(), [], itertools.count(seed)  # a seed per answer

    def answer(ids):
        nonlocal stats
        result = generator.generate(ids.to(target.device), max_new_tokens=max_new_tokens, temperature=temperature,
                                    eos_token_id=_eos(tokenizer), seed=next(seeds))
        stats = stats.merge(result.stats)
        return result.sequences[0, ids.shape[1]:].tolist()

    for prompt in tqdm(prompts, desc=f"speculative k={num_draft_tokens}", disable=not progress, leave=False):
        outputs += answer_turns(tokenizer, prompt, answer)
    return {**speculative_summary(stats), "stats": stats, "outputs": outputs}


def speculative_summary(stats: SpecStats) -> dict:
    """The rates of a run's merged counts, and its mean draft and verification costs."""
    summary = stats.summary()
    summary["draft_step_seconds"] = stats.draft_seconds / max(stats.draft_calls, 1)
    summary["verify_seconds"] = stats.target_seconds / max(stats.target_calls, 1)
    summary["mean_k"] = stats.proposed / max(stats.steps, 1)  # drafts per step actually proposed
    summary["tree_step_share"] = stats.tree_steps / max(stats.steps, 1)  # what was drafted, for the row's label
    return summary


@torch.inference_mode()
def warm_up(target, draft, tokenizer) -> None:
    """One short run of each path, so one-time allocation costs stay out of the timings."""
    ids = warm_up_generate(target, tokenizer)
    SpeculativeGenerator(target, draft, num_draft_tokens=2).generate(ids, max_new_tokens=4)


@torch.inference_mode()
def warm_up_generate(model, tokenizer) -> torch.Tensor:
    """One short HF ``generate`` run of ``model``; returns the prompt ids it used."""
    ids = chat_prompt_ids(tokenizer, "Hello").to(model.device)
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                   pad_token_id=_eos(tokenizer))
    return ids


def _chained(accepts: list[torch.Tensor], max_k: int) -> list[float]:
    """c_j = E_t[prod_{i<j} a_{t+i}] for j = 1..max_k: the chance that a draft block
    started at answer position t has its first j drafts accepted, averaged over every t
    (per row, over the positions where a block of j fits)."""
    sums, counts = [0.0] * max_k, [0] * max_k
    for a in accepts:
        run = torch.ones_like(a)
        for j in range(min(max_k, len(a))):
            run = run[: len(a) - j] * a[j:]  # run[t] = prod_{i<=j} a[t + i]
            sums[j] += float(run.sum())
            counts[j] += len(run)
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def chained_figures(chained: list[float]) -> tuple[list[float], list[float]]:
    """From c_j (the chance that the first j drafts of a block are accepted): α per draft
    position c_j / c_{j-1} and the predicted tokens per target step τ(k) = 1 + Σ_{j<=k} c_j,
    rounded, for k = 1..len(chained)."""
    per_position = [chained[0]] + [chained[j] / chained[j - 1] if chained[j - 1] > 0 else 0.0
                                   for j in range(1, len(chained))]
    tau = [1 + sum(chained[: k + 1]) for k in range(len(chained))]
    return [round(a, 4) for a in per_position], [round(t, 3) for t in tau]


def _acceptance_summary(accepts: list[torch.Tensor], max_k: int) -> dict:
    per_position, tau = chained_figures(_chained(accepts, max_k))
    return {"alpha": round(float(torch.cat(accepts).mean()), 4), "per_position": per_position,
            "predicted_tau": tau}


@torch.no_grad()
def teacher_forced_acceptance(target, draft, rows, max_k: int = 8) -> dict:
    """Acceptance of a draft on held-out text, teacher-forced: both models read the same
    tokens (``rows``: a ``TokenRows`` of prompts and the target's answers) and at every
    answer position the sampling acceptance Σ min(p, q) and the greedy one
    (argmax q = argmax p) are taken. α per draft position j and the predicted tokens per
    target step τ(k) chain them along the text, so the fall of acceptance with position
    (a draft that is wrong once stays wrong) shows, unlike (1 - α^(k+1)) / (1 - α)."""
    sampled, greedy = [], []
    for ids, mask in zip(rows.input_ids, rows.loss_mask):
        ids = ids[None].to(target.device)
        p = torch.softmax(target(input_ids=ids).logits[0, mask].float(), -1)
        q = torch.softmax(draft(input_ids=ids.to(draft.device)).logits[0, mask.to(draft.device)].float(), -1)
        q = q.to(p.device)
        sampled.append(torch.minimum(p, q).sum(-1).double())
        greedy.append((p.argmax(-1) == q.argmax(-1)).double())
    sampling, argmax = _acceptance_summary(sampled, max_k), _acceptance_summary(greedy, max_k)
    return {"alpha": sampling["alpha"], "alpha_per_position": sampling["per_position"],
            "predicted_tau": sampling["predicted_tau"], "alpha_greedy": argmax["alpha"],
            "alpha_greedy_per_position": argmax["per_position"], "predicted_tau_greedy": argmax["predicted_tau"],
            "positions": int(sum(len(a) for a in sampled))}
