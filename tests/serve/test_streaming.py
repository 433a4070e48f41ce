"""Streaming, stop strings and text: one decode loop behind generate, stream and astream."""

import asyncio

import pytest
import torch
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.text import TextTracker

# Token id -> bytes. Ids 0 and 1 are special (bos, eos); some ids are halves of
# multi-byte UTF-8 characters, so decoding a prefix can end in U+FFFD.
_PIECES = [b"", b""] + [bytes([c]) for c in b"abcdefghij klmnopqrstuvwxyz.,\n"] + [b"\xc3", b"\xa9", b"\xe2", b"\x82",
                                                                                  b"\xac", b"ab", b" the", b"\xc3\xa9"]
_PIECES += [bytes([c]) for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"][: 64 - len(_PIECES)]
E_FIRST, E_SECOND = _PIECES.index(b"\xc3"), _PIECES.index(b"\xa9")


class ByteTokenizer:
    """A 64-token byte-level tokenizer for the tiny test models."""

    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return b"".join(_PIECES[i] for i in ids).decode("utf-8", errors="replace")

    def encode(self, text):
        return [_PIECES.index(bytes([c])) for c in text.encode()]

    def get_vocab(self):
        return {repr(p) + str(i): i for i, p in enumerate(_PIECES)}

    def __len__(self):
        return len(_PIECES)


def test_the_byte_tokenizer_covers_the_vocabulary():
    assert len(_PIECES) == 64 and ByteTokenizer().decode(ByteTokenizer().encode("ab c")) == "ab c"


def test_tracker_holds_back_half_characters():
    tracker = TextTracker(ByteTokenizer(), [])
    a = ByteTokenizer().encode("a")
    assert tracker.push(a + [E_FIRST]) == (a + [E_FIRST], "a", False)
    assert tracker.push([E_SECOND])[1] == "é"
    assert tracker.finish() == "" and tracker.text == "aé"


def test_tracker_holds_back_a_possible_stop_and_cuts_before_it():
    tok = ByteTokenizer()
    tracker = TextTracker(tok, ["cd", "xyz"])
    assert tracker.push(tok.encode("abx"))[1] == "ab"  # "x" may start "xyz"
    assert tracker.push(tok.encode("c"))[1] == "x"  # now "c" may start "cd"
    kept, delta, stopped = tracker.push(tok.encode("dqq"))
    assert stopped and kept == tok.encode("d") and delta == ""
    assert tracker.text == "abx" and tracker.ids == tok.encode("abxcd")


def test_tracker_without_stop_flushes_everything():
    tok = ByteTokenizer()
    tracker = TextTracker(tok, ["zz"])
    assert tracker.push(tok.encode("az"))[1] == "a"
    assert tracker.finish() == "z" and tracker.text == "az"


def _generator(tiny_models, **kwargs):
    target, draft = tiny_models
    return SpeculativeGenerator(target, draft, num_draft_tokens=3, tokenizer=ByteTokenizer(), **kwargs)


def test_stream_equals_generate(tiny_models):
    gen = _generator(tiny_models)
    ids = torch.randint(2, 64, (1, 7))
    out = gen.generate(ids, max_new_tokens=40, eos_token_id=[])
    chunks = list(gen.stream(ids, max_new_tokens=40, eos_token_id=[]))
    assert [t for c in chunks for t in c.token_ids] == out.sequences[0, 7:].tolist()
    assert "".join(c.text for c in chunks) == out.text == ByteTokenizer().decode(out.sequences[0, 7:].tolist())
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == out.finish_reason == "length"
    assert chunks[-1].stats.new_tokens == 40 and chunks[-1].stats.target_calls == len(chunks)


def test_stop_string_cuts_text_and_tokens(tiny_models):
    gen = _generator(tiny_models)
    tok = ByteTokenizer()
    ids = torch.randint(2, 64, (1, 5))
    full = gen.generate(ids, max_new_tokens=40, eos_token_id=[])
    new = full.sequences[0, 5:].tolist()
    # A two-character stop string from the middle of the output (not a U+FFFD: that one is unstable).
    pairs = [full.text[i: i + 2] for i in range(len(full.text) // 2, len(full.text) - 1)]
    stop = next(p for p in pairs if "\ufffd" not in p)
    out = gen.generate(ids, max_new_tokens=40, eos_token_id=[], stop=[stop, "never here"])
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.index(stop)]
    kept = out.sequences[0, 5:].tolist()
    assert kept == new[: len(kept)] and stop in tok.decode(kept) and stop not in tok.decode(kept[:-1])
    streamed = list(gen.stream(ids, max_new_tokens=40, eos_token_id=[], stop=stop))
    assert "".join(c.text for c in streamed) == out.text


def test_eos_finish_reason(tiny_models):
    gen = _generator(tiny_models)
    ids = torch.randint(2, 64, (1, 5))
    new = gen.generate(ids, max_new_tokens=20, eos_token_id=[]).sequences[0, 5:].tolist()
    out = gen.generate(ids, max_new_tokens=20, eos_token_id=new[6])
    assert out.finish_reason == "eos" and out.sequences[0, 5:].tolist() == new[: new.index(new[6]) + 1]


def test_astream_yields_the_same_chunks(tiny_models):
    gen = _generator(tiny_models)
    ids = torch.randint(2, 64, (1, 6))

    async def collect():
        return [(c.token_ids, c.text, c.finish_reason) async for c in gen.astream(ids, max_new_tokens=25,
                                                                                 eos_token_id=[])]

    expected = [(c.token_ids, c.text, c.finish_reason) for c in gen.stream(ids, max_new_tokens=25, eos_token_id=[])]
    assert asyncio.run(collect()) == expected


def test_stream_checks_arguments_before_the_first_chunk(tiny_models):
    target, draft = tiny_models
    with pytest.raises(ValueError, match="tokenizer"):
        SpeculativeGenerator(target, draft).stream(torch.tensor([[3, 4]]), stop="x")
    gen = _generator(tiny_models)
    with pytest.raises(ValueError, match="stop"):
        gen.stream(torch.tensor([[3, 4]]), stop=[""])
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.stream(torch.tensor([[3, 4]]), max_new_tokens=0)
    with pytest.raises(ValueError, match="integer tensor"):
        gen.stream(torch.tensor([[3.0, 4.0]]))
    with pytest.raises(ValueError, match="generate_batch"):
        gen.stream(torch.tensor([[3, 4], [5, 6]]))


def test_generate_batch_equals_single_rows(tiny_models):
    target, draft = tiny_models
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=4)
    prompts = [torch.randint(2, 64, (1, n)) for n in (3, 11, 6)]
    outs = gen.generate_batch(prompts, max_new_tokens=15, eos_token_id=[])
    for ids, out in zip(prompts, outs):
        assert torch.equal(out.sequences, gen.generate(ids, max_new_tokens=15, eos_token_id=[]).sequences)
    sampled = gen.generate_batch(prompts, max_new_tokens=10, temperature=1.0, seed=5, eos_token_id=[])
    again = gen.generate_batch(prompts, max_new_tokens=10, temperature=1.0, seed=5, eos_token_id=[])
    assert [o.sequences.tolist() for o in sampled] == [o.sequences.tolist() for o in again]
