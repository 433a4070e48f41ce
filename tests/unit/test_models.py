import json

import pytest
import torch

from specdistill.models import check_compatible, load_model, prune_draft, tiny_llama


def test_prune_keeping_every_layer_reproduces_the_target(tiny_models):
    target, _ = tiny_models
    same = prune_draft(target, [0, 1, 2, 3])
    ids = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(same(ids).logits, target(ids).logits)


def test_pruned_draft_copies_layers_and_leaves_target_alone(tiny_models):
    target, draft = tiny_models
    assert draft.config.num_hidden_layers == 2
    torch.testing.assert_close(draft.model.layers[1].mlp.up_proj.weight, target.model.layers[3].mlp.up_proj.weight)
    assert draft.model.layers[1].mlp.up_proj.weight.data_ptr() != target.model.layers[3].mlp.up_proj.weight.data_ptr()


def test_prune_rejects_bad_layer_lists(tiny_models):
    target, _ = tiny_models
    for bad in ([], [0, 0], [7]):
        with pytest.raises(ValueError, match="keep_layers"):
            prune_draft(target, bad)


def test_vocab_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="64.*80"):
        check_compatible(tiny_llama(vocab_size=64), tiny_llama(vocab_size=80))


def test_missing_path_and_non_causal_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": 32}))
    with pytest.raises(ValueError, match="not a causal language model"):
        load_model(tmp_path)


def test_draft_vocab_ranks_tokens_by_frequency_with_eos_first(tmp_path):
    from specdistill.models import load_draft_vocab, save_draft_vocab

    chunks = torch.tensor([[5, 5, 5, 2], [2, 9, 5, 2]])
    save_draft_vocab(tmp_path, chunks, vocab=16, always=[1])
    assert load_draft_vocab(tmp_path).tolist() == [1, 5, 2, 9]
    assert load_draft_vocab(tmp_path, size=2).tolist() == [1, 5]
    assert load_draft_vocab(tmp_path / "none") is None
