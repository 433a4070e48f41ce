"""Training an EAGLE-3 head: training-time test learns, resumes after a kill, and exports
a speculators directory that drafts for the target."""

import json

import pytest
import torch
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.datastore import corpus_answers, corpus_for

from specdistill.data.batches import TokenRows
from specdistill.models import tiny_llama
from specdistill.models.eagle3 import Eagle3Head, draft_vocabulary
from specdistill.models.eagle3_io import load_head
from specdistill.training.config import TrainConfig
from specdistill.training.eagle3_head import head_acceptance
from specdistill.training.trainer import train


@pytest.fixture()
def target_and_chunks():
    target = tiny_llama(vocab_size=64, num_layers=4, hidden_size=32, seed=1)
    base = torch.arange(64).repeat(40)[: 32 * 48]
    chunks = ((base + torch.randint(0, 2, base.shape, generator=torch.Generator().manual_seed(0))) % 64).view(48, 32)
    return target, chunks


def _config(tmp_path, **overrides):
    values = dict(target="unused", draft_type="eagle3", head_layers="0,2,3", head_vocab_size=48, ttt_steps=3,
                  output_dir=str(tmp_path / "run"), seq_len=32, batch_size=4, steps=30, lr=3e-3, warmup_steps=2,
                  save_every=10, bf16=False)
    return TrainConfig(**(values | overrides))


def test_head_learns_and_exports_a_speculators_directory(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    rows = TokenRows.from_chunks(chunks[:4])
    result = train(_config(tmp_path), target=target, data=chunks, progress=False)
    history = result["history"]
    assert sum(h["loss"] for h in history[-5:]) < 0.7 * sum(h["loss"] for h in history[:5])
    config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert config["speculators_model_type"] == "eagle3" and config["draft_vocab_size"] == 48
    assert config["eagle_aux_hidden_state_layer_ids"] == [0, 2, 3]
    head = load_head(result["draft_dir"], target)
    corpus = corpus_for(head, 64)  # the answers it trained on (every position of fixed text) serve with it
    assert corpus is not None and len(corpus_answers(corpus)) == 48
    assert chunks[0, 1:].tolist() in corpus_answers(corpus)
    figures = head_acceptance(target, head, rows, max_k=3)
    assert 0 < figures["alpha"] <= 1 and len(figures["alpha_per_position"]) == 3
    assert figures["predicted_tau"][0] == pytest.approx(1 + figures["alpha"], abs=1e-3)
    bf16 = head_acceptance(target.to(torch.bfloat16), head.float(), rows, max_k=3)  # as a bf16-teacher run evals
    assert bf16["alpha"] == pytest.approx(figures["alpha"], abs=0.1)
    target.float()
    prompt = chunks[5:6, :8]
    out = SpeculativeGenerator(target, head, num_draft_tokens=3).generate(prompt, max_new_tokens=12,
                                                                          eos_token_id=[])
    reference = target.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.testing.assert_close(out.sequences, reference)


def test_killed_head_run_resumes_where_it_stopped(tmp_path, target_and_chunks, killed_after):
    target, chunks = target_and_chunks
    full = train(_config(tmp_path / "a", steps=20), target=target, data=chunks, progress=False)
    with killed_after(13):  # the last checkpoint holds step 10
        train(_config(tmp_path / "b", steps=20), target=target, data=chunks, progress=False)
    resumed = train(_config(tmp_path / "b", steps=20), target=target, data=chunks, progress=False)
    assert resumed["resumed_from_step"] == 10
    for key, value in full["draft"].state_dict().items():
        torch.testing.assert_close(resumed["draft"].state_dict()[key], value, rtol=1e-4, atol=1e-4)


def test_head_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(ValueError, match="leave teacher_cache, onpolicy_fraction and lora_rank unset"):
        _config(tmp_path, onpolicy_fraction=0.5)
    with pytest.raises(ValueError, match="ttt_steps must be >= 1"):
        _config(tmp_path, ttt_steps=0)


def test_draft_vocabulary_keeps_the_most_frequent_and_eos_sorted():
    ids = torch.tensor([5, 5, 5, 9, 9, 2, 7])
    assert draft_vocabulary(ids, 16, 3, always=[1]).tolist() == [1, 5, 9]
    assert draft_vocabulary(ids, 16, 3, always=[]).tolist() == [2, 5, 9]


def test_a_head_needs_a_llama_family_target():
    from transformers import AutoModelForCausalLM, GPT2Config

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=16))
    with pytest.raises(ValueError, match="built for Llama-family targets .* use draft_type lm"):
        Eagle3Head.for_target(gpt2, torch.arange(8))


def test_feature_cache_trains_exactly_as_the_live_target(tmp_path, target_and_chunks, monkeypatch):
    target, chunks = target_and_chunks
    live = train(_config(tmp_path / "live", steps=6), target=target, data=chunks, progress=False)
    cache = tmp_path / "features"
    cached = train(_config(tmp_path / "cached", steps=6, feature_cache=str(cache)), target=target, data=chunks,
                   progress=False)
    assert [h["loss"] for h in cached["history"]] == pytest.approx([h["loss"] for h in live["history"]], rel=1e-5)
    assert json.loads((cache / "cache.json").read_text())["layer_ids"] == [0, 2, 3]

    import specdistill.training.feature_cache as feature_cache  # a rerun reads the shards and never runs the target

    monkeypatch.setattr(feature_cache, "_write_shard", lambda *args: pytest.fail("the cache was made again"))
    again = train(_config(tmp_path / "again", steps=6, feature_cache=str(cache)), target=target, data=chunks,
                  progress=False)
    assert again["history"][-1]["loss"] == pytest.approx(cached["history"][-1]["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="other rows or another head"):
        train(_config(tmp_path / "other", steps=6, feature_cache=str(cache)), target=target, data=chunks[:40],
              progress=False)


def test_feature_cache_is_only_for_heads():
    with pytest.raises(ValueError, match="draft_type eagle3"):
        TrainConfig(target="unused", feature_cache="x")


def test_head_step_loss_is_the_masked_loss_over_whole_rows(target_and_chunks):
    from types import SimpleNamespace

    from specdistill.data.batches import Batch
    from specdistill.losses import compute_distill_loss
    from specdistill.training.eagle3_head import head_step, shifted, target_pass

    target, chunks = target_and_chunks
    ids = draft_vocabulary(chunks.flatten(), 64, 48, [])
    head = Eagle3Head.for_target(target, ids, [0, 2, 3], seed=0).float()
    mask = torch.rand(chunks[:4].shape, generator=torch.Generator().manual_seed(3)) < 0.6
    batch = Batch(chunks[:4], mask)
    config = SimpleNamespace(ttt_steps=3, ttt_decay=0.7, divergence="jsd", temperature=1.5, beta=0.5)
    loss, acceptance, count = head_step(target, head, batch, config, torch.autocast("cpu", enabled=False))
    features, teacher = target_pass(target, head, batch.input_ids, draft_vocab_only=True)
    expected = 0
    for j, logits in enumerate(head.ttt_logits(features, batch.input_ids, 3), 1):
        labels = torch.where(shifted(mask, j, False), 0, -100)
        step, accepted = compute_distill_loss(logits, shifted(teacher, j, 0), divergence="jsd", temperature=1.5,
                                              labels=labels, reduction="sum", return_acceptance=True)
        expected = expected + step * 0.7 ** (j - 1)
        if j == 1:
            torch.testing.assert_close(acceptance, accepted.float().sum())
            assert count == int((labels != -100).sum())
    torch.testing.assert_close(loss, expected)


def test_feature_rows_gather_a_batch_across_their_shards():
    from specdistill.training.feature_cache import FeatureRows

    rows = TokenRows(torch.arange(24).view(6, 4), torch.ones(6, 4, dtype=torch.bool))
    features, final = torch.randn(6, 4, 3), torch.randn(6, 4, 1)
    shards = [{"features": features[i: i + 2], "final": final[i: i + 2]} for i in (0, 2, 4)]
    cached = FeatureRows(rows, shards, shard_rows=2)
    for step in range(4):
        batch, index = cached.batch(step, 3, seed=0), cached.batch_rows(step, 3, seed=0)
        assert torch.equal(batch.input_ids, rows.input_ids[index])
        assert torch.equal(batch.features[0], features[index]) and torch.equal(batch.features[1], final[index])


def _dense_ttt_states(head, features, input_ids, steps):
    """The reference: every step over every position, with the block's own earlier steps as
    [T, T] diagonal blocks of one attention mask (how training-time test is usually written)."""
    import torch.nn.functional as F

    layer, (batch, width) = head.layers[0], input_ids.shape
    index = torch.arange(width)
    feature, keys, values, out = head.fc(features), [], [], []
    for j in range(1, steps + 1):
        cos, sin = head.rotary(feature, (index + j - 1).expand(batch, width))
        q, k, v, residual = layer.qkv(head.embed(F.pad(input_ids[:, j:], (0, j))), feature, cos, sin)
        keys.append(k)
        values.append(v)
        mask = torch.cat([index[None, :] <= index[:, None]] + [torch.eye(width, dtype=torch.bool)] * (j - 1), 1)
        feature = layer.finish(layer.self_attn.attend(q, torch.cat(keys, 2), torch.cat(values, 2), mask), residual)
        out.append(feature)
    return out


def _float64_head_and_rows(rows: int, width: int, seed: int):
    """A tiny float64 head (GQA: 4 query heads on 2 kv heads), random ids and features [rows, width], and the
    generator that made them."""
    target = tiny_llama(vocab_size=16, num_layers=4, hidden_size=32, seed=3).double()
    head = Eagle3Head.for_target(target, torch.arange(2, 16), layer_ids=[0, 2, 3], seed=1).double()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 16, (rows, width), generator=generator)
    features = torch.randn(rows, width, 96, dtype=torch.float64, generator=generator)
    return head, ids, features, generator


def test_training_time_test_at_kept_positions_equals_the_dense_unrolling():
    head, ids, features, generator = _float64_head_and_rows(3, 19, seed=0)
    dense = _dense_ttt_states(head, features, ids, 4)
    keep = torch.rand(3, 19, generator=generator) < 0.3
    keep[1] = False  # a row with nothing kept
    keep[2, -1] = True  # the last position, whose later tokens are padding
    for full, kept, reference in zip(head.ttt_states(features, ids, 4), head.ttt_states_at(features, ids, 4, keep),
                                     dense):
        torch.testing.assert_close(full, reference, rtol=0, atol=1e-12)
        torch.testing.assert_close(kept, reference[keep], rtol=0, atol=1e-12)


def test_training_time_test_at_kept_positions_has_the_dense_unrolling_gradients():
    head, ids, features, generator = _float64_head_and_rows(2, 23, seed=1)
    keep = torch.rand(2, 23, generator=generator) < 0.5
    weights = [torch.randn(int(keep.sum()), 32, dtype=torch.float64, generator=generator) for _ in range(4)]

    def gradients(states) -> list[torch.Tensor]:
        head.zero_grad()
        sum((s * w).sum() for s, w in zip(states, weights)).backward()
        return [p.grad.clone() for p in head.parameters() if p.grad is not None]

    kept = gradients(head.ttt_states_at(features, ids, 4, keep))
    dense = gradients([state[keep] for state in _dense_ttt_states(head, features, ids, 4)])
    assert len(kept) == len(dense) > 0
    for got, want in zip(kept, dense):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_extending_a_head_vocabulary_keeps_its_rows_and_adds_the_most_frequent_missing(tmp_path):
    from specdistill.models.eagle3 import extend_vocabulary, save_head

    target = tiny_llama(vocab_size=16, num_layers=4, hidden_size=32, seed=3)
    head = Eagle3Head.for_target(target, torch.tensor([1, 4, 6, 9]), layer_ids=[0, 2, 3], seed=1)
    with torch.no_grad():
        head.lm_head.weight.add_(1.0)  # "trained": no longer the target's rows
    old = head.lm_head.weight.detach().clone()
    answers = torch.tensor([12] * 5 + [3] * 4 + [4] * 9 + [7] * 2 + [0])
    assert extend_vocabulary(head, target, answers, size=6) == 2  # 12 and 3: the most frequent it lacks
    assert head.draft_ids.tolist() == head.t2d.nonzero().flatten().tolist() == [1, 3, 4, 6, 9, 12]
    torch.testing.assert_close(head.lm_head.weight[[0, 2, 3, 4]], old)
    torch.testing.assert_close(head.lm_head.weight[[1, 5]], target.lm_head.weight[[3, 12]])
    assert extend_vocabulary(head, target, answers, size=6) == 0
    save_head(head, tmp_path / "head")
    again = load_head(tmp_path / "head", target, torch.float32)
    assert again.draft_ids.tolist() == [1, 3, 4, 6, 9, 12]
    ids = torch.tensor([[2, 5, 3, 9, 12, 4]])
    out = SpeculativeGenerator(target, again, draft_tree="2,2,4").generate(ids, 20, eos_token_id=[])
    reference = target.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.testing.assert_close(out.sequences, reference)


def test_a_fine_tune_with_a_frozen_lm_head_trains_only_the_projection_and_layer(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    start = train(_config(tmp_path / "start", steps=4), target=target, data=chunks, progress=False)["draft_dir"]
    before = load_head(start, target, torch.float32)
    tuned = train(_config(tmp_path / "tuned", draft=str(start), steps=4, freeze_lm_head=True, head_vocab_size=56),
                  target=target, data=chunks, progress=False)["draft"]
    kept = torch.isin(tuned.draft_ids, before.draft_ids)
    assert int(kept.sum()) == 48 and len(tuned.draft_ids) > 48  # the vocabulary grew; its new rows are the target's
    torch.testing.assert_close(tuned.lm_head.weight[kept], before.lm_head.weight)
    torch.testing.assert_close(tuned.lm_head.weight[~kept], target.lm_head.weight[tuned.draft_ids[~kept]])
    assert not torch.allclose(tuned.fc.weight, before.fc.weight)
    assert not torch.allclose(tuned.layers[0].mlp.up_proj.weight, before.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("setting", [{"freeze_lm_head": True}, {"blend_start": 0.3}])
def test_head_fine_tune_settings_are_refused_for_lm_drafts(tmp_path, setting):
    with pytest.raises(ValueError, match="are for EAGLE-3 heads"):
        TrainConfig(target="unused", draft_type="lm", output_dir=str(tmp_path), **setting)


def test_blend_start_moves_the_final_head_that_share_back_to_its_start(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    start = train(_config(tmp_path / "start", steps=4), target=target, data=chunks, progress=False)["draft_dir"]
    first = load_head(start, target, torch.float32)

    def tuned(name: str, blend: float):
        config = _config(tmp_path / name, draft=str(start), steps=4, head_vocab_size=56, blend_start=blend)
        return train(config, target=target, data=chunks, progress=False)["draft_dir"]
    plain, blended = (load_head(tuned(name, blend), target, torch.float32) for name, blend in (("a", 0), ("b", 0.25)))
    assert blended.draft_ids.tolist() == plain.draft_ids.tolist() and len(plain.draft_ids) > 48
    kept = torch.isin(plain.draft_ids, first.draft_ids)
    start_rows = target.lm_head.weight[plain.draft_ids].clone()  # the rows the fine-tune began from
    start_rows[kept] = first.lm_head.weight
    torch.testing.assert_close(blended.lm_head.weight, 0.75 * plain.lm_head.weight + 0.25 * start_rows)
    torch.testing.assert_close(blended.fc.weight, 0.75 * plain.fc.weight + 0.25 * first.fc.weight)
    with pytest.raises(ValueError, match="needs --draft"):
        _config(tmp_path, blend_start=0.5)
