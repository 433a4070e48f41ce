import pytest

from specdistill.eval import expected_tokens_per_call, predicted_speedup


def test_speedup_formula():
    assert expected_tokens_per_call(0.5, 2) == pytest.approx(1.75)  # 1 + 0.5 + 0.25
    assert expected_tokens_per_call(1.0, 4) == 5
    assert expected_tokens_per_call(0.0, 4) == 1
    assert predicted_speedup(0.5, 2, 0.1) == pytest.approx(1.75 / 1.2)
    assert predicted_speedup(0.9, 0, 0.3) == 1.0
