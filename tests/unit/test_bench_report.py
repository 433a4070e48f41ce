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
