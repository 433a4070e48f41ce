"""``specdistill adapt``: fine-tune the serving head on captured traffic, check it, swap it in.

    specdistill serve --capture runs/traffic                           # serving, and capturing
    specdistill adapt --data runs/traffic --swap-url http://127.0.0.1:8000

The loop docs/serving.md writes as three commands, in one, with a check before the swap:

1. hold back  about ``--holdout-share`` of the capture's finished requests (at most ``--holdout-max``), by a
              seeded hash of each prompt (``--seed``): they are never trained on
2. score      the starting head, teacher-forced on the target's answers to them (the traffic) and to the
              held-out chat prompts (what the head knew): τ predicted for a chain of 4 greedy drafts
3. fine-tune  ``train`` on the rest with the recipe's settings (each a flag), so that the whole adapt,
              target states and scoring included, keeps to ``--max-minutes`` (re-blends below add to it);
              each record's target states are read from the capture (``serve --capture-features``) or
              from ``--feature-cache`` (default ``output_dir/features``), else computed there once
              (``training.record_states``)
4. check      the adapted head, scored the same way: it is swapped in only if its τ on the traffic rises
              by more than ``--min-gain`` and its τ on chat falls by at most ``--max-chat-loss``; when only
              chat fails, the head is re-blended with more of the starting head (``--blend-ladder``: 0.5,
              then 0.7 of its weights, WiSE-FT) and checked again, ~30 s each, until one passes; when
              none does, the head as trained is kept back
5. swap       ``POST {swap_url}/admin/draft {"draft": output_dir/final}`` (with ``--api-key``)

Like ``train``, a run resumes from ``output_dir/checkpoint``: give each cycle its own ``--output-dir``, and
the next cycle ``--draft`` the head now serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import torch

from specdistill.data.batches import pack_records, record_rows
from specdistill.data.captured import is_capture_dir, read_capture
from specdistill.data.dataset_records import dataset_records
from specdistill.models import load_target
from specdistill.models.drafts import load_draft
from specdistill.models.eagle3 import save_head
from specdistill.models.loading import native_bf16, target_identity
from specdistill.options import nested, option
from specdistill.training.config import TrainConfig
from specdistill.training.eagle3_head import blend_with_start, head_acceptance
from specdistill.training.heldout_eval import HeldOutEval
from specdistill.training.model_card import write_model_card
from specdistill.training.record_states import record_state_rows
from specdistill.training.sources import pad_id, with_replay
from specdistill.training.step import autocast
from specdistill.training.trainer import pick_device, train

log = logging.getLogger(__name__)
# The shipped head's own training records, replayed so that it keeps chat (a source checkout has them).
SHIPPED_REPLAY = Path(__file__).resolve().parents[1] / "bench/data/default-draft-train-v4.jsonl.gz"
SCORED_K = 4  # the chain whose predicted τ the check compares
MIN_RECORDS = 10  # finished requests a cycle needs: some to hold back, the rest to train on
SWAP_TIMEOUT = 660  # seconds: the server's own swap timeout is 600


@dataclass
class AdaptConfig:
    """Fine-tune the serving EAGLE-3 head on captured traffic (`serve --capture`), check it on held-back
    requests and on chat, and swap it into a running server: every training flag, with the adapt's defaults."""

    train: TrainConfig = nested(TrainConfig, draft_type="eagle3", draft="default", data="", replay="auto",
                                replay_share=0.2, seq_len=1024, batch_size=4, steps=100000, max_minutes=15.0,
                                lr=1e-3, warmup_steps=5, ttt_steps=3, blend_start=0.3, head_vocab_size=13312,
                                save_every=25, report_to="none", output_dir="runs/adapt")
    holdout_share: float = option(0.1, "the share of the captured requests held back from training to check the "
                                       "adapted head on")
    holdout_max: int = option(100, "at most this many held-back requests (scoring a head on 100 takes ~30 s on "
                                   "2 CPU cores)")
    min_gain: float = option(0.02, "swap only if the head's predicted tau (chain of 4) on the held-back requests "
                                   "rises by more than this")
    max_chat_loss: float = option(0.15, "and its predicted tau on the held-out chat prompts falls by at most this")
    swap_url: str = option("", "the server to swap the adapted head into (http://host:port); empty: only train "
                               "and check, and print how to swap")
    api_key: str = option("", "the server's --api-key, if it has one")
    every: int = option(0, "keep adapting: one cycle each time the capture holds this many more finished requests, "
                           "from the head now serving, in output_dir/cycle-K (needs --swap-url; 0: one cycle now)")
    cycles: int = option(0, "with --every: stop after this many cycles (0: until interrupted)")
    blend_ladder: str = option("0.5,0.7", "when chat loses more than --max-chat-loss, re-blend the head with these "
                                          "shares of the starting head in turn, checking each (empty: none)")

    def ladder(self) -> list[float]:
        """The re-blend shares above ``--blend-start``, ascending (those at or below it are already passed)."""
        try:
            shares = [float(x) for x in self.blend_ladder.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--blend-ladder {self.blend_ladder!r} must be shares like 0.5,0.7") from None
        if any(not 0 < x < 1 for x in shares):
            raise ValueError(f"--blend-ladder {self.blend_ladder!r}: each share must be in (0, 1)")
        return sorted({x for x in shares if x > self.train.blend_start})


def run_adapt(config: AdaptConfig, target=None, tokenizer=None, progress: bool = True, chat=None) -> dict:
    """Hold back, score, fine-tune, check, swap (see the module doc); the figures and the decision. ``chat``: the
    chat set's rows (default: the target's answers to the held-out chat prompts, made in ``output_dir``)."""
    began = time.monotonic()
    train_config = _checked(config)
    if config.swap_url:
        _reachable(config.swap_url)  # before the minutes of training, not after
    records = _records(train_config)
    if target is None:
        target, tokenizer = load_teacher(train_config)
    target = target.to(pick_device(train_config.device)).eval()
    held_back, kept = split_held_back(records, config.holdout_share, config.holdout_max, train_config.seed)
    pad = pad_id(tokenizer)
    if chat is None:
        chat = chat_rows(train_config, target, tokenizer, progress)
    sets = {"traffic": record_rows(held_back, pad), "chat": chat}
    scoring = time.monotonic()
    start = load_draft(train_config.draft, target, target.dtype)[0]
    before = score(target, start, sets)
    scoring = time.monotonic() - scoring
    log.info("the starting head: %s", before)
    train_records = with_replay(kept, train_config, tokenizer) if train_config.replay else kept
    states_began = time.monotonic()
    rows = record_state_rows(pack_records(train_records, train_config.seq_len, pad), train_records, target,
                             target_identity(train_config.target), start.layer_ids,
                             Path(train_config.feature_cache).expanduser(),
                             [Path(train_config.data).expanduser() / "states"],
                             lambda: autocast(target.device, train_config.bf16), progress=progress)
    states = rows.counts | {"minutes": round((time.monotonic() - states_began) / 60, 2)}
    minutes = train_config.max_minutes - (time.monotonic() - began + scoring) / 60  # the check's scoring kept
    # The rows carry their target states: train must not build a feature cache over them.
    trained = fine_tune(replace(train_config, feature_cache=""), target, tokenizer, rows, minutes, progress)
    after, swap, reason, tried = check(config, train_config, target, trained, before, sets)
    blend = tried[-1]["blend"] if swap else train_config.blend_start  # the head in draft_dir
    result = {"draft": trained["draft_dir"], "steps": trained["steps"], "held_back": len(held_back),
              "trained_on": len(kept), "target_states": states, "before": before, "after": after, "swap": swap,
              "reason": reason, "blend": blend, "tried": tried, "minutes": round((time.monotonic() - began) / 60, 2)}
    if swap and config.swap_url:
        result["server"] = swap_in(config.swap_url, config.api_key, trained["draft_dir"])
    return result


def chat_rows(config: TrainConfig, target, tokenizer, progress: bool = True):
    """The chat set: the target's answers to train's own held-out chat prompts (``HeldOutEval``), as rows."""
    return HeldOutEval(config, target, tokenizer, pad_id(tokenizer), progress).rows


def load_teacher(config: TrainConfig):
    """(target, tokenizer) in the dtype ``train`` makes its teacher (bf16 where the CPU has the instructions),
    so that a head is scored before and after in the same precision, as it serves."""
    dtype = torch.bfloat16 if config.bf16 and native_bf16() else torch.float32
    return load_target(config.target, dtype=dtype)


def _checked(config: AdaptConfig, capture_needed: bool = True) -> TrainConfig:
    """The training config, its replay resolved; errors before any model loads (the capture's only when
    ``capture_needed``: ``--every`` waits for it)."""
    train_config = config.train
    if train_config.draft_type != "eagle3" or not train_config.draft:
        raise ValueError("adapt fine-tunes the serving EAGLE-3 head: --draft-type eagle3 and --draft default (or "
                         "the folder of the head the server runs)")
    if capture_needed and not is_capture_dir(train_config.data):
        raise ValueError(f"--data {train_config.data!r} is not a capture folder: give the folder of "
                         "`specdistill serve --capture DIR`")
    if not 0 < config.holdout_share < 1 or config.holdout_max < 1:
        raise ValueError("holdout_share must be in (0, 1) and holdout_max >= 1")
    config.ladder()
    if train_config.replay == "auto":  # the shipped head's records when they are here, else none
        shipped = train_config.draft == "default" and SHIPPED_REPLAY.exists()
        if train_config.draft == "default" and not shipped:
            log.warning("the shipped head's training records (%s) come with a source checkout only: adapting "
                        "without replay, so the head may forget more of other traffic", SHIPPED_REPLAY.name)
        train_config = replace(train_config, replay=str(SHIPPED_REPLAY) if shipped else "")
    if not train_config.feature_cache:  # each record's target states, made once: steps 2-3x cheaper
        train_config = replace(train_config, feature_cache=str(Path(train_config.output_dir) / "features"))
    return train_config


def _records(config: TrainConfig) -> list[tuple[list[int], list[int]]]:
    dataset = read_capture(config.data, config.target)
    if len(dataset) < MIN_RECORDS:
        raise ValueError(f"{config.data} holds {len(dataset)} finished requests: adapt needs at least {MIN_RECORDS} "
                         "(some to hold back, the rest to train on); capture longer")
    return dataset_records(dataset, "ids", tokenizer=None)  # token ids: no tokenizer needed


def split_held_back(records: list, share: float, most: int, seed: int) -> tuple[list, list]:
    """(held back, kept), in order: the records whose prompt's seeded hash falls in the lowest ``share`` of its
    range (at most the ``most`` lowest; at least the lowest one): about ``share`` of them, not exactly. Whether
    a prompt is held back depends on its own hash (and, past ``most``, on the lower ones), so every answer to a
    prompt asked twice falls on one side, and as the capture grows (``adapt --every``) a request once trained
    on is never held back later: new requests can only displace held-back ones."""
    digests = [int.from_bytes(hashlib.sha256(f"{seed}:{prompt}".encode()).digest()[:8], "big") / 2**64
               for prompt, _ in records]
    held = set(sorted({d for d in digests if d < share})[:most] or [min(digests)])
    return [r for r, d in zip(records, digests) if d in held], [r for r, d in zip(records, digests) if d not in held]


def score(target, head, sets: dict) -> dict:
    """Per set, the head's predicted τ for a chain of ``SCORED_K`` greedy drafts (and sampled, T = 1),
    teacher-forced along the target's answers."""
    figures = {name: head_acceptance(target, head, rows, max_k=SCORED_K) for name, rows in sets.items()}
    return {name: {"tau": round(f["predicted_tau_greedy"][-1], 3), "tau_sampled": round(f["predicted_tau"][-1], 3),
                   "positions": f["positions"]} for name, f in figures.items()}


def check(config: AdaptConfig, train_config: TrainConfig, target, trained: dict, before: dict, sets: dict):
    """(the scores of the head in ``trained["draft_dir"]``, swap, reason, each blend tried with its scores): the
    adapted head as trained, then, while its traffic gain holds and chat alone fails, re-blended with more of
    the starting head (``config.ladder()``), each saved over ``trained["draft_dir"]`` and scored as it would
    serve. When no blend passes, the head as trained goes back in the folder, kept back."""
    head, share, tried = trained["draft"], train_config.blend_start, []
    as_trained = {name: value.clone() for name, value in head.state_dict().items()}
    for rung in [share, *config.ladder()]:
        if rung != share:
            reblend(head, train_config, target, share, rung, trained)
            share = rung
        scores = score(target, load_draft(trained["draft_dir"], target, target.dtype)[0], sets)
        swap, reason = decide(before, scores, config)
        tried.append({"blend": share, "traffic": scores["traffic"]["tau"], "chat": scores["chat"]["tau"]})
        log.info("blended %.2f with the starting head: %s", share, reason)
        if swap:
            return scores, True, reason, tried
        if len(tried) == 1:
            first = (scores, reason)  # the head as trained
        if scores["traffic"]["tau"] - before["traffic"]["tau"] <= config.min_gain:
            break  # more of the start cannot raise the traffic's gain
    if share != train_config.blend_start:
        head.load_state_dict(as_trained)
        save_blended(head, train_config, target, train_config.blend_start, trained)
    scores, reason = first
    if len(tried) > 1:
        reason += f" (re-blended {', '.join(str(t['blend']) for t in tried[1:])}: none passed)"
    return scores, False, reason, tried


def reblend(head, config: TrainConfig, target, share: float, rung: float, trained: dict) -> None:
    """Move ``head``, blended ``share`` with its starting head, to ``rung``, and save it (``save_blended``)."""
    # (1 - t) * ((1 - share) w + share s) + t s has (1 - rung) w when t = (rung - share) / (1 - share)
    blend_with_start(head, replace(config, blend_start=(rung - share) / (1 - share)), target)
    save_blended(head, config, target, rung, trained)


def save_blended(head, config: TrainConfig, target, share: float, trained: dict) -> None:
    """Save ``head``, blended ``share`` with its starting head, over ``trained["draft_dir"]``: its weights, and
    its card with the settings train ran with but that share; the folder's retrieval corpus stays."""
    save_head(head, trained["draft_dir"])
    ran = TrainConfig(**json.loads((Path(config.output_dir) / "train_config.json").read_text()))  # as train ran
    write_model_card(Path(trained["draft_dir"]), replace(ran, blend_start=share), trained["history"],
                     getattr(target.config, "name_or_path", config.target))


def decide(before: dict, after: dict, config: AdaptConfig) -> tuple[bool, str]:
    """Swap when the traffic gained more than ``min_gain`` and chat lost at most ``max_chat_loss``."""
    gain = after["traffic"]["tau"] - before["traffic"]["tau"]
    chat = after["chat"]["tau"] - before["chat"]["tau"]
    moved = f"predicted tau on the held-back traffic {gain:+.3f}, on chat {chat:+.3f}"
    if gain <= config.min_gain:
        return False, f"{moved}: the traffic gained no more than --min-gain {config.min_gain}; capture more traffic"
    if -chat > config.max_chat_loss:
        return False, (f"{moved}: chat lost more than --max-chat-loss {config.max_chat_loss}; keep more of the "
                       "starting head (higher --blend-ladder shares) or replay more (--replay-share 0.3)")
    return True, moved


def fine_tune(config: TrainConfig, target, tokenizer, rows, minutes: float, progress: bool) -> dict:
    """``train`` on ``rows`` within ``minutes`` in all (none: ``config.steps``): a first run builds the feature
    cache and takes one step, and the run resumes with what is left of the time."""
    if config.max_minutes <= 0:
        return train(config, target, tokenizer, rows, progress)
    began = time.monotonic()
    train(replace(config, steps=1, max_minutes=0.0), target, tokenizer, rows, progress)
    left = minutes - (time.monotonic() - began) / 60
    return train(replace(config, max_minutes=max(left, 0.1)), target, tokenizer, rows, progress)


def _reachable(url: str) -> None:
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=10).raise_for_status()
    except httpx.HTTPError as err:
        raise ValueError(f"the server at {url} does not answer /health ({err}); start `specdistill serve` first, "
                         "or leave --swap-url empty to adapt without swapping") from err


def swap_in(url: str, api_key: str, draft_dir: str) -> dict:
    """``POST /admin/draft``; the server's answer, or ValueError naming the head to swap by hand."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"draft": str(Path(draft_dir).resolve())}
    try:
        response = httpx.post(url.rstrip("/") + "/admin/draft", json=body, headers=headers, timeout=SWAP_TIMEOUT)
    except httpx.HTTPError as err:
        raise ValueError(f"the swap to {body['draft']} failed ({err}); the head is saved: POST it to "
                         f"{url}/admin/draft when the server is back") from err
    if response.status_code != 200:
        raise ValueError(f"the server at {url} refused the swap (HTTP {response.status_code}: {response.text}); "
                         f"the old draft serves on, and the adapted head is in {body['draft']}")
    return response.json()


def report(result: dict, config: AdaptConfig) -> dict:
    """Say what a cycle did, and print its JSON line."""
    verdict = "swapped in" if result.get("server") else "ready" if result["swap"] else "kept back"
    print(f"adapted {result['steps']} steps on {result['trained_on']} requests ({result['held_back']} held back), "
          f"{result['minutes']} min: {verdict} (blended {result['blend']} with the starting head); {result['reason']}")
    if result["swap"] and not config.swap_url:
        print(f"swap it in: curl -s localhost:8000/admin/draft -H 'Content-Type: application/json' "
              f"-d '{json.dumps({'draft': str(Path(result['draft']).resolve())})}'")
    print(json.dumps(result), flush=True)
    return result
