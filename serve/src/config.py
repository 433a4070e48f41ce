"""``ServeConfig`` (the flags of ``specdistill serve``) and the models it loads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from specdistill.serve.admin import admin_networks
from specdistill.serve.generator import SpeculativeGenerator
from specdistill.serve.model_free import RetrievalBranch
from specdistill.serve.tree import TreeShape
from specdistill.serve.tree_sampling import SAMPLED_TREE, check_sampled_tree, check_tree_sampling

from specdistill.models import DEFAULT_TARGET, load_target
from specdistill.models.drafts import load_draft, resolve_draft
from specdistill.models.eagle3 import Eagle3Head
from specdistill.options import option

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ServeConfig:
    """Serve speculative decoding over an OpenAI-compatible HTTP API."""

    host: str = option("127.0.0.1", "bind address (loopback by default; 0.0.0.0 exposes it)")
    port: int = option(8000, "TCP port")
    target: str = option(DEFAULT_TARGET, "the embedded default or a local Hugging Face model directory")
    draft: str = option("default", "default (the shipped EAGLE-3 head for the default target), a draft directory "
                                   "(causal LM or EAGLE-3 head), none, or a model-free drafter: prompt-lookup, ngram")
    num_draft_tokens: str = option("auto", "an int k, 'auto' (cost-aware) or 'heuristic'")
    draft_vocab_size: int = option(8192, "draft only the N most frequent training tokens (0 = all; needs "
                                         "draft_vocab.json)")
    draft_confidence: float = option(0.4, "stop drafting below this draft probability")
    draft_tree: str = option("auto", "an EAGLE-3 head drafts a tree DEPTH,TOP_K,NODES per step "
                                     "(auto = 5,8,12 for a head, a chain for other drafts); none = a chain of k")
    draft_tree_max_batch: int = option(0, "0 = no cap: with --num-draft-tokens auto, each step drafts the tree, "
                                          "a chain or nothing by measured tokens/s; N = batches of more rows "
                                          "always draft a chain")
    draft_retrieval: str = option("auto", "candidates copied from the prompt and answer join a head's tree: "
                                          "METHOD[:TOKENS][+STORE] (ngram, prompt-lookup; STORE: served = also "
                                          "the outputs served so far where the text has no match, corpus = "
                                          "those and the answers the head trained on), auto = "
                                          "ngram:8+corpus with a tree, none")
    draft_tree_sampling: str = option("sample", "how sampled requests use the tree: sample (siblings drawn "
                                                "without replacement from the head), top (the likeliest "
                                                "siblings), chain (no tree); exact either way")
    sampled_tree: str = option(SAMPLED_TREE, "the size DEPTH,TOP_K,NODES of a sampled request's fixed tree; auto = "
                                           "5,3,10 on a GPU or a CPU with bf16 instructions, else 4,2,6")
    dtype: str = option("bf16", "fp32 or bf16, for both models")
    max_batch_size: int = option(16, "rows decoded together; more requests wait in the queue")
    max_queue: int = option(64, "waiting requests beyond this get 429")
    request_timeout: float = option(300.0, "seconds before a request is ended with a timeout error")
    max_tokens_limit: int = option(2048, "the largest max_tokens a request may ask for")
    max_body_bytes: int = option(1_000_000, "larger request bodies get 413")
    retry_after: int = option(1, "seconds, in the Retry-After header of a 429")
    api_key: str = option("", "when set, /v1 requests need 'Authorization: Bearer <key>'")
    model_name: str = option("", "the model id clients send (default: the target's name)")
    capture: str = option("", "append each finished request (prompt, answer ids, sampling, acceptance) to JSON-lines "
                              "files in this directory, for `specdistill train --data DIR`; they hold users' prompts: "
                              "keep them as you keep logs (empty = off)")
    capture_features: bool = option(False, "with --capture and an EAGLE-3 head: also keep the target's states "
                                           "(the head's features, ~4.6 KB a token for SmolLM2-135M in bf16) in "
                                           "DIR/states, so `specdistill adapt` need not run the target over the "
                                           "traffic again")
    capture_sample: float = option(1.0, "the share of requests captured")
    capture_max_mb: int = option(64, "a capture file is rotated at this size (MiB)")
    admin_from: str = option("loopback", "clients that may call /admin (swap the draft): loopback, any, or "
                                         "IPs/networks separated by commas; --api-key guards it too")

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        draft_length(self.num_draft_tokens)
        TreeShape.parse(self.draft_tree)
        RetrievalBranch.parse(self.draft_retrieval)
        check_tree_sampling(self.draft_tree_sampling)
        check_sampled_tree(self.sampled_tree)
        for name in ("max_batch_size", "max_queue", "max_tokens_limit", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.draft_tree_max_batch < 0:
            raise ValueError(f"draft_tree_max_batch must be >= 0 (0 = no cap), got {self.draft_tree_max_batch}")
        if not 0 < self.capture_sample <= 1 or self.capture_max_mb < 1:
            raise ValueError(f"capture_sample must be in (0, 1] and capture_max_mb >= 1, got {self.capture_sample} "
                             f"and {self.capture_max_mb}")
        if self.capture_features and not self.capture:
            raise ValueError("capture_features keeps the target's states beside captured requests: set --capture DIR")
        admin_networks(self.admin_from)
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {self.request_timeout}")

    def served_name(self) -> str:
        return self.model_name or (self.target if self.target == DEFAULT_TARGET else Path(self.target).name)


def draft_length(spec: str) -> int | str:
    """``--num-draft-tokens`` as the generator takes it."""
    if spec in ("auto", "heuristic"):
        return spec
    if not spec.isdigit():
        raise ValueError(f"num_draft_tokens must be an integer >= 0, 'auto' or 'heuristic', got {spec!r}")
    return int(spec)


def load_generator(config: ServeConfig):
    """The ``SpeculativeGenerator`` the server runs, its tokenizer, and the draft's name."""
    dtype = DTYPES[config.dtype]
    if config.draft != "none":
        resolve_draft(config.draft)  # a bad name fails before the target loads
    target, tokenizer = load_target(config.target, dtype)
    draft, vocab = None, None
    if config.draft != "none":
        draft, vocab = load_draft(config.draft, target, dtype, config.draft_vocab_size)
    model, head = draft is not None and not isinstance(draft, str), isinstance(draft, Eagle3Head)
    tree = TreeShape.parse(config.draft_tree, head=head)
    retrieval = RetrievalBranch.parse(config.draft_retrieval, tree=tree is not None)
    generator = SpeculativeGenerator(target, draft, num_draft_tokens=draft_length(config.num_draft_tokens),
                                     tokenizer=tokenizer, draft_confidence=config.draft_confidence if model else 0.0,
                                     draft_vocab=vocab, draft_tree=tree,
                                     draft_tree_max_batch=config.draft_tree_max_batch or None,
                                     draft_retrieval=retrieval, draft_tree_sampling=config.draft_tree_sampling,
                                     sampled_tree=config.sampled_tree)
    generator.draft_name = config.draft
    return generator, tokenizer, config.draft
