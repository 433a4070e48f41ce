"""The trainer on a tiny model pair: it learns, saves a loadable checkpoint, and resumes."""

import os
import signal

import pytest
import torch
from transformers import AutoModelForCausalLM

from specdistill.data.batches import Batch, TokenRows, pack_records
from specdistill.models import prune_draft, tiny_llama
from specdistill.training import loop as train_loop
from specdistill.training import trainer as train_module
from specdistill.training.config import TrainConfig
from specdistill.training.graceful_stop import GracefulStop, TrainingStopped
from specdistill.training.step import distill_step
from specdistill.training.trainer import train


@pytest.fixture()
def target_and_chunks():
    target = tiny_llama(vocab_size=64, num_layers=4, hidden_size=32, seed=1)
    # Text with structure the draft can learn: a repeating pattern with noise.
    base = torch.arange(64).repeat(40)[: 32 * 48]
    chunks = ((base + torch.randint(0, 2, base.shape)) % 64).view(48, 32)
    return target, chunks


def _config(tmp_path, **overrides):
    values = dict(target="unused", keep_layers="0,-1", output_dir=str(tmp_path / "run"), seq_len=32,
                  batch_size=4, steps=30, lr=3e-3, warmup_steps=2, save_every=10, bf16=False)
    return TrainConfig(**(values | overrides))


def test_distillation_lowers_loss_and_saves_hf_checkpoint(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    result = train(_config(tmp_path), target=target, data=chunks, progress=False)
    history = result["history"]
    assert result["steps"] == 30 and len(history) == 30
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.7 * first
    assert history[-1]["acceptance"] > history[0]["acceptance"]
    loaded = AutoModelForCausalLM.from_pretrained(result["draft_dir"])
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(loaded(ids).logits, result["draft"](ids).logits)


def test_frozen_embeddings_stay_put(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    result = train(_config(tmp_path, steps=5), target=target, data=chunks, progress=False)
    draft = result["draft"]
    torch.testing.assert_close(draft.get_output_embeddings().weight, target.get_output_embeddings().weight)
    assert not torch.equal(draft.model.layers[0].mlp.up_proj.weight, target.model.layers[0].mlp.up_proj.weight)


def test_killed_run_resumes_from_last_checkpoint(tmp_path, target_and_chunks, killed_after):
    target, chunks = target_and_chunks
    full = train(_config(tmp_path / "a", steps=20), target=target, data=chunks, progress=False)
    with killed_after(13):  # the last checkpoint holds step 10
        train(_config(tmp_path / "b", steps=20), target=target, data=chunks, progress=False)
    resumed = train(_config(tmp_path / "b", steps=20), target=target, data=chunks, progress=False)
    assert resumed["resumed_from_step"] == 10
    assert [h["step"] for h in resumed["history"]] == list(range(1, 21))
    # Same batches, same optimizer state, same schedule: it ends where the uninterrupted run did.
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(resumed["draft"](ids).logits, full["draft"](ids).logits, rtol=1e-4, atol=1e-4)


def test_a_stop_signal_saves_the_step_in_flight_and_the_run_resumes_there(tmp_path, target_and_chunks, monkeypatch):
    target, chunks = target_and_chunks
    full = train(_config(tmp_path / "a", steps=20), target=target, data=chunks, progress=False)
    real, calls = train_loop.distill_step, []

    def signalled(*args):
        calls.append(1)
        if len(calls) == 13:  # SIGTERM (as from a scheduler or `kill`) in the middle of step 13
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(train_loop, "distill_step", signalled)
    with pytest.raises(TrainingStopped, match="stopped at step 13") as stopped:
        train(_config(tmp_path / "b", steps=20), target=target, data=chunks, progress=False)
    assert stopped.value.step == 13 and len(calls) == 13  # the step in flight finished, no more ran
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back
    monkeypatch.setattr(train_loop, "distill_step", real)
    resumed = train(_config(tmp_path / "b", steps=20), target=target, data=chunks, progress=False)
    assert resumed["resumed_from_step"] == 13  # not 10, the last periodic checkpoint
    assert [h["step"] for h in resumed["history"]] == list(range(1, 21))
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(resumed["draft"](ids).logits, full["draft"](ids).logits, rtol=1e-4, atol=1e-4)


def test_a_second_stop_signal_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # a run started in the background by a shell ignores SIGINT
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler it found is back


def test_nan_loss_stops_with_a_clear_error(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    broken = prune_draft(target, [0, 1, 2, 3])
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    broken.save_pretrained(tmp_path / "nan_draft")
    with pytest.raises(FloatingPointError, match="step 0"):
        train(_config(tmp_path, draft=str(tmp_path / "nan_draft")), target=target, data=chunks, progress=False)


def test_batches_are_a_function_of_step():
    rows = TokenRows.from_chunks(torch.arange(40).view(10, 4))
    assert torch.equal(rows.batch(3, 4, seed=0).input_ids, rows.batch(3, 4, seed=0).input_ids)
    seen = torch.cat([rows.batch(s, 5, seed=0).input_ids for s in range(2)])
    assert sorted(seen[:, 0].tolist()) == list(range(0, 40, 4))


def test_records_pack_whole_and_count_answer_tokens_only():
    # The third record is cut at seq_len; the last two have no answer within a row and are skipped.
    records = [([1, 2, 3], [4, 5]), ([6, 7], [8]), ([9] * 7, [10, 10, 10]), ([9] * 9, [10]), ([11], [])]
    rows = pack_records(records, seq_len=8, pad_id=0)
    assert rows.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [9] * 7 + [10]]
    # Position t predicts token t + 1: the answers 4, 5 and 8 are predicted at 2, 3 and 6.
    first_row = [False, False, True, True, False, False, True, False]
    assert rows.loss_mask.tolist() == [first_row, [False] * 6 + [True, False]]
    labels = Batch(rows.input_ids, rows.loss_mask).labels(hard=True)
    assert labels[0].tolist() == [-100, -100, 4, 5, -100, -100, 8, -100]
    with pytest.raises(ValueError, match="no record has answer tokens"):
        pack_records([([1] * 9, [2])], seq_len=8, pad_id=0)


def test_prompt_tokens_never_count(tmp_path, target_and_chunks):
    """The step's loss is the sum of the per-position loss over answer positions only."""
    from specdistill.losses import compute_distill_loss

    target, _ = target_and_chunks
    draft = prune_draft(target, [0, -1])
    rows = pack_records([([5, 6, 7, 8], [9, 10, 11]), ([12, 13], [14, 15, 16, 17])], seq_len=8, pad_id=0)
    batch = Batch(rows.input_ids, rows.loss_mask)
    config = _config(tmp_path, bf16=False)
    loss, acceptance, count = distill_step(target, draft, batch, config, torch.device("cpu"))
    assert count == 7  # 3 + 4 answer tokens
    with torch.no_grad():
        per_position = compute_distill_loss(draft(batch.input_ids).logits, target(batch.input_ids).logits,
                                            reduction="none")
    torch.testing.assert_close(loss.detach(), per_position[batch.loss_mask].sum(), rtol=1e-4, atol=1e-5)
    assert per_position[~batch.loss_mask].abs().sum() > 0  # the prompt positions had a loss to leave out
    assert 0 < float(acceptance) < count


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_fused_linear_step_matches_the_logits_step(tmp_path, target_and_chunks, alpha):
    target, chunks = target_and_chunks
    draft = prune_draft(target, [0, -1])
    grads = []
    for fused in (True, False):
        config = _config(tmp_path, fused_linear=fused, alpha=alpha, divergence="jsd", temperature=2.0)
        draft.zero_grad()
        loss, acceptance, _ = distill_step(target, draft, TokenRows.from_chunks(chunks[:3]).batch(
            0, 3, seed=0), config, torch.device("cpu"))
        loss.backward()
        grads.append((loss.detach(), acceptance, draft.model.layers[0].mlp.up_proj.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_kill_between_the_two_renames_of_a_save_is_recovered(tmp_path, target_and_chunks, monkeypatch):
    """A save killed after moving the last checkpoint aside, before moving the new one in,
    leaves checkpoint.old and a complete checkpoint.tmp: the next run resumes from the new one."""
    target, chunks = target_and_chunks
    real_rename, renames = train_module.Path.rename, []

    def dies_on_second_rename_of_step_20(self, target_path):
        if self.name == "checkpoint.tmp" and (self.parent / "checkpoint.old").exists():
            raise KeyboardInterrupt  # the checkpoint of step 10 is aside, step 20's is complete
        renames.append(self.name)
        return real_rename(self, target_path)

    monkeypatch.setattr(train_module.Path, "rename", dies_on_second_rename_of_step_20)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, steps=25), target=target, data=chunks, progress=False)
    monkeypatch.setattr(train_module.Path, "rename", real_rename)
    run = tmp_path / "run"
    assert not (run / "checkpoint").exists() and (run / "checkpoint.old").exists()
    resumed = train(_config(tmp_path, steps=25), target=target, data=chunks, progress=False)
    assert resumed["resumed_from_step"] == 20
    assert not (run / "checkpoint.old").exists() and not (run / "checkpoint.tmp").exists()


def test_export_loads_as_a_plain_model_and_works_as_hf_assistant(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    result = train(_config(tmp_path, steps=5), target=target, data=chunks, progress=False)
    final = tmp_path / "run" / "final"
    card = (final / "README.md").read_text()
    assert "speculative-decoding" in card and '"method": "draft_model"' in card and "| `steps` | `5` |" in card
    draft = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.randint(2, 64, (1, 6))
    plain = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                            do_sample=False, pad_token_id=1)
    assisted = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                               do_sample=False, pad_token_id=1, assistant_model=draft)
    assert assisted.tolist() == plain.tolist() and result["steps"] == 5


def test_a_resumed_run_refuses_changed_settings_but_takes_more_steps(tmp_path, target_and_chunks):
    target, chunks = target_and_chunks
    train(_config(tmp_path, steps=10), target=target, data=chunks, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0.003 -> 0.01"):
        train(_config(tmp_path, steps=10, lr=1e-2), target=target, data=chunks, progress=False)
    resumed = train(_config(tmp_path, steps=12, save_every=3), target=target, data=chunks, progress=False)
    assert resumed["resumed_from_step"] == 10 and resumed["steps"] == 12


def test_bf16_autocast_only_where_bf16_is_native(monkeypatch):
    from specdistill.training import step

    cpu = torch.device("cpu")
    monkeypatch.setattr(step, "native_bf16", lambda device: False)  # a CPU without AVX512-BF16 or AMX
    with step.autocast(cpu, True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(step, "native_bf16", lambda device: True)
    with step.autocast(cpu, True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with step.autocast(cpu, False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


class _Clock:
    """A clock that moves one second each time the loop reads it (once at the start, once a step)."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        self.now += 1.0
        return self.now


def test_a_run_on_a_time_budget_decays_its_learning_rate_by_the_clock(tmp_path, target_and_chunks, monkeypatch):
    """--steps 100000 --max-minutes 0.5 (as ``specdistill adapt`` runs): the cosine follows the clock, so the
    last steps run at a tenth of the peak, not at the peak a schedule over 100,000 steps would still be at."""
    target, chunks = target_and_chunks
    monkeypatch.setattr(train_loop, "time", _Clock())
    result = train(_config(tmp_path, steps=100000, max_minutes=0.5, save_every=1000), target=target, data=chunks,
                   progress=False)
    rates = [entry["lr"] for entry in result["history"]]
    assert 25 <= len(rates) <= 31  # 30 "seconds"
    assert max(rates) == pytest.approx(3e-3, rel=0.01)
    assert rates[-1] < 0.12 * 3e-3
    assert 0.4 * 3e-3 < rates[len(rates) // 2] < 0.7 * 3e-3
