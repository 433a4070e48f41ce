"""``specdistill generate-data``: (prompt, response) records from any OpenAI-compatible endpoint
(``teacher.endpoint``) or from a local teacher on our engine (``teacher.local``), appended as they arrive.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from specdistill.data.jsonl import read_rows
from specdistill.teacher.generate_config import GenerateConfig, load_prompts, next_turns

log = logging.getLogger(__name__)


def run_generate_data(config: GenerateConfig, progress: bool = True) -> dict:
    """Answers every prompt; a multi-turn prompt's next turn is asked once its answer is written
    (``next_turns``), one round per turn, so a rerun resumes any turn."""
    prompts = load_prompts(config)  # the prompt file's errors come before any connection or model load
    Path(config.out).with_suffix(".failures.jsonl").unlink(missing_ok=True)  # this run retries them
    start = time.perf_counter()
    counts, requests, already, turn = Counter(), 0, None, prompts
    while turn:
        writer, sent = _answer(config, turn, progress)
        already = writer.already if already is None else already
        counts.update(writer.counts)
        requests += sent
        turn = next_turns(turn, read_rows(writer.out))
    seconds = time.perf_counter() - start
    summary = {"prompts": len(prompts), "answered_before": already, **counts, "requests": requests,
               "seconds": round(seconds, 1), "requests_per_s": round(requests / max(seconds, 1e-9), 2),
               "out": str(writer.out)}
    if counts["failures"]:
        summary["failures_file"] = str(writer.failures)
    return summary


def _answer(config: GenerateConfig, prompts: list[dict], progress: bool):
    if config.endpoint:
        from specdistill.teacher.endpoint import generate_from_endpoint

        return generate_from_endpoint(config, prompts, progress)
    from specdistill.teacher.local import generate_locally

    return generate_locally(config, prompts, progress)
