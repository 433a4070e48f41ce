import pytest

from specdistill.bench import MeasureConfig, print_report
from specdistill.measure import predicted_speedup


def _rows(draft_tree):
    outputs = [[1, 2, 3]]
    return {
        "target alone (HF generate, fp32)": {"tokens_per_s": 20.0, "outputs": outputs},
        "target alone (HF generate, bf16)": {"tokens_per_s": 25.0, "outputs": outputs},
        "target alone (our engine)": {"tokens_per_s": 30.0, "verify_seconds": 0.030, "outputs": outputs},
        "draft": {"alpha": 0.75, "tau": 3.4, "tokens_per_s": 55.0, "mean_k": 4.8, "draft_step_seconds": 0.002,
                  "verify_seconds": 0.036, "per_position_acceptance": [0.8], "draft_tree": draft_tree,
                  "outputs": outputs},
    }


@pytest.mark.parametrize("draft_tree, verify_ratio", [(None, 1.0), ("5,3,10", 1.2)])
def test_the_demo_prices_a_trees_verification_as_measured(draft_tree, verify_ratio, capsys):
    summary = print_report(_rows(draft_tree), "draft", MeasureConfig(), {})
    assert summary["verify_ratio"] == pytest.approx(verify_ratio)  # the tree's pass over the one-token step
    assert summary["predicted_speedup_over_our_target"] == pytest.approx(
        predicted_speedup(0.75, 4.8, 0.002 * 30.0, verify_ratio), abs=1e-3)
    assert summary["speedup_vs_hf_generate"] == pytest.approx(55 / 25, abs=1e-3)  # the faster HF run
    assert summary["greedy_outputs_equal_target"]["draft"]
    assert f"verification v = {verify_ratio:.2f}" in capsys.readouterr().out


def test_bench_takes_each_prompt_with_every_row_in_turns_and_keeps_greedy_exact(tmp_path, char_tokenizer, monkeypatch):
    import json

    from specdistill import bench
    from specdistill.bench import BenchConfig, run_bench
    from specdistill.models import tiny_llama
    folder = tmp_path / "target"
    tiny_llama(vocab_size=len(char_tokenizer), num_layers=2, hidden_size=32).save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    prompts = tmp_path / "p.jsonl"
    records = [{"prompt": f"def f{c}(x): return x", "category": cat} for cat in ("code", "chat") for c in "ab"]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    calls = []  # the rows in the order they ran, each still the real measurement

    def spy(name, measure):
        def run(*args, **kwargs):
            calls.append(name)
            return measure(*args, **kwargs)
        return run

    monkeypatch.setattr(bench, "measure_target", spy("hf", bench.measure_target))
    monkeypatch.setattr(bench, "measure_speculative", spy("engine", bench.measure_speculative))
    summary = run_bench(BenchConfig(draft="prompt-lookup", target=str(folder), by_category=True, measure=MeasureConfig(
        prompts=str(prompts), num_prompts=2, max_new_tokens=6, num_draft_tokens="3")))
    assert set(summary["by_category"]) == {"code", "chat"}
    for row in summary["by_category"].values():
        assert row["num_prompts"] == 2 and all(row["greedy_outputs_equal_target"].values())
    # Per prompt every row once (2 HF, 2 engine), the first row rotating: hf hf e e, then hf e e hf.
    assert calls[:8] == ["hf", "hf", "engine", "engine", "hf", "engine", "engine", "hf"] and len(calls) == 16
