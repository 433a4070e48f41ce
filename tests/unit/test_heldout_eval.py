"""Held-out evaluation while training: the acceptance figures, their schedule, the best
checkpoint, the trackers and the model card."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from specdistill.data.batches import record_rows
from specdistill.measure import _acceptance_summary, expected_tokens_per_call, teacher_forced_acceptance
from specdistill.models import tiny_llama
from specdistill.training.config import TrainConfig
from specdistill.training.trainer import train


def test_constant_acceptance_gives_the_closed_form_tau():
    summary = _acceptance_summary([torch.full((200,), 0.6, dtype=torch.float64)], max_k=8)
    assert summary["per_position"] == pytest.approx([0.6] * 8)
    assert summary["predicted_tau"] == pytest.approx([expected_tokens_per_call(0.6, k) for k in range(1, 9)],
                                                     abs=1e-3)


def test_acceptance_chains_along_the_text():
    hits = torch.tensor([1, 1, 0, 1, 1, 1, 0], dtype=torch.float64)
    summary = _acceptance_summary([hits], max_k=3)
    # First draft accepted at 5 of 7 starts; the first two at 3 of 6; the first three at 1 of 5.
    assert summary["predicted_tau"] == pytest.approx([1 + 5 / 7, 1 + 5 / 7 + 3 / 6, 1 + 5 / 7 + 3 / 6 + 1 / 5],
                                                     abs=1e-3)
    assert summary["per_position"] == pytest.approx([5 / 7, (3 / 6) / (5 / 7), (1 / 5) / (3 / 6)], abs=1e-3)


def test_a_draft_equal_to_the_target_accepts_everything(tiny_models):
    target, draft = tiny_models
    rows = record_rows([([1, 2, 3], [4, 5, 6, 7]), ([8, 9], [10, 11])], pad_id=0)
    same = teacher_forced_acceptance(target, target, rows, max_k=4)
    assert same["alpha"] == pytest.approx(1.0) and same["alpha_greedy"] == 1.0 and same["positions"] == 6
    assert same["predicted_tau_greedy"] == [2, 3, 4, 5]
    other = teacher_forced_acceptance(target, draft, rows, max_k=4)
    assert 0 < other["alpha"] < 1


def test_training_evaluates_keeps_the_best_draft_and_reports_it(tmp_path, char_tokenizer):
    target = tiny_llama(vocab_size=64, num_layers=4, hidden_size=32, seed=1)
    pattern = torch.arange(40).repeat(40)[: 32 * 48]
    chunks = ((pattern + torch.randint(0, 2, pattern.shape)) % 40).view(48, 32)
    config = TrainConfig(target="unused", keep_layers="0,-1", output_dir=str(tmp_path / "run"), seq_len=32,
                         batch_size=4, steps=10, lr=3e-3, warmup_steps=2, save_every=5, bf16=False, eval_every=4,
                         eval_prompts=3, eval_decode=2)
    result = train(config, target=target, tokenizer=char_tokenizer, data=chunks, progress=False)
    evals = {h["step"]: h["eval"] for h in result["history"] if "eval" in h}
    assert sorted(evals) == [4, 8, 10]  # every 4 steps, and at the end
    for figures in evals.values():
        assert 0 <= figures["alpha"] <= 1 and len(figures["alpha_per_position"]) == 8
        assert figures["predicted_tau"][0] >= 1 and figures["measured_tau"] >= 1 and figures["tokens_per_s"] > 0
    run = tmp_path / "run"
    best = json.loads((run / "best" / "measured.json").read_text())
    assert best["eval_alpha"] == max(figures["alpha"] for figures in evals.values())
    AutoModelForCausalLM.from_pretrained(run / "best")
    card = (run / "final" / "README.md").read_text()
    assert f"`{evals[10]['alpha']}`" in card and "measured τ, decoding held-out prompts" in card
    assert list((run / "tensorboard").glob("**/events.out.tfevents.*"))
    # A resumed run keeps its evaluations (the best is chosen over all of them).
    resumed = train(TrainConfig(**{**config.__dict__, "steps": 12}), target=target, tokenizer=char_tokenizer,
                    data=chunks, progress=False)
    assert [h["step"] for h in resumed["history"] if "eval" in h] == [4, 8, 10, 12]
