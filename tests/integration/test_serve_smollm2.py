"""Streaming, stop strings, adaptive draft length and row batches on the real SmolLM2 target."""

import pytest
import torch
from specdistill.serve import SpeculativeGenerator

from specdistill.data.prompts import HELDOUT_PROMPTS, chat_prompt_ids
from specdistill.models import load_target, prune_draft

pytestmark = pytest.mark.slow
N = 24


@pytest.fixture(scope="module")
def smollm2():
    target, tokenizer = load_target()
    return target, tokenizer, prune_draft(target, [0, 1, 2, -1])


def _hf_greedy(target, tokenizer, ids):
    out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=False,
                          pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_auto_draft_length_batches_and_text(smollm2):
    target, tokenizer, draft = smollm2
    prompts = [chat_prompt_ids(tokenizer, p) for p in HELDOUT_PROMPTS[2:4]]
    gen = SpeculativeGenerator(target, draft, num_draft_tokens="auto", tokenizer=tokenizer)
    outs = gen.generate_batch(prompts, max_new_tokens=N, eos_token_id=tokenizer.eos_token_id)
    for ids, out in zip(prompts, outs):
        new = out.sequences[0, ids.shape[1]:].tolist()
        assert new == _hf_greedy(target, tokenizer, ids)
        assert out.text == tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_stream_and_stop_string(smollm2):
    target, tokenizer, draft = smollm2
    ids = chat_prompt_ids(tokenizer, HELDOUT_PROMPTS[0])
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=4, tokenizer=tokenizer)
    full = gen.generate(ids, max_new_tokens=N, eos_token_id=tokenizer.eos_token_id)
    chunks = list(gen.stream(ids, max_new_tokens=N, eos_token_id=tokenizer.eos_token_id))
    assert "".join(c.text for c in chunks) == full.text
    words = full.text.split()
    stop = " " + words[len(words) // 2]
    out = gen.generate(ids, max_new_tokens=N, eos_token_id=tokenizer.eos_token_id, stop=stop)
    assert out.finish_reason == "stop" and out.text == full.text[: full.text.index(stop)]
