"""Models: loading the target (the embedded default or any HF directory), drafts made from it, what a
draft must share with it, draft vocabularies, the EAGLE-3 head and its speculators format, and ``--draft``
names. This module re-exports the loading API, as ``specdistill.models`` has always offered it."""

from specdistill.models.checks import check_compatible, decoder_and_head, vocab_size
from specdistill.models.draft_vocab import DRAFT_VOCAB_FILE, load_draft_vocab, ranked_token_ids, save_draft_vocab
from specdistill.models.loading import (
    DEFAULT_TARGET,
    cache_dir,
    draft_tokenizer,
    load_model,
    load_target,
    resolve_model_dir,
)
from specdistill.models.pruning import decoder_layers, draft_from_config, prune_draft, tiny_llama, tiny_pair

__all__ = [
    "DEFAULT_TARGET", "DRAFT_VOCAB_FILE", "cache_dir", "check_compatible", "decoder_and_head", "decoder_layers",
    "draft_from_config", "draft_tokenizer", "load_draft_vocab", "load_model", "load_target", "prune_draft",
    "ranked_token_ids", "resolve_model_dir", "save_draft_vocab", "tiny_llama", "tiny_pair", "vocab_size",
]
