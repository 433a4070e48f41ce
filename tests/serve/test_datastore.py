"""The retrieval branch's datastore: what a store of answers continues, what it refuses to guess, that it
learns served outputs, and that a head's engine stays lossless with it."""

import numpy as np
import pytest
import torch
from serve_helpers import hf_greedy, sharp_tiny_target, tiny_head
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.datastore import (
    REINDEX_TOKENS,
    SEPARATOR,
    CorpusIndex,
    TokenDatastore,
    corpus_answers,
    corpus_for,
    draft_corpus,
    save_corpus,
    save_head_corpus,
    shipped_corpus,
)
from specdistill.serve.model_free import RetrievalBranch


def _corpus(*answers):
    return CorpusIndex(np.concatenate([np.asarray([*a, SEPARATOR]) for a in answers]).astype(np.int64))


def test_the_most_frequent_continuation_of_the_longest_ngram_found():
    a, b, once = [9, 2, 3, 4, 7, 8], [1, 2, 3, 4, 5, 6], [7, 2, 3, 4, 0, 0]
    store = TokenDatastore(_corpus(a, a, a, b, b, once), learn=False)
    assert store.continuation([0, 2, 3, 4], 3) == [7, 8]  # 2 3 4 goes on with 7 three times in six, then 8
    assert store.continuation([1, 2, 3, 4], 3) == [5, 6]  # the longer 1 2 3 4, seen twice, comes first
    assert store.continuation([7, 2, 3, 4], 3) == [7, 8]  # 7 2 3 4 seen once is not enough: 2 3 4 serves
    assert store.continuation([1, 1, 1, 1], 3) == []  # nowhere
    assert store.continuation([5, 6], 3) == []  # shorter than any n-gram size
    assert store.continuation([0, 2, 3, 4], 0) == []


def test_nothing_is_guessed_across_two_answers_from_one_occurrence_or_where_the_answers_disagree():
    store = TokenDatastore(_corpus([1, 2, 3], [4, 5, 6], [1, 2, 3], [4, 5, 6]), learn=False)
    assert store.continuation([7, 1, 2, 3], 2) == []  # what follows 1 2 3 is the next answer: not a continuation
    assert TokenDatastore(_corpus([1, 2, 3, 4]), learn=False).continuation([1, 2, 3], 1) == []  # seen once
    split = TokenDatastore(_corpus([1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 6], [1, 2, 3, 7]), learn=False)
    assert split.continuation([1, 2, 3], 2) == []  # four answers, four next tokens: no majority


def test_served_outputs_are_learned_and_come_before_the_corpus():
    store = TokenDatastore(_corpus([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]))
    assert store.continuation([1, 2, 3], 2) == [4, 5]
    store.add([1, 2, 3, 9, 9])
    store.add([1, 2, 3, 9, 9])
    assert store.continuation([1, 2, 3], 2) == [4, 5]  # not indexed before REINDEX_TOKENS tokens
    store.add(list(range(20, 20 + REINDEX_TOKENS)))
    assert store.continuation([1, 2, 3], 2) == [9, 9]  # this server's own traffic first
    frozen = TokenDatastore(learn=False)
    frozen.add(list(range(10, 10 + 2 * REINDEX_TOKENS)))
    assert frozen.continuation([10, 11, 12], 2) == [] and len(frozen) == 0


def test_the_served_part_keeps_the_latest_tokens():
    store = TokenDatastore(max_served_tokens=2 * (REINDEX_TOKENS + 1))  # the two long outputs, separators too
    store.add([1, 2, 3, 4])
    store.add([1, 2, 3, 4])
    repeated = list(range(100, 100 + REINDEX_TOKENS))
    store.add(repeated)
    store.add(repeated)  # pushes both [1, 2, 3, 4] out of the window
    assert store.continuation([1, 2, 3], 1) == [] and store.continuation([100, 101, 102], 2) == [103, 104]


def test_a_corpus_file_round_trips(tmp_path):
    path = tmp_path / "corpus.npz"
    assert save_corpus(path, [[1, 2, 3], [40000, 5]], vocab_size=49152) == 7
    with np.load(path) as saved:
        assert saved["tokens"].dtype == np.uint16


def test_the_shipped_corpus_is_the_default_target_answers_and_a_spec_names_its_store():
    index, vocab = shipped_corpus()
    tokens = index.tokens
    assert vocab == 49152 and len(tokens) > 500_000 and tokens.max() < vocab and (tokens == SEPARATOR).sum() > 1000
    assert RetrievalBranch.parse("auto") == RetrievalBranch("ngram", 8, "corpus")
    assert str(RetrievalBranch.parse("ngram:6+served")) == "ngram:6+served"
    branch = RetrievalBranch.parse("ngram+corpus")
    assert branch.for_target(49152).datastore.corpus is index  # indexed once, shared by every generator
    assert branch.for_target(16).datastore.corpus is None  # another tokenizer: its served outputs only
    assert RetrievalBranch.parse("ngram").for_target(49152).datastore is None
    with pytest.raises(ValueError, match="unknown retrieval store"):
        RetrievalBranch.parse("ngram+cache")


def test_a_head_with_a_learning_store_keeps_greedy_output_the_target_own():
    target = sharp_tiny_target()
    head = tiny_head(target)
    gen = SpeculativeGenerator(target, head, draft_tree="2,2,4", draft_retrieval="ngram:8+served")
    prompts = [torch.tensor([[2, 5, 3, 9]]), torch.tensor([[7, 1, 7, 1, 7, 4, 4]]), torch.tensor([[6, 3]])]
    for _ in range(2):  # the second round retrieves from the first round's outputs
        for ids in prompts:
            torch.testing.assert_close(gen.generate(ids, 40, eos_token_id=[]).sequences, hf_greedy(target, ids, 40))
    assert len(gen.draft_retrieval.datastore) == 6 * 41  # six outputs of 40 tokens, each with its separator


def test_a_head_brings_the_answers_it_trained_on_and_a_swap_brings_the_new_heads(tmp_path):
    from specdistill.data.batches import TokenRows
    from specdistill.training.trainer import answer_spans

    ids = torch.tensor([[5, 1, 2, 3, 6, 7, 8, 0], [5, 1, 2, 3, 6, 7, 8, 0]])
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    answers = answer_spans(TokenRows(ids, mask))  # the loss at t counts token t + 1
    assert answers == [[2, 3], [7, 8], [2, 3], [7, 8]]
    start = _corpus([1, 2, 3], [2, 3])
    assert save_head_corpus(tmp_path / "datastore.npz", start, answers, vocab_size=64) == 10  # each answer once
    assert corpus_answers(draft_corpus(str(tmp_path))[0]) == [[1, 2, 3], [2, 3], [7, 8]]

    target = sharp_tiny_target()
    shipped, adapted = tiny_head(target), tiny_head(target)
    adapted.source = tmp_path
    assert corpus_for(shipped, 64) is None  # no directory, and the shipped corpus is another vocabulary's
    vocab = target.config.vocab_size
    save_corpus(tmp_path / "datastore.npz", [[1, 2, 3, 4, 5]] * 2, vocab)  # a new version of the file: read anew
    gen = SpeculativeGenerator(target, shipped, num_draft_tokens=3, draft_tree="3,2,4",
                               draft_retrieval="ngram:4+corpus")
    engine = gen.engine(2)
    assert gen.draft_retrieval.datastore.corpus is None
    engine.swap_draft(adapted, "adapted")
    assert gen.draft_retrieval.datastore.continuation([1, 2, 3], 2) == [4, 5]
