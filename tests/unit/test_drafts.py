"""Naming a draft (--draft): the shipped head, model-free drafters, head and LM directories."""

import json

import pytest
import torch

from specdistill.models import prune_draft, save_draft_vocab, tiny_llama
from specdistill.models.drafts import load_draft, resolve_draft, sha256, shipped_draft_dir
from specdistill.models.eagle3 import Eagle3Head, save_head


def test_model_free_names_and_bad_paths():
    target = tiny_llama(vocab_size=16, num_layers=4)
    assert load_draft("ngram", target) == ("ngram", None)
    with pytest.raises(FileNotFoundError, match="is not a model directory; pass a trained draft"):
        resolve_draft("/no/such/draft")


def test_a_directory_loads_as_a_head_or_as_a_causal_lm_with_its_vocabulary(tmp_path):
    target = tiny_llama(vocab_size=16, num_layers=4)
    save_head(Eagle3Head.for_target(target, torch.arange(4, 16), layer_ids=[0, 2, 3]), tmp_path / "head")
    head, vocab = load_draft(str(tmp_path / "head"), target)
    assert isinstance(head, Eagle3Head) and vocab is None and head.draft_ids.tolist() == list(range(4, 16))
    pruned = prune_draft(target, [0, -1])
    pruned.save_pretrained(tmp_path / "lm")
    save_draft_vocab(tmp_path / "lm", torch.tensor([3, 3, 3, 5, 5, 7]), 16, always=[1])
    draft, vocab = load_draft(str(tmp_path / "lm"), target, draft_vocab_size=3)
    assert vocab.tolist() == [1, 3, 5] and draft.config.num_hidden_layers == 2


def test_the_shipped_draft_is_whole_small_and_documented():
    path = shipped_draft_dir()  # checks the weights against the recorded checksum
    assert (path / "model.safetensors").stat().st_size <= 30 * 2**20
    assert json.loads((path / "checksum.json").read_text())["sha256"] == sha256(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    assert config["speculators_model_type"] == "eagle3"
    card = (path / "README.md").read_text()
    assert "specdistill train --preset default-draft" in card and "Measured" in card
    assert resolve_draft("default") == path
