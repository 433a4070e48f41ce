import copy

import pytest

from specdistill.data.prompts import Conversation, by_category, read_conversations, read_prompts
from specdistill.measure import (
    answer_turns,
    expected_tokens_per_call,
    measure_speculative,
    measure_target,
    predicted_speedup,
)


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
    with pytest.raises(ValueError, match="bad.jsonl:1 needs a string field 'prompt', a list 'messages' or"):
        read_prompts(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError):
        read_prompts(str(tmp_path / "missing.txt"))
    (tmp_path / "turns.jsonl").write_text('{"turns": ["first", "second"]}\n{"turns": []}\n')
    with pytest.raises(ValueError, match="turns.jsonl:2: 'turns' must be a non-empty list"):
        read_prompts(str(tmp_path / "turns.jsonl"))
    (tmp_path / "turns.jsonl").write_text('{"turns": ["first", "second"]}\n')
    assert read_prompts(str(tmp_path / "turns.jsonl")) == ["first"]  # a text per record: its first turn


def test_prompt_files_give_conversations_with_turns_context_and_category(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a", "category": "qa"}\n'
        '{"turns": ["write a poem", "now shorten it"], "category": "chat"}\n'
        '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "b"}]}\n'
        '{"prompt": "c", "category": "qa"}\n')
    conversations = read_conversations(str(path))
    assert conversations[0] == Conversation(("a",), (), "qa")
    assert conversations[1].turns == ("write a poem", "now shorten it")
    assert conversations[2] == Conversation(("b",), ({"role": "system", "content": "be brief"},), "")
    groups = by_category(conversations)
    assert list(groups) == ["qa", "chat", "uncategorized"]
    assert [c.turns for c in groups["qa"]] == [("a",), ("c",)]
    for bad, message in [('{"turns": []}', "non-empty list"), ('{"turns": ["a", 3]}', "non-empty list"),
                         ('{"prompt": "a", "category": 3}', "'category' must be a string"),
                         ('{"messages": [{"role": "assistant", "content": "a"}]}', "must be the user's"),
                         ('{"text": "a"}', "'prompt', a list 'messages' or a list 'turns'")]:
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message):
            read_conversations(str(path))


@pytest.fixture()
def chat_tokenizer(char_tokenizer):
    tokenizer = copy.deepcopy(char_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    return tokenizer


def test_a_second_turn_is_asked_after_the_models_own_first_answer(chat_tokenizer):
    asked = []

    def answer(ids):
        asked.append(ids[0].tolist())
        return chat_tokenizer("reply")["input_ids"] if len(asked) == 1 else chat_tokenizer("ok")["input_ids"]

    outputs = answer_turns(chat_tokenizer, Conversation(("first", "second")), answer)
    assert [chat_tokenizer.decode(out).replace(" ", "") for out in outputs] == ["reply", "ok"]
    second = chat_tokenizer.decode(asked[1]).replace(" ", "")
    assert second.startswith("first\nreply\nsecond")  # the model's answer sits between the two turns


def test_every_turn_is_measured_and_speculative_equals_generate(tiny_models, chat_tokenizer):
    target, draft = tiny_models
    conversations = [Conversation(("ab", "cd")), Conversation(("x",))]
    plain = measure_target(target, chat_tokenizer, conversations, max_new_tokens=6, progress=False)
    spec = measure_speculative(target, draft, chat_tokenizer, conversations, num_draft_tokens=3, max_new_tokens=6,
                               progress=False)
    assert len(plain["outputs"]) == 3 and plain["new_tokens"] == sum(map(len, plain["outputs"]))
    assert spec["outputs"] == plain["outputs"]  # lossless, turn by turn
