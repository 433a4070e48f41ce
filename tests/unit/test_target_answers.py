"""Target-generated training text: real sampling from a tiny target, cached and resumable."""

import pytest

from specdistill.data.builtin_prompts import training_prompts
from specdistill.data.prompts import HELDOUT_PROMPTS
from specdistill.models import tiny_llama
from specdistill.teacher.target_answers import generate_answers, load_records
from specdistill.training.config import TrainConfig


def test_training_prompts_are_many_fixed_and_never_held_out():
    prompts = training_prompts()
    assert len(prompts) > 300 and len(set(prompts)) == len(prompts)
    assert not set(prompts) & set(HELDOUT_PROMPTS)
    assert prompts == training_prompts() != training_prompts(seed=1)


def test_answers_are_sampled_cached_and_resumed(tmp_path, char_tokenizer):
    target = tiny_llama(vocab_size=len(char_tokenizer), num_layers=2)
    cache = tmp_path / "answers.jsonl"
    prompts = ["what is a set?", "how do i sort"]
    kwargs = dict(cache=cache, prompts=prompts, max_new_tokens=12, batch_size=3, progress=False)
    first = generate_answers(target, char_tokenizer, max_tokens=30, **kwargs)
    assert cache.exists() and len(first) % 3 == 0  # whole batches of 3 records
    answered = sum(len(answer) for _, answer in first)
    assert answered >= 30
    assert first[0][0] == char_tokenizer(prompts[0])["input_ids"]  # the prompt, kept apart from the answer
    assert first[2][0] == char_tokenizer(prompts[0])["input_ids"]  # prompts cycle
    assert first[0][1] != first[2][1]  # with another seed
    # Enough already: nothing is generated (no target needed); more: it goes on from the cache.
    assert generate_answers(None, char_tokenizer, max_tokens=30, **kwargs) == first
    more = generate_answers(target, char_tokenizer, max_tokens=answered + 1, **kwargs)
    assert more[:len(first)] == first and len(more) > len(first)


def test_a_line_cut_by_a_kill_is_dropped_and_appends_go_on(tmp_path, char_tokenizer):
    target = tiny_llama(vocab_size=len(char_tokenizer), num_layers=2)
    cache = tmp_path / "answers.jsonl"
    kwargs = dict(cache=cache, prompts=["what is a set?"], max_new_tokens=8, batch_size=2, progress=False)
    first = generate_answers(target, char_tokenizer, max_tokens=4, **kwargs)
    cache.write_text(cache.read_text() + '{"prompt_ids": [1, 2')  # a kill in the middle of a write
    assert load_records(cache) == first
    more = generate_answers(target, char_tokenizer, max_tokens=sum(len(a) for _, a in first) + 1, **kwargs)
    assert load_records(cache) == more and len(more) > len(first)


def test_generation_settings_are_checked():
    with pytest.raises(ValueError, match="generate_tokens"):
        TrainConfig(generate_tokens=0)
    with pytest.raises(ValueError, match="generate_temperature"):
        TrainConfig(generate_temperature=-1.0)


def test_training_on_target_answers_end_to_end(tmp_path, char_tokenizer):
    from specdistill.training.trainer import train

    target = tiny_llama(vocab_size=len(char_tokenizer), num_layers=2)
    config = TrainConfig(output_dir=str(tmp_path), data="target", generate_tokens=120, seq_len=192, batch_size=2,
                         steps=3, keep_layers="0", bf16=False, fused_linear=False, device="cpu")
    result = train(config, target=target, tokenizer=char_tokenizer, progress=False)
    assert (tmp_path / "target_answers.jsonl").exists() and result["steps"] == 3
