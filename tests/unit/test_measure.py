import pytest

from specdistill.data.prompts import read_prompts
from specdistill.measure import expected_tokens_per_call, predicted_speedup


def test_speedup_formula():
    assert expected_tokens_per_call(0.5, 2) == pytest.approx(1.75)  # 1 + 0.5 + 0.25
    assert expected_tokens_per_call(1.0, 4) == 5
    assert expected_tokens_per_call(0.0, 4) == 1
    assert predicted_speedup(0.5, 2, 0.1) == pytest.approx(1.75 / 1.2)
    assert predicted_speedup(0.9, 0, 0.3) == 1.0
    assert predicted_speedup(0.5, 2, 0.1, verify_ratio=1.3) == pytest.approx(1.75 / 1.5)  # a tree's dearer pass


def test_prompt_files_are_jsonl_or_one_per_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a b"}\n\n{"prompt": "c", "id": 2}\n')
    (tmp_path / "p.txt").write_text("first prompt\n\n  second prompt \n")
    assert read_prompts(str(tmp_path / "p.jsonl")) == ["a b", "c"]
    assert read_prompts(str(tmp_path / "p.txt")) == ["first prompt", "second prompt"]
    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 needs a string field 'prompt' or a list 'messages'"):
        read_prompts(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError):
        read_prompts(str(tmp_path / "missing.txt"))
