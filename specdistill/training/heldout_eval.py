"""Acceptance-aware evaluation while a draft trains, on held-out prompts it never trains on.

Every ``eval_every`` steps (and at the end) the main process measures the draft on
the target's greedy answers to the held-out chat prompts: α per draft position,
teacher-forced, and the predicted tokens per target step τ for k = 1..8 (see
``teacher_forced_acceptance``); with ``eval_decode N`` it also decodes N of the
prompts with the ``SpeculativeGenerator``: measured τ and tokens/s. The figures go
to ``history.json``, the trackers (TensorBoard) and the progress bar, and the
draft with the best α so far is exported to ``output_dir/best``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from specdistill.data.batches import record_rows
from specdistill.data.prompts import HELDOUT_PROMPTS
from specdistill.measure import measure_speculative, teacher_forced_acceptance
from specdistill.models.eagle3 import Eagle3Head
from specdistill.teacher.target_answers import answer_prompts
from specdistill.training.eagle3_head import head_acceptance
from specdistill.training.lora import plain_model

log = logging.getLogger(__name__)
EVAL_DRAFT_TOKENS = 4  # k of the measured decode


class HeldOutEval:
    def __init__(self, config, target, tokenizer, pad_id: int, progress: bool):
        if tokenizer is None:
            raise ValueError("eval_every needs the target's tokenizer to render the held-out chat prompts")
        self.config, self.target, self.tokenizer = config, target, tokenizer
        self.prompts = HELDOUT_PROMPTS[: config.eval_prompts]
        records = answer_prompts(target, tokenizer, self.prompts, Path(config.output_dir) / "eval_answers.jsonl",
                                 max_new_tokens=128, progress=progress)
        self.rows = record_rows(records, pad_id)

    def due(self, step: int, done: bool) -> bool:
        return self.config.eval_every > 0 and (step % self.config.eval_every == 0 or done)

    def run(self, draft) -> dict:
        """The figures of one evaluation (the draft is left as it was)."""
        was_training = draft.training
        plain = plain_model(draft).eval()
        try:
            if isinstance(plain, Eagle3Head):
                figures = head_acceptance(self.target, plain, self.rows)
            else:
                figures = teacher_forced_acceptance(self.target, plain, self.rows)
            if self.config.eval_decode:
                decoded = measure_speculative(self.target, plain, self.tokenizer,
                                              self.prompts[: self.config.eval_decode],
                                              num_draft_tokens=EVAL_DRAFT_TOKENS, max_new_tokens=64, progress=False)
                figures |= {"measured_tau": round(decoded["tau"], 3), "measured_alpha": round(decoded["alpha"], 4),
                            "tokens_per_s": round(decoded["tokens_per_s"], 2), "decode_k": EVAL_DRAFT_TOKENS}
        finally:
            draft.train(was_training)
        return figures


def best_alpha(history: list[dict]) -> float:
    """The best held-out α a run has logged so far (-1 when none)."""
    return max((h["eval"]["alpha"] for h in history if "eval" in h), default=-1.0)


def last_eval(history: list[dict]) -> dict | None:
    """The figures of a run's latest evaluation (None before the first)."""
    return next((h["eval"] for h in reversed(history) if "eval" in h), None)


def card_figures(figures: dict, prompts: int) -> dict:
    """An evaluation's figures under the model card's names."""
    card = {"source": f"specdistill train eval, {prompts} held-out prompts", "eval_alpha": figures["alpha"],
            "eval_alpha_greedy": figures["alpha_greedy"], "eval_predicted_tau": figures["predicted_tau"]}
    if "measured_tau" in figures:
        card |= {"eval_measured_tau": figures["measured_tau"], "eval_tokens_per_s": figures["tokens_per_s"]}
    return card
