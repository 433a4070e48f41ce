"""On-policy batches: the draft's own continuations, scored on the generated tokens only."""

import pytest
import torch

from specdistill.data.batches import pack_records
from specdistill.models import prune_draft, tiny_llama
from specdistill.training.config import TrainConfig
from specdistill.training.onpolicy import OnPolicyBatches
from specdistill.training.trainer import train

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]


def _records():
    return [(prompt, [20 + i, 21, 22, 23]) for i, prompt in enumerate(PROMPTS)] * 4


def test_onpolicy_batches_mask_everything_but_the_generated_tokens():
    target = tiny_llama(vocab_size=64, num_layers=3, seed=5)
    draft = prune_draft(target, [0, -1]).train()
    source = OnPolicyBatches(PROMPTS, fraction=1.0, temperature=0.0, max_new_tokens=6, seq_len=12, pad_id=0, seed=1)
    batch = source.batch(draft, step=3, rows=[0, 1, 2, 3], batch_size=4, eos_ids=[])
    assert draft.training  # generation ran in eval mode and gave the draft back in train mode
    draft.eval()
    for row in range(4):
        ids, mask = batch.input_ids[row].tolist(), batch.loss_mask[row].tolist()
        prompt = next(p for p in PROMPTS if ids[: len(p)] == p and mask.index(True) == len(p) - 1)
        generated = min(6, 12 - len(prompt))
        # Greedy: the continuation is the draft's own argmax continuation.
        expected = draft.generate(torch.tensor([prompt]), max_new_tokens=generated, min_new_tokens=generated,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)[0].tolist()
        assert ids[: len(prompt) + generated] == expected
        assert mask == [len(prompt) - 1 <= t < len(prompt) + generated - 1 for t in range(12)]
    again = source.batch(draft, step=3, rows=[0, 1, 2, 3], batch_size=4, eos_ids=[])
    assert torch.equal(again.input_ids, batch.input_ids)  # a function of (seed, step, row)


def test_sampled_rows_depend_on_their_row_not_on_the_process_share():
    target = tiny_llama(vocab_size=64, num_layers=3, seed=5)
    draft = prune_draft(target, [0, -1])
    source = OnPolicyBatches(PROMPTS, fraction=1.0, temperature=1.0, max_new_tokens=5, seq_len=12, pad_id=0, seed=2)
    whole = source.batch(draft, step=7, rows=[0, 1, 2, 3], batch_size=4, eos_ids=[])
    half = source.batch(draft, step=7, rows=[1, 3], batch_size=4, eos_ids=[])
    assert torch.equal(half.input_ids, whole.input_ids[[1, 3]])


def test_training_with_onpolicy_steps_resumes_exactly(tmp_path, killed_after):
    target = tiny_llama(vocab_size=64, num_layers=3, seed=5)
    rows = pack_records(_records(), seq_len=12, pad_id=0)
    values = dict(target="unused", keep_layers="0,-1", seq_len=12, batch_size=4, steps=12, lr=3e-3, warmup_steps=1,
                  save_every=4, bf16=False, onpolicy_fraction=0.5, onpolicy_tokens=4, device="cpu")
    full = train(TrainConfig(output_dir=str(tmp_path / "a"), **values), target=target, data=rows, progress=False)
    kinds = [h.get("onpolicy", False) for h in full["history"]]
    assert any(kinds) and not all(kinds)
    with killed_after(6):  # the last checkpoint holds step 4
        train(TrainConfig(output_dir=str(tmp_path / "b"), **values), target=target, data=rows, progress=False)
    resumed = train(TrainConfig(output_dir=str(tmp_path / "b"), **values), target=target, data=rows, progress=False)
    assert resumed["resumed_from_step"] == 4
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(resumed["draft"](ids).logits, full["draft"](ids).logits, rtol=1e-4, atol=1e-4)


def test_onpolicy_needs_prompts():
    with pytest.raises(ValueError, match="on-policy batches need training prompts"):
        OnPolicyBatches([], fraction=0.3, temperature=1.0, max_new_tokens=4, seq_len=8, pad_id=0, seed=0)
