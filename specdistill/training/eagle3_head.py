"""Training and measuring an EAGLE-3 head (``specdistill.models.eagle3``) with training-time test.

Each step the frozen target reads the batch once, under ``no_grad``: its hidden states at
the head's layers are the head's features, its logits the teacher. The head is unrolled
``ttt_steps`` times over every position (``Eagle3Head.ttt_logits``); step j at position c
is the j-th draft of a block the target verified through c, and learns the target's
distribution of token c + j + 1 (its logits at c + j, over the draft vocabulary) by the
run's divergence and temperature, counted where the batch's loss mask counts that token.
Later steps weigh ``ttt_decay ** (j - 1)``. The same unrolling, teacher-forced, measures a
head on held-out text: acceptance per draft position and the predicted τ.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from specdistill.losses import compute_distill_loss
from specdistill.measure import chained_figures
from specdistill.models import decoder_and_head
from specdistill.models.drafts import resolve_draft
from specdistill.models.eagle3 import Eagle3Head, draft_vocabulary, extend_vocabulary, lm_head_rows
from specdistill.models.eagle3_io import is_head_dir, load_head

log = logging.getLogger(__name__)


def parse_layers(text: str) -> list[int] | None:
    return [int(x) for x in text.split(",") if x.strip()] or None


def build_head(config, target, rows, eos_ids: list[int], checkpoint: Path | None) -> Eagle3Head:
    """The run's head: resumed from ``checkpoint``, else loaded from ``config.draft`` (a head
    directory, or ``default``: the shipped head), else new, with a draft vocabulary of the
    training answers' most frequent tokens; its LM head frozen with ``freeze_lm_head``."""
    head = _start_head(config, target, rows, eos_ids, checkpoint)
    head.lm_head.weight.requires_grad_(not config.freeze_lm_head)
    return head


def _start_head(config, target, rows, eos_ids: list[int], checkpoint: Path | None) -> Eagle3Head:
    """``build_head``'s head, every weight trainable."""
    if checkpoint is not None:
        log.info("resuming the head from %s", checkpoint)
        return load_head(checkpoint, target, torch.float32).train()
    answers = rows.input_ids[:, 1:][rows.loss_mask[:, :-1]]  # the tokens the head will learn to draft
    if config.draft:  # default: the shipped head, to fine-tune on the user's own answers
        where = Path(resolve_draft(config.draft))
        if not is_head_dir(where):
            raise ValueError(f"draft_type eagle3 starts from an EAGLE-3 head directory or default (the shipped "
                             f"head); {config.draft} is not one")
        head = load_head(where, target, torch.float32).train()
        added = extend_vocabulary(head, target, answers, config.head_vocab_size)
        covered = float(head.t2d[answers].float().mean())
        log.info("the head's draft vocabulary: %d ids (%d added), covering %.1f%% of the answer tokens",
                 len(head.d2t), added, 100 * covered)
        return head
    ids = draft_vocabulary(answers, target.config.vocab_size, config.head_vocab_size, eos_ids)
    return Eagle3Head.for_target(target, ids, parse_layers(config.head_layers), config.seed).float().train()


@torch.no_grad()
def blend_with_start(head: Eagle3Head, config, target) -> None:
    """Move a fine-tuned head's weights ``config.blend_start`` of the way back to its starting head's
    (``config.draft``; WiSE-FT, Wortsman et al. 2022): the start's LM head is taken over the head's
    vocabulary, the target's rows for the tokens the fine-tune added, as the fine-tune began."""
    start = load_head(Path(resolve_draft(config.draft)), target, torch.float32)
    weights = start.state_dict() | {"lm_head.weight": lm_head_rows(start, target, head.draft_ids)}
    for name, param in head.named_parameters():
        param.lerp_(weights[name].to(param), config.blend_start)


def target_pass(target, head: Eagle3Head, input_ids, draft_vocab_only: bool = False):
    """The target's features for the head [B, T, 3H] and its logits [B, T, V], or only
    those of the head's draft vocabulary [B, T, V_draft] (a sixth of the LM head's work)."""
    decoder, weight = decoder_and_head(target) or (None, None)
    if decoder is None:  # a head bias or logit scaling: the model's own logits
        out = target(input_ids=input_ids, output_hidden_states=True)
        logits = out.logits[..., head.draft_ids] if draft_vocab_only else out.logits
        return torch.cat([out.hidden_states[i] for i in head.layer_ids], -1), logits
    features, final = target_states(decoder, input_ids, head.layer_ids)
    return features, F.linear(final, weight[head.draft_ids] if draft_vocab_only else weight)


def target_states(decoder, input_ids, layer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's (decoder's) states a head trains on: its features, the hidden states entering
    ``layer_ids`` concatenated [B, T, len * H], and the final normed hidden state [B, T, H]."""
    out = decoder(input_ids=input_ids, output_hidden_states=True)
    return torch.cat([out.hidden_states[i] for i in layer_ids], -1), out.last_hidden_state


def shifted(x: torch.Tensor, j: int, fill) -> torch.Tensor:
    """x moved j positions to the left along dim 1, filled at the end: row[c] = x[c + j]."""
    pad = torch.full_like(x[:, :j], fill)
    return torch.cat([x[:, j:], pad], 1)


def head_step(target, head: Eagle3Head, batch, config, autocast) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss sum, acceptance sum of the first draft, counted positions) of one (micro-)batch.
    Each step's LM head and loss run only at the positions whose drafted token counts (prompt
    and padding positions never reach the [N, V] logits), and only the first draft's
    acceptance is measured: on a CPU the loss over the vocabulary is most of a step."""
    # Step j at position c learns the target's distribution at c + j where loss_mask[c + j] holds: the
    # teacher is needed at the masked positions alone (a prompt's are not), [M, V_draft] in their order.
    wanted = batch.loss_mask
    with torch.no_grad(), autocast:
        if batch.features is None:
            features, teacher = target_pass(target, head, batch.input_ids, draft_vocab_only=True)
            teacher = teacher[wanted]
        else:  # the target's states from the feature cache: only the teacher's small matmul is left
            features, final = batch.features
            _, weight = decoder_and_head(target)
            teacher = F.linear(final[wanted], weight[head.draft_ids])
    teacher_row = _rank(wanted)
    # Step j at position c drafts token c + j + 1: it counts where the prediction at c + j does. The
    # head runs only where some step counts, so a long prompt's positions cost their keys alone.
    counted = [shifted(batch.loss_mask, j, False) for j in range(1, config.ttt_steps + 1)]
    keep = torch.stack(counted).any(0)
    slot = _rank(keep)
    with autocast:
        states = head.ttt_states_at(features, batch.input_ids, config.ttt_steps, keep)
    loss = acceptance = count = None
    for j, (state, mask) in enumerate(zip(states, counted), 1):
        rows, cols = mask.nonzero(as_tuple=True)
        with autocast:
            logits = head.logits(state[slot[rows, cols]])
        out = compute_distill_loss(logits, teacher[teacher_row[rows, cols + j]], divergence=config.divergence,
                                   temperature=config.temperature, beta=config.beta, reduction="sum",
                                   return_acceptance=j == 1)
        step_loss = out[0] if j == 1 else out
        weighted = step_loss * config.ttt_decay ** (j - 1)
        loss = weighted if loss is None else loss + weighted
        if j == 1:
            acceptance, count = out[1].float().sum(), len(rows)
    return loss, acceptance, count


def _rank(mask: torch.Tensor) -> torch.Tensor:
    """Each marked position's index among the marked ones, in ``mask.nonzero()`` order (-1 elsewhere): where
    a row of a tensor gathered at ``mask`` lies."""
    rank = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    rank[mask] = torch.arange(int(mask.sum()), device=mask.device)
    return rank


@torch.no_grad()
def head_acceptance(target, head: Eagle3Head, rows, max_k: int = 6) -> dict:
    """Teacher-forced acceptance of a head on held-out rows (prompts and the target's answers).
    For a block starting after each answer position c, draft j's sampling acceptance
    Σ min(p, q) (p the target's full distribution, q the head's, 0 outside its vocabulary)
    and greedy acceptance (same argmax); chained over the block, they give α per draft
    position and the predicted tokens per target step τ(k) = 1 + Σ_{j<=k} E_c[Π_{i<=j} a_i]."""
    sampled, greedy, counts = torch.zeros(max_k), torch.zeros(max_k), torch.zeros(max_k)
    for ids, mask in zip(rows.input_ids, rows.loss_mask):
        ids, mask = ids[None].to(target.device), mask[None].to(target.device)
        features, logits = target_pass(target, head, ids)
        features = features.to(head.fc.weight.dtype)  # a bf16 target may feed an fp32 head in training
        p = torch.softmax(logits.float(), -1)[..., head.draft_ids]  # q is 0 elsewhere: min(p, q) = 0 there
        target_argmax = logits.argmax(-1)
        run_sampled, run_greedy = torch.ones(ids.shape[1]), torch.ones(ids.shape[1])
        for j, draft_logits in enumerate(head.ttt_logits(features, ids, max_k)):
            q = torch.softmax(draft_logits.float(), -1)
            fits = shifted(mask, j + 1, False)[0].cpu()  # the j-th draft's token is an answer token
            a_sampled = torch.minimum(shifted(p, j + 1, 0), q).sum(-1)[0].cpu()
            a_greedy = (head.draft_ids[draft_logits.argmax(-1)] == shifted(target_argmax, j + 1, -1))[0].cpu()
            run_sampled, run_greedy = run_sampled * a_sampled, run_greedy * a_greedy
            sampled[j] += run_sampled[fits].sum()
            greedy[j] += run_greedy[fits].sum()
            counts[j] += fits.sum()
    counts = counts.clamp(min=1)
    return {**_summary(sampled / counts, ""), **_summary(greedy / counts, "_greedy"),
            "positions": int(counts[0])}


def _summary(chained: torch.Tensor, suffix: str) -> dict:
    per_position, tau = chained_figures(chained.tolist())
    return {f"alpha{suffix}_per_position": per_position, f"predicted_tau{suffix}": tau,
            f"alpha{suffix}": round(float(chained[0]), 4)}


def check_head_config(config) -> None:
    """What an EAGLE-3 run cannot do, refused before any work."""
    if config.teacher_cache or config.onpolicy_fraction or config.lora_rank or config.alpha != 1:
        raise ValueError("draft_type eagle3 trains on the live target's features and distributions: leave "
                         "teacher_cache, onpolicy_fraction and lora_rank unset and alpha at 1")
    if config.ttt_steps < 1 or config.head_vocab_size < 2 or not 0 < config.ttt_decay <= 1:
        raise ValueError("ttt_steps must be >= 1, head_vocab_size >= 2 and ttt_decay in (0, 1]")
    if not 0 <= config.blend_start < 1 or (config.blend_start and not config.draft):
        raise ValueError(f"blend_start ({config.blend_start}) must be in [0, 1) and needs --draft: the head a "
                         "fine-tune starts from, which the final head is blended with")
