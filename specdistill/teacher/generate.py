"""``specdistill generate-data``: (prompt, response) records from any OpenAI-compatible endpoint
(``teacher.endpoint``) or from a local teacher on our engine (``teacher.local``), appended as they arrive.
"""

from __future__ import annotations

import logging
import time

from specdistill.teacher.generate_config import GenerateConfig, load_prompts

log = logging.getLogger(__name__)


def run_generate_data(config: GenerateConfig, progress: bool = True) -> dict:
    prompts = load_prompts(config)  # the prompt file's errors come before any connection or model load
    start = time.perf_counter()
    if config.endpoint:
        from specdistill.teacher.endpoint import generate_from_endpoint

        writer, requests = generate_from_endpoint(config, prompts, progress)
    else:
        from specdistill.teacher.local import generate_locally

        writer, requests = generate_locally(config, prompts, progress)
    seconds = time.perf_counter() - start
    summary = {"prompts": len(prompts), "answered_before": writer.already, **writer.counts, "requests": requests,
               "seconds": round(seconds, 1), "requests_per_s": round(requests / max(seconds, 1e-9), 2),
               "out": str(writer.out)}
    if writer.counts["failures"]:
        summary["failures_file"] = str(writer.failures)
    return summary
