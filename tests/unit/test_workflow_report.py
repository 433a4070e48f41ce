"""The workflow report: the speedup it predicts, its tables and its plots."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from workflow_report import predicted_speedups, write_report  # noqa: E402


def _result(alpha: float, tokens_per_s: float) -> dict:
    tau = [1 + sum(alpha ** j for j in range(1, k + 1)) for k in range(1, 9)]
    forced = {"alpha": alpha, "alpha_per_position": [alpha] * 8, "predicted_tau": tau, "alpha_greedy": alpha,
              "alpha_greedy_per_position": [alpha] * 8, "predicted_tau_greedy": tau}
    run = {"alpha": alpha, "tau": tau[3], "tokens_per_s": tokens_per_s, "draft_step_seconds": 0.01, "mean_k": 4}
    return {"teacher_forced": forced, "decoded": {"greedy": run, "t0.7": run}, "hf_assisted_tokens_per_s": None}


def test_the_report_predicts_tau_over_cost_and_writes_tables_and_plots(tmp_path):
    alpha = 0.5
    speedups = predicted_speedups(_result(alpha, 1)["teacher_forced"], cost_ratio=0.1)
    assert speedups[3] == pytest.approx((1 + 0.5 + 0.25 + 0.125 + 0.0625) / (4 * 0.1 + 1))
    history = [{"step": s, "loss": 1 / s} | ({"eval": {"alpha": s / 10}} if s % 2 == 0 else {}) for s in range(1, 5)]
    summary = {"preset": "test", "training_tokens_per_draft": 10, "answer_tokens": 5, "k": 4, "draft_confidence": 0.4,
               "draft_vocab": 8192, "decode_prompts": 1, "max_new_tokens": 4, "heldout_prompts": 2,
               "hf_generate_tokens_per_s": {"fp32": 10.0, "bf16": 20.0}, "target_alone_tokens_per_s": 25.0,
               "target_step_seconds": 0.04, "drafts": {"n-gram": _result(0.2, 26.0), "(d) fkl": _result(0.5, 30.0),
                                                       "(g) head": _result(0.6, 40.0)},
               "histories": {"(d) fkl": history}, "pending": {"(h) later": "not run"}, "minutes": 0.1}
    summary["drafts"]["(g) head"]["decoded"]["greedy_tree"] = {"tree": "5,3,10", "alpha": 0.7, "tau": 3.4,
                                                              "tokens_per_s": 50.0}
    headline = write_report(summary, tmp_path)
    assert "(g) head drafting a tree 5,3,10 instead (greedy; `--draft-tree`): τ 3.40, 50.0 tok/s, 2.00×" in headline
    assert "| (d) fkl | 0.500 |" in headline and "30.0 | 1.20× | 1.50× |" in headline and "pending" in headline
    for name in ("results.json", "report.md", "acceptance_by_position.png", "speedup_vs_k.png",
                 "training_curves.png", "tokens_per_s.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_the_stage_clock_keeps_each_stage_across_reruns_and_gives_the_runtime_from_scratch(tmp_path):
    from workflow import StageClock, from_scratch_minutes

    recipes = {"(a) pruned only": None, "(d) fkl": {}, "(g) head": {"draft_type": "eagle3"}}
    first = StageClock(tmp_path / "runs" / "stage_minutes.json")  # its folder is made on first use
    for stage in ("target answers", "held-out answers"):
        with first.stage(stage):
            time.sleep(0.01)
    with pytest.raises(RuntimeError), first.stage("training (d) fkl"):
        raise RuntimeError("a failing stage still counts the time it took")
    assert set(first.minutes) == {"target answers", "held-out answers", "training (d) fkl"}
    assert from_scratch_minutes({"minutes": 2.0}, recipes, first) is None  # (g) has not trained yet
    rerun = StageClock(tmp_path / "runs" / "stage_minutes.json")  # reads what the first run kept
    assert rerun.minutes == first.minutes and rerun.this_run == 0
    with rerun.stage("training (g) head"):
        time.sleep(0.01)
    # every stage's minutes, plus this run's minutes that were not stage work (its measuring)
    expected = sum(rerun.minutes.values()) + 2.0 - rerun.this_run
    assert from_scratch_minutes({"minutes": 2.0}, recipes, rerun) == pytest.approx(expected, abs=0.06)
