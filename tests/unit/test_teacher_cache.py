"""The offline teacher: a top-k cache written once, resumable, and training from it."""

import json

import pytest
import torch

from specdistill.models import tiny_llama
from specdistill.training import trainer as train_module
from specdistill.training.config import TrainConfig
from specdistill.training.teacher_cache import CacheConfig, load_cache, run_cache_teacher
from specdistill.training.trainer import train

TEXT = "def add(a, b):\n    return a + b\n\nwhile true: print(a)\n" * 60


@pytest.fixture()
def setup(tmp_path, char_tokenizer):
    target = tiny_llama(vocab_size=64, num_layers=4, hidden_size=32, seed=1)
    (tmp_path / "code.txt").write_text(TEXT)
    return target, char_tokenizer, str(tmp_path / "code.txt")


def _train_config(tmp_path, data, name, **overrides):
    return TrainConfig(**(dict(target="unused", keep_layers="0,-1", data=data, output_dir=str(tmp_path / name),
                               seq_len=32, batch_size=4, steps=8, lr=3e-3, warmup_steps=2, bf16=False,
                               report_to="none") | overrides))


def _cache_config(tmp_path, data, **overrides):
    return CacheConfig(**(dict(target="unused", data=data, out=str(tmp_path / "cache"), seq_len=32, bf16=False,
                               max_tokens=8 * 4 * 32, shard_rows=3, forward_batch=2) | overrides))


def _weights(model):
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_a_cache_with_every_token_trains_the_weights_of_the_live_teacher(tmp_path, setup):
    target, tokenizer, data = setup
    live = train(_train_config(tmp_path, data, "live"), target=target, tokenizer=tokenizer, progress=False)
    summary = run_cache_teacher(_cache_config(tmp_path, data, top_k=64, cache_dtype="fp32"), target, tokenizer,
                                progress=False)
    assert summary["top_k"] == 64 and summary["tokens"] > 0
    cached = train(_train_config(tmp_path, data, "cached", teacher_cache=summary["out"]), target=target,
                   tokenizer=tokenizer, progress=False)
    for name, value in _weights(live["draft"]).items():
        torch.testing.assert_close(_weights(cached["draft"])[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert cached["history"][-1]["acceptance"] == pytest.approx(live["history"][-1]["acceptance"], abs=1e-4)


def test_a_top_k_cache_trains_without_the_target(tmp_path, setup, monkeypatch):
    target, tokenizer, data = setup
    summary = run_cache_teacher(_cache_config(tmp_path, data, top_k=8), target, tokenizer, progress=False)
    # fp16 log-probs and int32 ids for 8 entries, plus the fp32 tail mass, per position (and the rows).
    assert 8 * (2 + 4) + 4 <= summary["bytes_per_token"] < 8 * (2 + 4) + 4 + 20
    start = train(_train_config(tmp_path, data, "start", steps=1), target=target, tokenizer=tokenizer,
                  progress=False)

    def no_target(*args, **kwargs):
        raise AssertionError("the target was loaded")

    monkeypatch.setattr(train_module, "load_target", no_target)
    result = train(_train_config(tmp_path, data, "run", teacher_cache=summary["out"], draft=start["draft_dir"],
                                 steps=20), progress=False)
    history = result["history"]
    assert sum(h["loss"] for h in history[-4:]) < 0.8 * sum(h["loss"] for h in history[:4])
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_a_killed_cache_run_finishes_what_is_missing(tmp_path, setup):
    target, tokenizer, data = setup
    config = _cache_config(tmp_path, data, top_k=4)
    run_cache_teacher(config, target, tokenizer, progress=False)
    whole = load_cache(config.out)[0]
    cache = tmp_path / "cache"
    (cache / "shard-00001.safetensors").unlink()  # as if killed while writing shard 1
    meta = json.loads((cache / "cache.json").read_text())
    (cache / "cache.json").write_text(json.dumps(meta | {"complete": False}))
    with pytest.raises(ValueError, match="unfinished"):
        load_cache(config.out)
    run_cache_teacher(config, target, tokenizer, progress=False)
    again = load_cache(config.out)[0]
    torch.testing.assert_close(again.topk_logprobs, whole.topk_logprobs)
    assert torch.equal(again.input_ids, whole.input_ids)
    with pytest.raises(ValueError, match="top_k: 4 -> 5"):
        run_cache_teacher(_cache_config(tmp_path, data, top_k=5), target, tokenizer, progress=False)
    with pytest.raises(ValueError, match="temperature = 1.0"):
        train(_train_config(tmp_path, data, "hot", teacher_cache=config.out, temperature=2.0), target=target,
              tokenizer=tokenizer, progress=False)
    with pytest.raises(FileNotFoundError, match="not a teacher cache"):
        load_cache(str(tmp_path))
