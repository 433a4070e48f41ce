"""``specdistill adapt --every N``: the server learns from what it serves, cycle after cycle.

    specdistill serve --capture runs/traffic
    specdistill adapt --data runs/traffic --swap-url http://127.0.0.1:8000 --every 1000 --output-dir runs/adapt

Each time the capture holds ``--every`` more finished requests than at the last cycle, one cycle of
``specdistill adapt`` runs in ``output_dir/cycle-K``: it fine-tunes the head now serving on everything
captured so far, checks it and swaps it in. Three things keep the cycles honest:

- the held-back requests are chosen by a seeded hash (``split_held_back``), so a request a cycle trained
  on is never held back by a later one;
- chat's loss is counted from the first head, along one chat set made once: a cycle may lose only what
  ``--max-chat-loss`` has left, so losses that each pass the check cannot add up;
- the shipped head's records stay the replay in every cycle (``--replay auto`` resolved once).

Every cycle reads the records' target states from one folder (``--feature-cache``, default
``output_dir/features``; ``training.record_states``), so the target runs over each record once in the
whole loop (a replayed record's when it first joins a cycle: the replay is a share of a growing capture),
and never over those the server captured with ``--capture-features``. The folder grows with the traffic
(~4.6 KB a token for SmolLM2-135M in bf16) and reveals what it held: delete it when the loop has ended.

A cycle that fails (the server down at the swap, say) is logged and the loop goes on with the head it had.
``--cycles`` stops after that many (0: until interrupted).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from specdistill.adapt import MIN_RECORDS, AdaptConfig, _checked, _reachable, chat_rows, load_teacher, report, run_adapt
from specdistill.data.captured import read_capture
from specdistill.training.trainer import pick_device

log = logging.getLogger(__name__)


def adapt_command(config: AdaptConfig) -> dict | list[dict]:
    """``specdistill adapt``: one cycle now, or ``--every``'s; each says what happened and prints one JSON line."""
    if config.every:
        return adapt_every(config, on_cycle=lambda result: report(result, config))
    return report(run_adapt(config), config)


def adapt_every(config: AdaptConfig, poll_seconds: float = 60.0, target=None, tokenizer=None,
                progress: bool = True, on_cycle=None) -> list[dict]:
    """Run a cycle per ``config.every`` new captured requests (see the module doc); each cycle's result,
    also passed to ``on_cycle`` as it comes."""
    if config.every < 1 or not config.swap_url:
        raise ValueError("adapt --every N needs N >= 1 and --swap-url: each cycle starts from the head the server "
                         "runs, so the adapted one must be swapped in")
    if any(Path(config.train.output_dir).glob("cycle-*")):
        raise ValueError(f"{config.train.output_dir} holds the cycles of an earlier loop: give this one a new "
                         "--output-dir, and --draft the head the server runs now")
    first = _checked(config, capture_needed=False)  # the replay resolved for the first head, kept for every cycle
    if not Path(first.data).expanduser().is_dir():
        raise ValueError(f"--data {first.data!r} is not a folder: start `specdistill serve --capture {first.data}` "
                         "first (it makes the folder)")
    _reachable(config.swap_url)
    if target is None:
        target, tokenizer = load_teacher(first)
    target = target.to(pick_device(first.device)).eval()
    # One chat set for every cycle, so that the chat budget compares scores along the same tokens: made anew in
    # each cycle, 6 of 12 bf16 answers came out otherwise after a cycle had trained (session 29).
    chat = None
    base, draft, seen, results, number = Path(first.output_dir), first.draft, 0, [], 0
    while not config.cycles or number < config.cycles:
        seen = _wait_for(first.data, first.target, max(seen + config.every, MIN_RECORDS), poll_seconds)
        number += 1
        cycle = base / f"cycle-{number}"
        train = replace(first, draft=draft, output_dir=str(cycle))  # first.feature_cache: one folder for all
        try:
            chat = chat_rows(first, target, tokenizer, progress) if chat is None else chat
            result = run_adapt(replace(config, train=train, max_chat_loss=chat_budget(config, results)), target,
                               tokenizer, progress, chat) | {"cycle": number, "captured": seen}
        except Exception:  # a loop that serves for days outlives one bad cycle
            log.exception("cycle %d failed; the server keeps the head it runs (%s)", number, draft)
            continue
        if result.get("server"):
            draft = result["draft"]  # the next cycle starts from the head now serving
        results.append(result)
        if on_cycle is not None:
            on_cycle(result)
    return results


def chat_budget(config: AdaptConfig, results: list[dict]) -> float:
    """What the next cycle may lose on chat: ``max_chat_loss`` less what the swapped heads lost since the first."""
    swapped = [r for r in results if r.get("server")]
    if not swapped:
        return config.max_chat_loss
    lost = results[0]["before"]["chat"]["tau"] - swapped[-1]["after"]["chat"]["tau"]
    return round(config.max_chat_loss - max(lost, 0.0), 4)


def _wait_for(capture: str, target: str, count: int, poll_seconds: float) -> int:
    """Wait until the capture holds at least ``count`` finished requests; how many it holds."""
    say = log.warning  # once at the level the command shows, then quietly
    while True:
        try:
            held = len(read_capture(capture, target))
        except ValueError as err:  # nothing finished yet
            if "no finished request" not in str(err):
                raise
            held = 0
        if held >= count:
            return held
        say("the capture holds %d finished requests; the next cycle starts at %d", held, count)
        say = log.info
        time.sleep(poll_seconds)
