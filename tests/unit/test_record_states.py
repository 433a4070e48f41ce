"""Target states per record (``training.record_states``): packed rows get each record's own states, read
from a capture or a run's folder, or computed once and kept."""

import pytest
import torch

import specdistill.training.record_states as record_states
from specdistill.data.batches import pack_records
from specdistill.models import tiny_llama
from specdistill.models.target_states import load_states, record_key, save_states
from specdistill.training.record_states import record_state_rows

LAYERS = [0, 2, 3]
RECORDS = [([3, 7, 1], [9, 4, 12]), ([5, 8], [2, 6, 6, 6, 1]), ([4, 4, 4, 9], [10]), ([1] * 10, [2, 3, 4]),
           ([11, 12], [13, 14, 15, 2])]


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab_size=16, num_layers=4, hidden_size=32, seed=3)


@torch.no_grad()
def _alone(target, prompt, answer):
    """The record's states from the target over it alone."""
    out = target.model(input_ids=torch.tensor([prompt + answer]), output_hidden_states=True)
    return torch.cat([out.hidden_states[i] for i in LAYERS], -1)[0], out.last_hidden_state[0]


def test_packing_says_where_each_record_lies():
    rows = pack_records(RECORDS + [([1] * 20, [2])], seq_len=12, pad_id=0)
    assert rows.segments == [[(0, 0, 6)], [(1, 0, 7), (2, 7, 5)], [(3, 0, 12)], [(4, 0, 6)]]  # 3 cut, 5 skipped
    for row, segments in enumerate(rows.segments):
        for record, start, length in segments:
            prompt, answer = RECORDS[record]
            assert rows.input_ids[row, start: start + length].tolist() == (prompt + answer)[:length]


def test_rows_carry_each_record_own_states_computed_once(tmp_path, target, monkeypatch):
    rows = pack_records(RECORDS, seq_len=12, pad_id=0)
    states = record_state_rows(rows, RECORDS, target, "t", LAYERS, tmp_path / "run", forward_tokens=20, progress=False)
    assert len(list((tmp_path / "run").glob("*.safetensors"))) == 5
    for row in range(len(rows)):
        features, final = states.row_states(row)
        covered = torch.zeros(12, dtype=torch.bool)
        for record, start, length in rows.segments[row]:
            want_features, want_final = _alone(target, *RECORDS[record])
            torch.testing.assert_close(features[start: start + length], want_features[:length], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(final[start: start + length], want_final[:length], atol=1e-5, rtol=1e-5)
            covered[start: start + length] = True
        assert not features[~covered].any() and not final[~covered].any()  # padding
    batch = states.batch(0, 3, seed=0)
    index = states.batch_rows(0, 3, seed=0)
    assert torch.equal(batch.input_ids, rows.input_ids[index])
    assert torch.equal(batch.features[0][1], states.row_states(int(index[1]))[0])

    monkeypatch.setattr(target.model, "forward", lambda *args, **kwargs: pytest.fail("the target ran again"))
    again = record_state_rows(rows, RECORDS, target, "t", LAYERS, tmp_path / "run", progress=False)
    assert torch.equal(again.row_states(0)[0], states.row_states(0)[0])


def test_captured_states_are_read_and_states_of_other_layers_targets_or_lengths_are_not(tmp_path, target):
    capture = tmp_path / "capture" / "states"
    features, final = _alone(target, *RECORDS[0])
    # As a server saves them: every position but the last, which it never read.
    save_states(capture, record_key(*RECORDS[0]), features[:-1] + 1, final[:-1] + 1, LAYERS, "t")
    save_states(capture, record_key(*RECORDS[1]), *_alone(target, *RECORDS[1]), [0, 1, 3], "t")  # another head's
    save_states(capture, record_key(*RECORDS[2]), *_alone(target, *RECORDS[2]), LAYERS, "another target")
    short = [part[:2] for part in _alone(target, *RECORDS[4])]  # fewer positions than the record: not used
    save_states(capture, record_key(*RECORDS[4]), *short, LAYERS, "t")
    records = [RECORDS[0], RECORDS[1], RECORDS[2], RECORDS[4]]
    rows = pack_records(records, seq_len=16, pad_id=0)
    states = record_state_rows(rows, records, target, "t", LAYERS, tmp_path / "run", [capture], progress=False)
    got_features, got_final = states.row_states(0)
    torch.testing.assert_close(got_features[:5], features[:5] + 1)  # the capture's, not computed
    assert not got_features[5].any() and not got_final[5].any()
    assert states.counts == {"read": 1, "computed": 3}
    computed = {p.stem for p in (tmp_path / "run").glob("*.safetensors")}
    assert computed == {record_key(*r) for r in records[1:]}
    assert load_states([tmp_path / "run"], record_key(*RECORDS[1]), [0, 1, 3], "t") is None
    assert load_states([tmp_path / "run"], record_key(*RECORDS[2]), LAYERS, "another target") is None


def test_a_record_cut_at_the_row_end_is_computed_and_kept_only_that_far(tmp_path, target):
    rows = pack_records([RECORDS[3]], seq_len=12, pad_id=0)  # 13 tokens, cut at 12
    states = record_state_rows(rows, [RECORDS[3]], target, "t", LAYERS, tmp_path / "run", progress=False)
    assert [len(part) for part in states.states[0]] == [12, 12]
    want = _alone(target, RECORDS[3][0], RECORDS[3][1][:2])  # causal: the first 12 positions of the 13
    torch.testing.assert_close(states.row_states(0)[0], want[0], atol=1e-5, rtol=1e-5)


def test_record_states_need_packed_records(target):
    from specdistill.data.batches import TokenRows

    with pytest.raises(ValueError, match="pack_records"):
        record_states.RecordStateRows(TokenRows(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)),
                                      [], torch.float32)
