"""Target-generated training text: real sampling from a tiny target, cached and resumable."""

import pytest

from specdistill.models import tiny_llama
from specdistill.prompts import HELDOUT_PROMPTS, training_prompts
from specdistill.target_data import generate_answers, sequence_chunks
from specdistill.train import TrainConfig


def test_training_prompts_are_many_fixed_and_never_held_out():
    prompts = training_prompts()
    assert len(prompts) > 300 and len(set(prompts)) == len(prompts)
    assert not set(prompts) & set(HELDOUT_PROMPTS)
    assert prompts == training_prompts() != training_prompts(seed=1)


def test_answers_are_sampled_cached_and_resumed(tmp_path, char_tokenizer):
    target = tiny_llama(vocab_size=len(char_tokenizer), num_layers=2)
    cache = tmp_path / "answers.pt"
    prompts = ["what is a set?", "how do i sort"]
    kwargs = dict(cache=cache, prompts=prompts, max_new_tokens=12, batch_size=3, progress=False)
    first = generate_answers(target, char_tokenizer, max_tokens=30, **kwargs)
    assert cache.exists() and len(first) % 3 == 0  # whole batches of 3 rows
    answered = sum(len(seq) - len(prompts[i % 2]) for i, seq in enumerate(first))
    assert answered >= 30
    assert first[0][:len(prompts[0])] == char_tokenizer(prompts[0])["input_ids"]
    assert first[2][:len(prompts[0])] == char_tokenizer(prompts[0])["input_ids"]  # prompts cycle
    assert first[0] != first[2]  # with another seed
    # Enough already: nothing is generated (no target needed); more: it goes on from the cache.
    assert generate_answers(None, char_tokenizer, max_tokens=30, **kwargs) == first
    more = generate_answers(target, char_tokenizer, max_tokens=answered + 1, **kwargs)
    assert more[:len(first)] == first and len(more) > len(first)


def test_sequence_chunks(char_tokenizer):
    chunks = sequence_chunks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4)
    assert chunks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(ValueError, match="seq_len"):
        sequence_chunks([[1, 2]], seq_len=4)


def test_generation_settings_are_checked():
    with pytest.raises(ValueError, match="generate_tokens"):
        TrainConfig(generate_tokens=0)
    with pytest.raises(ValueError, match="generate_temperature"):
        TrainConfig(generate_temperature=-1.0)


def test_training_on_target_answers_end_to_end(tmp_path, char_tokenizer):
    from specdistill.train import train

    target = tiny_llama(vocab_size=len(char_tokenizer), num_layers=2)
    config = TrainConfig(output_dir=str(tmp_path), corpus="target", generate_tokens=120, seq_len=16, batch_size=2,
                         steps=3, keep_layers="0", bf16=False, fused_linear=False, device="cpu")
    result = train(config, target=target, tokenizer=char_tokenizer, progress=False)
    assert (tmp_path / "target_answers.pt").exists() and result["steps"] == 3
